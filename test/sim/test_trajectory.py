"""Sensor trajectories: collision-free, smooth, REP-105 sane mounts."""
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from ov3dseg_core.sim.layout import ROOM_TYPES, box_distance, generate_layout
from ov3dseg_core.sim.trajectory import plan_trajectory, sensor_mounts


@pytest.mark.parametrize("room_type", ROOM_TYPES)
def test_camera_path_is_collision_free_and_smooth(room_type):
    for seed in range(3):
        room = generate_layout(np.random.default_rng(seed), room_type)
        max_step, max_turn = 0.25, np.deg2rad(15.0)
        traj = plan_trajectory(room, np.random.default_rng(seed), frames=30, camera_height=1.4,
                               pitch=np.deg2rad(15), max_step=max_step, max_turn=max_turn)
        cams = traj.T_map_optical[:, :3, 3]
        lo, hi = room.object_boxes()
        assert box_distance(cams, lo, hi).min() >= 0.3
        to_walls = np.concatenate([cams, room.size - cams], axis=1)
        assert to_walls.min() >= 0.3
        steps = np.linalg.norm(np.diff(cams, axis=0), axis=1)
        assert steps.max() <= max_step + 1e-9
        relative = Rotation.from_matrix(traj.T_map_optical[:-1, :3, :3]).inv() * Rotation.from_matrix(
            traj.T_map_optical[1:, :3, :3])
        assert relative.magnitude().max() <= max_turn + 1e-9
        assert steps.sum() > 0.5 or relative.magnitude().sum() > np.pi / 2  # it does move or look around


def test_base_link_is_planar_and_z_up():
    room = generate_layout(np.random.default_rng(2), "bedroom")
    traj = plan_trajectory(room, np.random.default_rng(2), frames=10, fps=5.0)
    np.testing.assert_allclose(traj.T_map_base[:, :3, 2], np.tile([0.0, 0.0, 1.0], (10, 1)))
    np.testing.assert_allclose(traj.T_map_base[:, 2, 3], 0.0)
    np.testing.assert_array_equal(np.diff(traj.stamps_ns), 200_000_000)


def test_sensor_mounts_pitch_the_optical_axis_down():
    pitch = np.deg2rad(20.0)
    T_base_camera, T_camera_optical, T_base_lidar = sensor_mounts(1.5, pitch, 1.7)
    T_base_optical = T_base_camera @ T_camera_optical
    np.testing.assert_allclose(T_base_optical[:3, 2], [np.cos(pitch), 0.0, -np.sin(pitch)], atol=1e-12)  # forward
    np.testing.assert_allclose(T_base_optical[:3, 0], [0.0, -1.0, 0.0], atol=1e-12)  # image x = robot right
    np.testing.assert_allclose(T_base_optical[:3, 3], [0.0, 0.0, 1.5])
    np.testing.assert_allclose(T_base_lidar[:3, :3], np.eye(3))
    assert T_base_lidar[2, 3] == 1.7


def test_impossible_heights_are_rejected():
    room = generate_layout(np.random.default_rng(0), "office")
    with pytest.raises(ValueError, match="camera height"):
        plan_trajectory(room, np.random.default_rng(0), frames=3, camera_height=room.size[2])
