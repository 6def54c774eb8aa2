"""ScanNet readers on fixtures written in the real formats: .sens binary, labels.ply, Pointcept npy, .pth."""
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from ov3dseg_core.data import open_scene
from ov3dseg_core.data.ply import PlyError, read_ply_vertices, write_ply_vertices
from ov3dseg_core.data.readers import detect_format
from ov3dseg_core.data.readers.scannet import SensFile, SensFormatError
from ov3dseg_core.data.readers.scannet200 import (NYU40_IDS_20, RAW_IDS_200, SCANNET200, nyu40_to_scannet20,
                                                  raw_to_scannet20, raw_to_scannet200, read_label_tsv)
from ov3dseg_core.labels import SCANNET20

K_COLOR = np.array([[20.0, 0, 7.5, 0], [0, 22.0, 5.5, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
K_DEPTH = np.array([[10.0, 0, 3.5, 0], [0, 11.0, 2.5, 0], [0, 0, 1, 0], [0, 0, 0, 1]])


def _jpeg(color):
    buf = io.BytesIO()
    Image.fromarray(color).save(buf, format="JPEG", quality=100)
    return buf.getvalue()


def write_sens(path, colors, depths_mm, poses, stamps_us, depth_shift=1000.0):
    """Independent writer of ScanNet's .sens layout (version 4, jpeg colour, zlib depth)."""
    with open(path, "wb") as f:
        name = b"StructureSensor"
        f.write(struct.pack("<IQ", 4, len(name)) + name)
        for m in (K_COLOR, np.eye(4), K_DEPTH, np.eye(4)):
            f.write(np.asarray(m, "<f4").tobytes())
        ch, cw = colors[0].shape[:2]
        dh, dw = depths_mm[0].shape
        f.write(struct.pack("<iiIIIIfQ", 2, 1, cw, ch, dw, dh, depth_shift, len(colors)))
        for color, depth, pose, stamp in zip(colors, depths_mm, poses, stamps_us):
            c, d = _jpeg(color), zlib.compress(np.asarray(depth, "<u2").tobytes())
            f.write(np.asarray(pose, "<f4").tobytes() + struct.pack("<QQQQ", stamp, stamp + 7, len(c), len(d)) + c + d)


def _labels_ply(path, xyz, label_colors, nyu40):
    """A ScanNet _vh_clean_2.labels.ply: binary vertices (x y z red green blue alpha label) + a face list."""
    header = ("ply\nformat binary_little_endian 1.0\ncomment made by the test\nelement vertex {}\n"
              "property float x\nproperty float y\nproperty float z\nproperty uchar red\nproperty uchar green\n"
              "property uchar blue\nproperty uchar alpha\nproperty ushort label\nelement face 1\n"
              "property list uchar int vertex_indices\nend_header\n").format(len(xyz))
    v = np.zeros(len(xyz), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"), ("b", "u1"),
                                  ("a", "u1"), ("label", "<u2")])
    v["x"], v["y"], v["z"] = xyz.T
    v["r"], v["g"], v["b"] = label_colors.T
    v["a"] = 255
    v["label"] = nyu40
    with open(path, "wb") as f:
        f.write(header.encode() + v.tobytes() + struct.pack("<Biii", 3, 0, 1, 2))


@pytest.fixture()
def scannet_scene(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "scene0000_00"
    folder.mkdir()
    colors = [np.full((12, 16, 3), 40 * (i + 1), np.uint8) for i in range(3)]
    depths = [rng.integers(0, 5000, (6, 8)).astype(np.uint16) for _ in range(3)]
    poses = [np.eye(4), np.full((4, 4), -np.inf), np.diag([1.0, -1.0, -1.0, 1.0])]
    poses[2][:3, 3] = [1.5, 2.0, 0.25]
    write_sens(folder / "scene0000_00.sens", colors, depths, poses, [1_000_000, 1_033_333, 1_066_666])
    xyz = rng.normal(size=(6, 3)).astype(np.float32)
    nyu40 = np.array([1, 2, 13, 39, 0, 40], np.uint16)  # wall, floor, (13 not in 20), otherfurniture, none, (40)
    _labels_ply(folder / "scene0000_00_vh_clean_2.labels.ply", xyz, rng.integers(0, 256, (6, 3)), nyu40)
    mesh = np.zeros(6, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"),
                              ("blue", "u1")])
    mesh["x"], mesh["y"], mesh["z"] = xyz.T
    real_colors = rng.integers(0, 256, (6, 3)).astype(np.uint8)
    mesh["red"], mesh["green"], mesh["blue"] = real_colors.T
    write_ply_vertices(folder / "scene0000_00_vh_clean_2.ply", mesh)
    return folder, colors, depths, poses, xyz, real_colors


def test_sens_reader_decodes_frames(scannet_scene):
    folder, colors, depths, poses, _, _ = scannet_scene
    sens = SensFile(folder / "scene0000_00.sens")
    assert len(sens) == 3 and sens.sensor_name == "StructureSensor"
    assert sens.color_compression == "jpeg" and sens.depth_compression == "zlib_ushort"
    assert sens.color_size == (16, 12) and sens.depth_size == (8, 6) and sens.depth_shift == 1000.0
    np.testing.assert_array_equal(sens.intrinsic_depth, K_DEPTH)
    assert sens.stamps_us == [1_000_000, 1_033_333, 1_066_666]
    for i in range(3):
        np.testing.assert_array_equal(sens.depth(i), (depths[i] / np.float32(1000)).astype(np.float32))
        assert np.abs(sens.color(i).astype(int) - colors[i]).max() <= 1
    assert sens.pose(1) is None
    np.testing.assert_array_equal(sens.pose(2), poses[2])


def test_scannet_scene_frames_and_labelled_points(scannet_scene):
    folder, colors, depths, poses, xyz, real_colors = scannet_scene
    assert detect_format(folder) == "scannet"
    scene = open_scene(folder)
    assert scene.name == "scene0000_00" and scene.label_names == SCANNET20 and len(scene.frames) == 3
    frame = scene.frames[2]
    assert frame.camera.fx == 10.0 and frame.camera.cy == 2.5 and (frame.camera.width, frame.camera.height) == (8, 6)
    assert frame.color.shape == (6, 8, 3) and abs(int(frame.color[3, 4, 0]) - 120) <= 1  # resized to depth size
    assert frame.stamp_ns == 1_066_666_000
    np.testing.assert_array_equal(frame.pose, poses[2])
    assert scene.frames[1].pose is None
    np.testing.assert_array_equal(scene.points, xyz)
    assert scene.labels.tolist() == [0, 1, -1, 19, -1, -1]
    np.testing.assert_array_equal(scene.colors, real_colors)  # from the mesh, not the label colours
    # opening the .sens file alone gives the same frames and no points
    only_sens = open_scene(folder / "scene0000_00.sens", fmt="scannet")
    assert len(only_sens.frames) == 3


def test_sens_rejects_wrong_version_and_truncation(tmp_path, scannet_scene):
    folder = scannet_scene[0]
    data = (folder / "scene0000_00.sens").read_bytes()
    (tmp_path / "v.sens").write_bytes(struct.pack("<I", 3) + data[4:])
    with pytest.raises(SensFormatError, match="version 3"):
        SensFile(tmp_path / "v.sens")
    (tmp_path / "t.sens").write_bytes(data[:-100])
    with pytest.raises(SensFormatError, match="past the end"):
        SensFile(tmp_path / "t.sens")


def test_label_mappings():
    assert len(SCANNET200) == len(RAW_IDS_200) == 200 and len(set(SCANNET200)) == 200
    assert len(NYU40_IDS_20) == len(SCANNET20) == 20
    assert raw_to_scannet200(np.array([1, 2, 3, 1191, 12, -5, 5000])).tolist() == [0, 1, 2, 199, -1, -1, -1]
    assert SCANNET200[RAW_IDS_200.index(1191)] == "mattress"
    assert nyu40_to_scannet20(np.arange(41)).tolist().count(-1) == 21
    assert nyu40_to_scannet20(np.array([1, 3, 14, 24, 36, 39])).tolist() == [0, 2, 12, 14, 18, 19]


def test_label_tsv_mapping(tmp_path):
    tsv = tmp_path / "scannetv2-labels.combined.tsv"
    tsv.write_text("id\traw_category\tcategory\tcount\tnyu40id\tnyu40class\n"
                   "1\twall\twall\t8277\t1\twall\n2\tchair\tchair\t4646\t5\tchair\n"
                   "22\tdoor\tdoor\t2511\t8\tdoor\n40\tlamp\tlamp\t100\t35\tlamp\n")
    mapping = read_label_tsv(tsv)
    assert mapping == {1: 1, 2: 5, 22: 8, 40: 35}
    assert raw_to_scannet20(np.array([1, 2, 22, 40, 999]), mapping).tolist() == [0, 4, 7, -1, -1]


def test_pointcept_folder_and_pth(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "scene0011_00"
    folder.mkdir()
    coord = rng.normal(size=(5, 3)).astype(np.float32)
    np.save(folder / "coord.npy", coord)
    np.save(folder / "color.npy", np.array([[0, 128, 255]] * 5, np.uint8))
    np.save(folder / "segment20.npy", np.array([0, 19, -1, 3, 20], np.int16))
    np.save(folder / "segment200.npy", np.array([0, 199, -1, 150, 7], np.int16))
    np.save(folder / "instance.npy", np.array([1, 1, -1, 2, 3], np.int16))
    assert detect_format(folder) == "scannet_preprocessed"
    scene = open_scene(folder)
    np.testing.assert_array_equal(scene.points, coord)
    assert scene.labels.tolist() == [0, 19, -1, 3, -1] and scene.instances.tolist() == [1, 1, -1, 2, 3]
    assert scene.colors.tolist() == [[0, 128, 255]] * 5 and len(scene.frames) == 0
    s200 = open_scene(folder, label_space="scannet200")
    assert s200.labels.tolist() == [0, 199, -1, 150, 7] and s200.label_names == SCANNET200

    torch = pytest.importorskip("torch")
    colors_pm1 = np.array([[-1.0, 0.0, 1.0]] * 5)
    torch.save((coord, colors_pm1, np.array([0, 255, 5, 19, -100], np.float64)), tmp_path / "scene0011_00.pth")
    assert detect_format(tmp_path / "scene0011_00.pth") == "scannet_preprocessed"
    pth = open_scene(tmp_path / "scene0011_00.pth")
    np.testing.assert_array_equal(pth.points, coord)
    assert pth.colors.tolist() == [[0, 128, 255]] * 5 and pth.labels.tolist() == [0, -1, 5, 19, -1]


def test_ply_reader_ascii_big_endian_and_errors(tmp_path):
    (tmp_path / "a.ply").write_text("ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nproperty float y\n"
                                    "property float z\nproperty uchar red\nend_header\n1 2 3 4\n5 6 7 8\n")
    v = read_ply_vertices(tmp_path / "a.ply")
    assert v["x"].tolist() == [1, 5] and v["red"].tolist() == [4, 8] and v["red"].dtype == np.uint8
    big = np.array([(1.5, 300)], dtype=[("x", ">f4"), ("label", ">u2")])
    (tmp_path / "b.ply").write_bytes(b"ply\nformat binary_big_endian 1.0\nelement vertex 1\nproperty float x\n"
                                     b"property ushort label\nend_header\n" + big.tobytes())
    v = read_ply_vertices(tmp_path / "b.ply")
    assert v["x"].tolist() == [1.5] and v["label"].tolist() == [300]
    (tmp_path / "c.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 3\nproperty float x\n"
                                     b"end_header\n" + b"\0" * 8)
    with pytest.raises(PlyError, match="truncated"):
        read_ply_vertices(tmp_path / "c.ply")
    (tmp_path / "d.ply").write_bytes(b"not a ply")
    with pytest.raises(PlyError, match="magic"):
        read_ply_vertices(tmp_path / "d.ply")


def test_written_ply_reads_in_open3d(tmp_path):
    o3d = pytest.importorskip("open3d")
    v = np.zeros(3, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1"),
                           ("label", "<i4")])
    v["x"], v["y"], v["z"] = [0.5, 1, 2], [3, 4, 5], [6, 7, 8.25]
    v["red"], v["green"], v["blue"] = [255, 0, 10], [0, 255, 20], [0, 0, 30]
    write_ply_vertices(tmp_path / "p.ply", v)
    pcd = o3d.io.read_point_cloud(str(tmp_path / "p.ply"))
    np.testing.assert_allclose(np.asarray(pcd.points), np.stack([v["x"], v["y"], v["z"]], 1))
    np.testing.assert_allclose(np.asarray(pcd.colors) * 255, np.stack([v["red"], v["green"], v["blue"]], 1), atol=1e-4)
