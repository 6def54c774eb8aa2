"""Bag replay into the node graph: deterministic maps, oracle labels, both rosbag2 storages."""
from __future__ import annotations

import numpy as np
import pytest

from ov3dseg_core.data.bag_writer import SensorBagWriter
from ov3dseg_core.geometry.transforms import make_transform, matrix_to_quaternion
from ov3dseg_core.mapping.map_file import load_map
from ov3dseg_ros.replay import ReplayError, replay_bag
from ros_rig import CAMERA, LABEL_NAMES, OPTICAL_FRAME, R_MAP_OPTICAL, SOFA, TEST_PARAMS, wall_images

FRAMES = 6
S = 1_000_000_000


def write_bag(path, storage: str) -> None:
    """FRAMES wall frames from a camera sliding along map y; labels from a 'segmenter' (all sofa) and ground
    truth (left sofa, right wall); /tf at every frame plus one in between (so frames can interpolate)."""
    color, depth, gt = wall_images()
    with SensorBagWriter(path, storage=storage) as bag:
        bag.write_static_transforms(0, [("map", "odom", np.eye(4))])
        for i in range(FRAMES + 1):
            stamp = 10 * S + i * S // 10
            T = make_transform((1.0, 2.0 + 0.03 * i, 0.5), matrix_to_quaternion(R_MAP_OPTICAL))
            bag.write_transforms(stamp, [("odom", OPTICAL_FRAME, T)])
            if i < FRAMES:
                bag.write_rgbd(stamp, OPTICAL_FRAME, CAMERA, depth, color=color,
                               labels=np.full_like(gt, SOFA), gt_labels=gt)
        bag.write_label_names(LABEL_NAMES)


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    root = tmp_path_factory.mktemp("bags")
    for storage in ("mcap", "sqlite3"):
        write_bag(root / storage, storage)
    return root


def replay(bags, ros_domain, storage, tmp_path, name, **kwargs):
    result = replay_bag(bags / storage, params=TEST_PARAMS, save_map=str(tmp_path / f"{name}.safetensors"),
                        progress=False, domain_id=ros_domain, **kwargs)
    return result, load_map(result.map_path)


def test_replay_is_deterministic_and_storage_independent(bags, ros_domain, tmp_path):
    runs = [replay(bags, ros_domain, storage, tmp_path, f"run{i}")
            for i, storage in enumerate(("mcap", "mcap", "sqlite3"))]
    for result, voxel_map in runs:
        assert (result.frames_published, result.frames_integrated, result.frames_dropped) == (FRAMES, FRAMES, 0)
        assert result.unsettled == 0 and result.label_names == LABEL_NAMES
        assert result.timings["integrate"]["count"] == FRAMES and result.timings["publish"]["count"] > FRAMES
    reference = runs[0][1].state()
    for _, voxel_map in runs[1:]:
        state = voxel_map.state()
        for name in ("keys", "position", "color", "weight", "label_counts"):
            assert np.array_equal(state[name].numpy(), reference[name].numpy()), name
    labels, _ = runs[0][1].labels()
    assert np.all(labels == SOFA)  # the bag's segmenter labels (/camera/semantic/image_raw)


def test_oracle_replay_uses_ground_truth_labels(bags, ros_domain, tmp_path):
    result, voxel_map = replay(bags, ros_domain, "mcap", tmp_path, "oracle", oracle=True, rate=2.0)
    assert result.frames_integrated == FRAMES and result.label_names == LABEL_NAMES
    assert result.wall_s >= 0.5 / 2.0  # the frames span 0.5 s of bag time, played at twice the recorded speed
    labels, _ = voxel_map.labels()
    y = voxel_map.positions()[:, 1]
    camera_y = 2.0 + 0.03 * np.arange(FRAMES)
    assert np.all(labels[y > camera_y.max() + 0.05] == SOFA) and np.all(labels[y < camera_y.min() - 0.05] == 0)
    assert voxel_map.label_names == LABEL_NAMES


def test_replay_rejects_what_it_cannot_play(bags, ros_domain, tmp_path):
    with pytest.raises(ReplayError, match="frame topics"):
        replay_bag(bags / "mcap", params={**TEST_PARAMS, "cameras": ["/elsewhere"]}, progress=False,
                   domain_id=ros_domain)
    with pytest.raises(ValueError, match="rate"):
        replay_bag(bags / "mcap", rate=0.0, domain_id=ros_domain)


@pytest.fixture(scope="module")
def sample_bag(tmp_path_factory):
    """The living-room sample frames as a bag (what `ov3dseg record-sample` writes); skipped when absent."""
    from ov3dseg_core.data.bag_writer import write_scene_bag
    from ov3dseg_core.data.readers.redwood import open_redwood
    from ov3dseg_core.data.samples import find_living_room
    try:
        folder = find_living_room()
    except FileNotFoundError as exc:
        pytest.skip(f"living-room sample frames not available: {exc}")
    path = tmp_path_factory.mktemp("sample") / "bag"
    write_scene_bag(open_redwood(folder), path, progress=False)
    return path


def test_sample_bag_replays_to_the_same_map_twice(sample_bag, ros_domain, tmp_path):
    maps = []
    for i in range(2):
        result = replay_bag(sample_bag, params=TEST_PARAMS, save_map=str(tmp_path / f"{i}.safetensors"),
                            progress=False, domain_id=ros_domain)
        assert result.frames_integrated == result.frames_published == 5 and result.unsettled == 0
        maps.append(load_map(result.map_path).state())
    assert maps[0]["keys"].shape[0] > 1000
    for name in ("keys", "position", "color", "weight"):
        assert np.array_equal(maps[0][name].numpy(), maps[1][name].numpy()), name
