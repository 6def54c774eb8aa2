"""Frames, label/depth encodings and the ScanNet-style dataset folder: write -> read round trips."""
import json

import numpy as np
import pytest

from ov3dseg_core.data import RGBDFrame, Scene, open_scene, write_dataset_folder
from ov3dseg_core.data.frames import LazyFrames, depth_to_u16_mm, labels_from_u16, labels_to_u16
from ov3dseg_core.data.image_files import read_u16, write_color, write_matrix_txt, write_u16
from ov3dseg_core.data.ply import read_ply_vertices
from ov3dseg_core.data.readers.dataset_folder import POINT_DTYPE
from ov3dseg_core.geometry.camera import PinholeCamera
from ov3dseg_core.geometry.transforms import make_transform

CAM = PinholeCamera(width=8, height=6, fx=10.0, fy=11.0, cx=3.5, cy=2.5)


def _scene(n=3, seed=0):
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        depth = rng.uniform(0.5, 4.0, (6, 8)).astype(np.float32)
        depth[0, 0] = 0.0
        labels = rng.integers(-1, 20, (6, 8)).astype(np.int32)
        frames.append(RGBDFrame(color=rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), depth=depth, camera=CAM,
                                pose=make_transform([i * 0.1, 0.2, -0.3], [0, 0, np.sin(i / 4), np.cos(i / 4)]),
                                stamp_ns=1_000_000_000 + i * 33_333_333, labels=labels,
                                instances=rng.integers(-1, 5, (6, 8)).astype(np.int32)))
    frames[-1 if n < 2 else 1].pose = None
    points = rng.normal(size=(50, 3)).astype(np.float32)
    return Scene(name="toy", frames=frames, label_names=["wall", "floor", "chair"], points=points,
                 colors=rng.integers(0, 256, (50, 3), dtype=np.uint8), labels=rng.integers(-1, 3, 50).astype(np.int32),
                 instances=rng.integers(-1, 7, 50).astype(np.int32))


def test_label_and_depth_encodings():
    labels = np.array([[-1, 0, 5, 65534]], np.int32)
    u16 = labels_to_u16(labels)
    assert u16.dtype == np.uint16 and u16.tolist() == [[65535, 0, 5, 65534]]
    assert labels_from_u16(u16).tolist() == [[-1, 0, 5, 65534]]
    with pytest.raises(ValueError, match="does not fit"):
        labels_to_u16(np.array([65535]))
    depth = np.array([[0.0, 1.2344, np.nan, -1.0, 70.0, 0.0004]], np.float32)
    assert depth_to_u16_mm(depth).tolist() == [[0, 1234, 0, 0, 0, 0]]


def test_frame_validation_names_the_problem():
    with pytest.raises(ValueError, match="color"):
        RGBDFrame(color=np.zeros((6, 7, 3), np.uint8), depth=np.zeros((6, 8), np.float32), camera=CAM)
    with pytest.raises(ValueError, match="camera"):
        RGBDFrame(color=None, depth=np.zeros((5, 8), np.float32), camera=CAM)
    with pytest.raises(ValueError, match="pose"):
        RGBDFrame(color=None, depth=np.zeros((6, 8), np.float32), camera=CAM, pose=np.eye(3))
    with pytest.raises(ValueError, match="labels has 2 rows"):
        Scene("x", [], points=np.zeros((3, 3), np.float32), labels=np.zeros(2, np.int32))


def test_lazy_frames_load_on_access_and_slice_lazily():
    calls = []

    def load(i):
        calls.append(i)
        return RGBDFrame(color=None, depth=np.full((6, 8), i, np.float32), camera=CAM, stamp_ns=i)

    frames = LazyFrames(load, 10)
    sub = frames[2:9:3]
    assert calls == [] and len(sub) == 3
    assert [f.stamp_ns for f in sub] == [2, 5, 8] and calls == [2, 5, 8]
    assert frames[-1].stamp_ns == 9


def test_dataset_folder_round_trip(tmp_path):
    scene = _scene()
    out = write_dataset_folder(scene, tmp_path / "scene", color_format="png", progress=False)
    assert sorted(p.name for p in (out / "depth").iterdir()) == ["000000.png", "000001.png", "000002.png"]
    assert (out / "intrinsic" / "intrinsic_color.txt").exists()
    assert json.loads((out / "label_names.json").read_text()) == ["wall", "floor", "chair"]
    back = open_scene(out)  # format detected
    assert back.name == "toy" and back.label_names == scene.label_names and len(back.frames) == 3
    for a, b in zip(scene.frames, back.frames):
        assert b.camera == a.camera
        assert b.stamp_ns == a.stamp_ns
        np.testing.assert_array_equal(b.color, a.color)  # png is lossless
        np.testing.assert_allclose(b.depth, a.depth, atol=5e-4 + 1e-6)  # millimetre quantisation
        assert b.depth[0, 0] == 0.0
        np.testing.assert_array_equal(b.labels, a.labels)
        np.testing.assert_array_equal(b.instances, a.instances)
        if a.pose is None:
            assert b.pose is None
        else:
            np.testing.assert_array_equal(b.pose, a.pose)
    np.testing.assert_array_equal(back.points, scene.points)
    np.testing.assert_array_equal(back.colors, scene.colors)
    np.testing.assert_array_equal(back.labels, scene.labels)
    np.testing.assert_array_equal(back.instances, scene.instances)
    ply = read_ply_vertices(out / "points.ply")
    assert ply.dtype.names == POINT_DTYPE.names
    with pytest.raises(FileExistsError):
        write_dataset_folder(scene, out, progress=False)


def test_dataset_folder_jpeg_and_points_npy(tmp_path):
    scene = _scene(n=1)
    scene.frames[0].color[:] = 77  # flat colour survives JPEG almost exactly
    scene.points = None
    scene.colors = scene.labels = scene.instances = None
    out = write_dataset_folder(scene, tmp_path / "s", progress=False)
    assert (out / "color" / "000000.jpg").exists() and not (out / "points.ply").exists()
    table = np.array([[0.5, 1.0, 2.0, 10, 20, 30, 4, 9]], np.float64)
    np.save(out / "points.npy", table)
    back = open_scene(out, fmt="dataset_folder")
    assert np.abs(back.frames[0].color.astype(int) - 77).max() <= 2
    assert back.points.tolist() == [[0.5, 1.0, 2.0]] and back.colors.tolist() == [[10, 20, 30]]
    assert back.labels.tolist() == [4] and back.instances.tolist() == [9]


def test_reads_scannet_export_with_different_colour_resolution(tmp_path):
    """SensReader exports: colour 2x the depth size; colour is resized and the depth intrinsics used."""
    for sub in ("color", "depth", "pose", "intrinsic"):
        (tmp_path / sub).mkdir()
    color = np.zeros((12, 16, 3), np.uint8)
    color[:, 8:] = 200
    write_color(tmp_path / "color" / "0.png", color)
    write_u16(tmp_path / "depth" / "0.png", np.full((6, 8), 1500, np.uint16))
    write_matrix_txt(tmp_path / "pose" / "0.txt", np.eye(4))
    K_color = np.eye(4)
    K_color[:3, :3] = [[20, 0, 7.5], [0, 22, 5.5], [0, 0, 1]]
    K_depth = np.eye(4)
    K_depth[:3, :3] = CAM.K
    write_matrix_txt(tmp_path / "intrinsic" / "intrinsic_color.txt", K_color)
    write_matrix_txt(tmp_path / "intrinsic" / "intrinsic_depth.txt", K_depth)
    frame = open_scene(tmp_path).frames[0]
    assert frame.camera == CAM and frame.color.shape == (6, 8, 3)
    assert frame.color[:, :3].max() == 0 and frame.color[:, 5:].min() == 200
    assert np.all(frame.depth == np.float32(1.5)) and frame.stamp_ns == 0


def test_u16_png_is_really_16_bit(tmp_path):
    array = np.array([[0, 1, 65535, 40000]], np.uint16)
    write_u16(tmp_path / "a.png", array)
    from PIL import Image

    with Image.open(tmp_path / "a.png") as image:
        assert image.mode.startswith("I")
    np.testing.assert_array_equal(read_u16(tmp_path / "a.png"), array)
