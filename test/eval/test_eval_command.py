"""`ov3dseg eval` end to end on small inputs written by the test: an oracle dataset folder, and a bag replayed
through the real node graph (skipped where the ROS layer is not installed)."""
import json

import numpy as np
import pytest

from ov3dseg_core.cli import main as cli_main
from ov3dseg_core.commands.eval import is_bag, load_params, read_bag_ground_truth
from ov3dseg_core.data.frames import RGBDFrame, Scene
from ov3dseg_core.data.readers.dataset_folder import write_dataset_folder
from ov3dseg_core.geometry.camera import PinholeCamera

pytest.importorskip("ov3dseg_core.mapping.voxel_map")

NAMES = ["wall", "sofa"]  # ScanNet-20 names, so the sim_b15n4 split applies (wall base, sofa novel)
DEPTH = 2.02  # metres, a plane facing the camera


def _plane_frames():
    """Two frames looking at a plane z = DEPTH; class 0 where world x < 0, class 1 elsewhere (a voxel face)."""
    camera = PinholeCamera(width=64, height=48, fx=50.0, fy=50.0, cx=31.5, cy=23.5)
    u = np.arange(64)
    frames = []
    for i, tx in enumerate((0.0, 0.1)):
        pose = np.eye(4)
        pose[0, 3] = tx
        x_world = (u - camera.cx) * DEPTH / camera.fx + tx
        labels = np.broadcast_to(np.where(x_world < 0, 0, 1), (48, 64)).astype(np.int32)
        frames.append(RGBDFrame(color=np.full((48, 64, 3), 128, np.uint8), depth=np.full((48, 64), DEPTH, np.float32),
                                camera=camera, pose=pose, stamp_ns=(i + 1) * 100_000_000, labels=labels.copy()))
    gx, gy = np.meshgrid(np.arange(-1.2, 1.2, 0.01), np.arange(-0.9, 0.9, 0.01))
    points = np.stack([gx.ravel(), gy.ravel(), np.full(gx.size, DEPTH)], axis=1).astype(np.float32)
    return frames, points, np.where(points[:, 0] < 0, 0, 1).astype(np.int32)


def _plane_scene(tmp_path):
    frames, points, labels = _plane_frames()
    scene = Scene(name="plane", frames=frames, label_names=NAMES, points=points, labels=labels)
    return write_dataset_folder(scene, tmp_path / "plane", color_format="png", progress=False)


def test_offline_oracle_gives_perfect_scores(tmp_path, capsys):
    folder = _plane_scene(tmp_path)
    out = tmp_path / "report"
    assert cli_main(["eval", str(folder), "--out", str(out), "--oracle", "--split", "sim_b15n4",
                     "--voxel-size", "0.05"]) == 0
    data = json.loads((out / "report.json").read_text())
    assert data["miou"] == 1.0 and data["hiou"] == 1.0 and data["coverage"] == 1.0
    assert data["base_miou"] == 1.0 and data["novel_miou"] == 1.0
    assert data["voxel_size"] == pytest.approx(0.05) and data["num_points"] == 240 * 180
    assert data["per_class_iou"]["wall"] == 1.0 and data["per_class_iou"]["toilet"] is None
    for name in ("report.md", "per_class_iou.png", "confusion.png", "map.safetensors"):
        assert (out / name).stat().st_size > 0
    assert "| sofa | novel | 100.0 | 100.0 |" in capsys.readouterr().out


def test_offline_with_missing_model_or_bad_split_fails_clearly(tmp_path, capsys):
    folder = _plane_scene(tmp_path)
    missing = tmp_path / "missing.safetensors"
    assert cli_main(["eval", str(folder), "--out", str(tmp_path / "r"), "--model", str(missing)]) == 2
    assert f"model checkpoint {missing} does not exist" in capsys.readouterr().err
    assert cli_main(["eval", str(folder), "--out", str(tmp_path / "r"), "--oracle", "--split", "nope"]) == 2
    assert "shipped splits" in capsys.readouterr().err
    assert cli_main(["eval", str(folder), "--out", str(tmp_path / "r"), "--oracle", "--split",
                    "scannet200_b150n50"]) == 2
    assert "has no classes ['sofa']" in capsys.readouterr().err


def test_params_file_sets_the_offline_voxel_size(tmp_path):
    folder = _plane_scene(tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text("ov3dseg_mapper:\n  ros__parameters:\n    voxel_size: 0.1\n    map_frame: map\n")
    assert load_params(params) == {"voxel_size": 0.1, "map_frame": "map"}
    assert cli_main(["eval", str(folder), "--out", str(tmp_path / "r"), "--oracle", "--params", str(params)]) == 0
    assert json.loads((tmp_path / "r" / "report.json").read_text())["voxel_size"] == pytest.approx(0.1)


def test_bag_ground_truth_round_trip(tmp_path):
    from ov3dseg_core.data.bag_writer import SensorBagWriter

    cloud = np.zeros(4, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("label", "<i4"), ("instance", "<i4")])
    cloud["x"] = [0.0, 1.0, np.nan, 3.0]
    cloud["label"] = [0, 1, 1, -1]
    cloud["instance"] = [4, 7, 7, -1]
    bag = tmp_path / "gt_bag"
    with SensorBagWriter(bag) as writer:
        writer.write_pointcloud(10, "/ground_truth/points", "map", cloud)
        writer.write_label_names(NAMES)
    assert is_bag(bag) and not is_bag(tmp_path)
    points, labels, names, instances = read_bag_ground_truth(bag)
    np.testing.assert_array_equal(points[:, 0], [0.0, 1.0, 3.0])  # the NaN point is dropped
    np.testing.assert_array_equal(labels, [0, 1, -1])
    np.testing.assert_array_equal(instances, [4, 7, -1])
    assert names == NAMES


def test_bag_replayed_with_oracle_labels_gives_perfect_scores(tmp_path, monkeypatch):
    pytest.importorskip("ov3dseg_ros.replay")
    from ov3dseg_core.data.bag_writer import SensorBagWriter

    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    frames, points, labels = _plane_frames()
    cloud = np.zeros(len(points), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("label", "<i4"),
                                         ("instance", "<i4")])
    for axis, name in enumerate("xyz"):
        cloud[name] = points[:, axis]
    cloud["label"] = labels
    bag = tmp_path / "plane_bag"
    with SensorBagWriter(bag) as writer:
        writer.write_label_names(NAMES)
        writer.write_static_transforms(1, [("map", "odom", np.eye(4))])
        for frame in frames:
            writer.write_transforms(frame.stamp_ns, [("map", "camera_optical", frame.pose)])
            writer.write_rgbd(frame.stamp_ns, "camera_optical", frame.camera, frame.depth, color=frame.color,
                              gt_labels=frame.labels)
        writer.write_pointcloud(frames[-1].stamp_ns, "/ground_truth/points", "map", cloud)
    out = tmp_path / "report"
    assert cli_main(["eval", str(bag), "--out", str(out), "--oracle", "--split", "sim_b15n4"]) == 0
    data = json.loads((out / "report.json").read_text())
    assert data["miou"] == 1.0 and data["hiou"] == 1.0 and data["coverage"] == 1.0
    assert data["num_points"] == len(points)
    # The default /query of every split class through the node: wall and sofa found where they are, nothing else.
    query = data["query"]
    assert len(query["per_class"]) == 19
    assert query["present_recall"] == 1.0 and query["absent_false_alarm"] == 0.0 and query["top1_precision"] == 1.0
    sofa = query["per_class"]["sofa"]
    assert sofa["present"] and sofa["found"] and sofa["top1_correct"] and sofa["num_objects"] == 1
    assert sofa["score"] > 0.5 and 0.0 < sofa["confidence"] <= 1.0
    assert query["per_class"]["bathtub"] == {"present": False, "found": False, "top1_correct": None,
                                             "num_objects": 0, "score": query["per_class"]["bathtub"]["score"],
                                             "confidence": None}
    assert "| sofa | yes | yes | yes | 1 |" in (out / "report.md").read_text()
