"""Redwood, TUM, Replica and S3DIS readers on fixtures written in their real formats, plus the shared samples."""
import json

import numpy as np
import pytest

from ov3dseg_core.data import find_living_room, open_scene
from ov3dseg_core.data.frames import depth_reprojection_error, frame_points
from ov3dseg_core.data.image_files import write_color, write_u16
from ov3dseg_core.data.readers import detect_format
from ov3dseg_core.data.readers.redwood import read_trajectory_log
from ov3dseg_core.data.readers.s3dis import S3DIS13
from ov3dseg_core.data.readers.tum import TUM_CAMERAS, associate
from ov3dseg_core.data.samples import SHARED_LIVING_ROOM
from ov3dseg_core.geometry.transforms import make_transform, quaternion_to_matrix

SHARED_TUM = SHARED_LIVING_ROOM.parent / "tum_frame"


def _write_log(path, poses):
    lines = []
    for i, T in enumerate(poses):
        lines.append(f"{i} {i} {i + 1}")
        lines += [" ".join(repr(float(x)) for x in row) for row in T]
    path.write_text("\n".join(lines) + "\n")


def test_redwood_fixture(tmp_path):
    for sub in ("color", "depth"):
        (tmp_path / sub).mkdir()
    poses = [make_transform([0.1 * i, 0.2, 0.3], [0.0, 0.0, np.sin(0.1 * i), np.cos(0.1 * i)]) for i in range(2)]
    for i in range(3):
        write_color(tmp_path / "color" / f"{i:05d}.png", np.full((4, 6, 3), 10 * i, np.uint8))
        write_u16(tmp_path / "depth" / f"{i:05d}.png", np.full((4, 6), 1000 + i, np.uint16))
    _write_log(tmp_path / "trajectory.log", poses)  # frame 2 has no pose
    K = [[5.0, 0.0, 2.5], [0.0, 6.0, 1.5], [0.0, 0.0, 1.0]]
    (tmp_path / "camera_primesense.json").write_text(json.dumps(
        {"width": 6, "height": 4, "intrinsic_matrix": np.array(K).T.reshape(-1).tolist()}))  # column-major
    assert detect_format(tmp_path) == "redwood"
    scene = open_scene(tmp_path)
    assert len(scene.frames) == 3
    f1 = scene.frames[1]
    assert (f1.camera.fx, f1.camera.fy, f1.camera.cx, f1.camera.cy) == (5.0, 6.0, 2.5, 1.5)
    assert f1.depth[0, 0] == np.float32(1.001) and f1.color[0, 0, 0] == 10
    np.testing.assert_array_equal(f1.pose, poses[1])
    assert scene.frames[2].pose is None
    assert [f.stamp_ns for f in scene.frames] == [0, 33_333_333, 66_666_667]
    (tmp_path / "bad.log").write_text("0 0 1\n1 2 3\n")
    with pytest.raises(ValueError, match="5 per frame"):
        read_trajectory_log(tmp_path / "bad.log")


def test_living_room_frames_are_geometrically_consistent():
    if not (SHARED_LIVING_ROOM / "trajectory.log").exists():
        pytest.skip(f"shared sample data absent: {SHARED_LIVING_ROOM}")
    scene = open_scene(find_living_room(SHARED_LIVING_ROOM))
    assert len(scene.frames) == 5
    f0, f4 = scene.frames[0], scene.frames[4]
    assert f0.color.shape == (480, 640, 3) and f0.camera.fx == 525.0 and f0.camera.cx == 319.5
    errors = depth_reprojection_error(f0, f4)
    assert len(errors) > 100_000  # the frames overlap
    assert np.median(errors) < 0.02
    assert np.mean(errors < 0.05) > 0.90
    # a wrong pose breaks the consistency: the check can fail
    f4.pose = f4.pose @ make_transform([0.3, 0.0, 0.0], [0, 0, 0, 1])
    assert np.median(depth_reprojection_error(f0, f4)) > 0.05
    points, colors, _ = frame_points(f0)
    assert points.dtype == np.float32 and len(points) == len(colors) == int((f0.depth > 0.1).sum())


def test_tum_sequence_association_and_pose_interpolation(tmp_path):
    folder = tmp_path / "rgbd_dataset_freiburg2_xyz"
    for sub in ("rgb", "depth"):
        (folder / sub).mkdir(parents=True)
    rgb_t = [100.000, 100.033, 100.066, 100.100]
    depth_t = [100.004, 100.030, 100.090, 100.131]  # 3rd rgb has no depth within 20 ms
    (folder / "rgb.txt").write_text("# color images\n# file: 'x.bag'\n# timestamp filename\n" + "".join(
        f"{t:.6f} rgb/{t:.6f}.png\n" for t in rgb_t))
    (folder / "depth.txt").write_text("# depth maps\n" + "".join(f"{t:.6f} depth/{t:.6f}.png\n" for t in depth_t))
    for i, t in enumerate(rgb_t):
        write_color(folder / "rgb" / f"{t:.6f}.png", np.full((480, 640, 3), i, np.uint8))
    for i, t in enumerate(depth_t):
        write_u16(folder / "depth" / f"{t:.6f}.png", np.full((480, 640), 5000 * (i + 1), np.uint16))
    gt_t = np.arange(99.99, 100.07, 0.01)  # ends before the last rgb stamp
    q = np.array([0.0, 0.0, np.sin(0.2), np.cos(0.2)])
    (folder / "groundtruth.txt").write_text("# timestamp tx ty tz qx qy qz qw\n" + "".join(
        f"{t:.4f} {t - 100:.6f} 1.0 2.0 {q[0]} {q[1]} {q[2]} {q[3]}\n" for t in gt_t))
    assert detect_format(folder) == "tum"
    scene = open_scene(folder)
    assert len(scene.frames) == 3  # 100.066 dropped
    stamps = [f.stamp_ns for f in scene.frames]
    assert stamps == [100_000_000_000, 100_033_000_000, 100_100_000_000]
    f0, f1, f2 = scene.frames
    assert f1.camera.fx == TUM_CAMERAS["fr2"].fx  # chosen by the folder name
    assert f0.depth[0, 0] == 1.0 and f1.depth[0, 0] == 2.0 and f2.depth[0, 0] == 3.0  # depth scale 5000
    assert f1.color[0, 0, 0] == 1
    np.testing.assert_allclose(f1.pose[:3, 3], [0.033, 1.0, 2.0], atol=1e-9)  # interpolated between 0.03 and 0.04
    np.testing.assert_allclose(f1.pose[:3, :3], quaternion_to_matrix(q), atol=1e-12)
    assert f2.pose is None  # beyond the ground truth


def test_tum_associate_is_one_to_one():
    a = np.array([0.0, 0.010, 0.020, 1.0])
    b = np.array([0.012, 0.5])
    ia, ib = associate(a, b, 0.02)
    assert ia.tolist() == [1] and ib.tolist() == [0]  # 0.010 is closest to 0.012; 1.0 has nothing near


def test_tum_single_shared_frame():
    if not (SHARED_TUM / "TUM_color.png").exists():
        pytest.skip(f"shared sample data absent: {SHARED_TUM}")
    scene = open_scene(SHARED_TUM)
    assert len(scene.frames) == 1
    frame = scene.frames[0]
    assert frame.pose is None and frame.camera.fx == 517.3 and frame.color.shape == (480, 640, 3)
    valid = frame.depth[frame.depth > 0]
    assert 0.3 < np.median(valid) < 6.0  # metres, so the 5000 scale was applied


def test_replica_nice_slam_layout(tmp_path):
    scene_dir = tmp_path / "Replica" / "room0"
    (scene_dir / "results").mkdir(parents=True)
    (tmp_path / "Replica" / "cam_params.json").write_text(json.dumps(
        {"camera": {"w": 6, "h": 4, "fx": 3.0, "fy": 3.0, "cx": 2.5, "cy": 1.5, "scale": 6553.5}}))
    poses = [make_transform([i, 0.0, 0.0], [0, 0, 0, 1]) for i in range(2)]
    for i in range(2):
        write_color(scene_dir / "results" / f"frame{i:06d}.jpg", np.full((4, 6, 3), 100, np.uint8))
        write_u16(scene_dir / "results" / f"depth{i:06d}.png", np.full((4, 6), 13107, np.uint16))
    (scene_dir / "traj.txt").write_text("".join(" ".join(repr(float(x)) for x in T.reshape(-1)) + "\n" for T in poses))
    assert detect_format(scene_dir) == "replica"
    scene = open_scene(scene_dir)
    assert len(scene.frames) == 2 and scene.points is None
    f1 = scene.frames[1]
    assert f1.camera.fx == 3.0 and f1.camera.width == 6
    np.testing.assert_allclose(f1.depth, 2.0)  # 13107 / 6553.5
    np.testing.assert_array_equal(f1.pose, poses[1])


def test_s3dis_room_and_preprocessed(tmp_path):
    room = tmp_path / "Area_1" / "office_1"
    (room / "Annotations").mkdir(parents=True)
    (room / "Annotations" / "chair_1.txt").write_text("1.0 2.0 3.0 255 0 0\n1.5 2.5 3.5 250 5 5\n")
    (room / "Annotations" / "table_2.txt").write_text("0.5 0.5 0.7 10 20 30\n")
    (room / "Annotations" / "stairs_1.txt").write_bytes(b"4.0 4.0 4.0 1 2 3\x10\n")  # the released defect
    assert detect_format(room) == "s3dis"
    scene = open_scene(room)
    assert scene.label_names == S3DIS13 and len(scene.frames) == 0
    names = [S3DIS13[i] for i in scene.labels]
    # files in sorted order: chair_1, stairs_1 (-> clutter), table_2; each file one instance
    assert names == ["chair", "chair", "clutter", "table"]
    assert scene.instances.tolist() == [0, 0, 1, 2]
    np.testing.assert_allclose(scene.points[2], [4.0, 4.0, 4.0])
    assert scene.colors[0].tolist() == [255, 0, 0]

    pre = tmp_path / "pre" / "Area_5" / "office_1"
    pre.mkdir(parents=True)
    np.save(pre / "coord.npy", scene.points)
    np.save(pre / "color.npy", scene.colors.astype(np.float32))
    np.save(pre / "segment.npy", np.array([8, 8, 12, 255]))
    np.save(pre / "instance.npy", scene.instances)
    assert detect_format(pre) == "s3dis_preprocessed"
    back = open_scene(pre)
    assert back.labels.tolist() == [8, 8, 12, -1]
    np.testing.assert_array_equal(back.colors, scene.colors)


def test_unknown_layout_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="cannot tell the dataset format"):
        open_scene(tmp_path)
    with pytest.raises(FileNotFoundError):
        open_scene(tmp_path / "nope")
    with pytest.raises(KeyError, match="unknown dataset"):
        open_scene(tmp_path, fmt="kitti")
