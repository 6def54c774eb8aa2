"""TfBuffer: chains through the tree, static vs dynamic edges, SLERP interpolation, bounded history, latest common
time, and every error path (no silent extrapolation)."""
import logging
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from ov3dseg_core.geometry.tf_buffer import ConnectivityError, ExtrapolationError, TfBuffer, TransformError
from ov3dseg_core.geometry.transforms import invert_transform, make_transform

SEC = 1_000_000_000


def rot_z(degrees, translation=(0.0, 0.0, 0.0)):
    """Transform rotating ``degrees`` about z, then translating."""
    return make_transform(translation, Rotation.from_euler("z", degrees, degrees=True).as_quat())


@pytest.fixture
def robot():
    """map -> odom (dynamic) -> base_link -> {camera, lidar} (static)."""
    tf = TfBuffer(cache_time_s=10.0)
    tf.set_transform("map", "odom", 1 * SEC, rot_z(0, (1, 0, 0)))
    tf.set_transform("map", "odom", 3 * SEC, rot_z(90, (3, 0, 0)))
    tf.set_transform("odom", "base_link", 0, rot_z(0, (0, 2, 0)), static=True)
    tf.set_transform("base_link", "camera", 0, rot_z(-90, (0.1, 0, 0.5)), static=True)
    tf.set_transform("base_link", "lidar", 0, rot_z(0, (0, 0, 1.0)), static=True)
    return tf


def test_chain_at_a_sample_time_is_the_product(robot):
    expected = rot_z(90, (3, 0, 0)) @ rot_z(0, (0, 2, 0)) @ rot_z(-90, (0.1, 0, 0.5))
    np.testing.assert_allclose(robot.lookup("map", "camera", 3 * SEC), expected, atol=1e-12)
    np.testing.assert_allclose(robot.lookup("camera", "map", 3 * SEC), invert_transform(expected), atol=1e-12)


def test_siblings_go_through_the_common_ancestor(robot):
    T_camera_lidar = robot.lookup("camera", "lidar", 2 * SEC)
    expected = invert_transform(rot_z(-90, (0.1, 0, 0.5))) @ rot_z(0, (0, 0, 1.0))
    np.testing.assert_allclose(T_camera_lidar, expected, atol=1e-12)


def test_interpolation_between_stamps(robot):
    T = robot.lookup("map", "odom", 2 * SEC)  # halfway: translation (2, 0, 0), rotation 45 degrees (SLERP)
    np.testing.assert_allclose(T, rot_z(45, (2, 0, 0)), atol=1e-12)
    T = robot.lookup("map", "odom", int(1.5 * SEC))
    np.testing.assert_allclose(T, rot_z(22.5, (1.5, 0, 0)), atol=1e-12)


def test_exact_stamps_return_the_stored_samples(robot):
    np.testing.assert_array_equal(robot.lookup("map", "odom", 1 * SEC), rot_z(0, (1, 0, 0)))
    np.testing.assert_array_equal(robot.lookup("map", "odom", 3 * SEC), rot_z(90, (3, 0, 0)))


@pytest.mark.parametrize("stamp, direction", [(int(0.5 * SEC), "before"), (4 * SEC, "after")])
def test_no_extrapolation(robot, stamp, direction):
    with pytest.raises(ExtrapolationError) as info:
        robot.lookup("map", "camera", stamp)
    message = str(info.value)
    for text in ("'camera'", "'map'", "'odom'", "1.000000000 s", "3.000000000 s", direction):
        assert text in message
    assert (info.value.stamp_ns, info.value.earliest_ns, info.value.latest_ns) == (stamp, 1 * SEC, 3 * SEC)
    assert not robot.can_transform("map", "camera", stamp)
    assert robot.can_transform("map", "camera", 2 * SEC)


def test_static_edges_are_valid_at_all_times(robot):
    for stamp in (0, 1, 10**18):
        np.testing.assert_allclose(robot.lookup("base_link", "camera", stamp), rot_z(-90, (0.1, 0, 0.5)))


def test_stamp_zero_is_latest_common_time():
    tf = TfBuffer()
    tf.set_transform("map", "odom", 1 * SEC, rot_z(0))
    tf.set_transform("map", "odom", 5 * SEC, rot_z(40))
    tf.set_transform("odom", "base", 2 * SEC, rot_z(0, (1, 0, 0)))
    tf.set_transform("odom", "base", 4 * SEC, rot_z(0, (3, 0, 0)))
    # Latest common time = min(5, 4) = 4 s: map->odom interpolated at 4 s (30 degrees), odom->base at its newest.
    np.testing.assert_allclose(tf.lookup("map", "base", 0), rot_z(30) @ rot_z(0, (3, 0, 0)), atol=1e-12)
    np.testing.assert_array_equal(tf.lookup("map", "base", 0), tf.lookup("map", "base", 4 * SEC))


def test_stamp_zero_without_common_time_raises():
    tf = TfBuffer()
    tf.set_transform("map", "odom", 1 * SEC, rot_z(0))
    tf.set_transform("odom", "base", 2 * SEC, rot_z(0))
    with pytest.raises(ExtrapolationError, match="share no time"):
        tf.lookup("map", "base", 0)


def test_history_is_bounded_by_cache_time():
    tf = TfBuffer(cache_time_s=1.0)
    for i in range(11):  # 0, 0.5, ..., 5 s
        tf.set_transform("map", "odom", i * SEC // 2, rot_z(0, (i, 0, 0)))
    with pytest.raises(ExtrapolationError) as info:
        tf.lookup("map", "odom", int(3.9 * SEC))
    assert (info.value.earliest_ns, info.value.latest_ns) == (4 * SEC, 5 * SEC)
    np.testing.assert_allclose(tf.lookup("map", "odom", 4 * SEC)[:3, 3], [8, 0, 0])
    # A sample older than the window is dropped on arrival.
    tf.set_transform("map", "odom", 1 * SEC, rot_z(0))
    assert not tf.can_transform("map", "odom", 1 * SEC)


def test_out_of_order_and_repeated_samples():
    tf = TfBuffer()
    tf.set_transform("a", "b", 3 * SEC, rot_z(0, (3, 0, 0)))
    tf.set_transform("a", "b", 1 * SEC, rot_z(0, (1, 0, 0)))
    tf.set_transform("a", "b", 2 * SEC, rot_z(0, (5, 0, 0)))
    np.testing.assert_allclose(tf.lookup("a", "b", int(1.5 * SEC))[:3, 3], [3, 0, 0])
    tf.set_transform("a", "b", 2 * SEC, rot_z(0, (2, 0, 0)))  # same stamp replaces
    np.testing.assert_allclose(tf.lookup("a", "b", int(2.5 * SEC))[:3, 3], [2.5, 0, 0])


def test_single_sample_edge_only_at_its_stamp():
    tf = TfBuffer()
    tf.set_transform("a", "b", 2 * SEC, rot_z(10))
    assert tf.can_transform("a", "b", 2 * SEC) and tf.can_transform("a", "b", 0)
    assert not tf.can_transform("a", "b", 2 * SEC + 1)


def test_unknown_and_unconnected_frames(robot):
    with pytest.raises(ConnectivityError, match="unknown frame 'nowhere'"):
        robot.lookup("map", "nowhere", 0)
    with pytest.raises(ConnectivityError, match="unknown frame 'ghost'"):
        robot.lookup("ghost", "ghost", 0)
    robot.set_transform("world", "other_robot", 0, np.eye(4), static=True)
    with pytest.raises(ConnectivityError, match="separate trees rooted at 'world' and 'map'"):
        robot.lookup("other_robot", "camera", 2 * SEC)
    assert not robot.can_transform("other_robot", "camera", 2 * SEC)


def test_same_frame_is_identity(robot):
    np.testing.assert_array_equal(robot.lookup("camera", "camera", 123), np.eye(4))


def test_reparenting_replaces_the_edge_with_a_warning(robot, caplog):
    with caplog.at_level(logging.WARNING):
        robot.set_transform("map", "base_link", 5 * SEC, rot_z(0, (7, 0, 0)))
    assert "'base_link'" in caplog.text and "'odom'" in caplog.text
    np.testing.assert_allclose(robot.lookup("map", "base_link", 5 * SEC)[:3, 3], [7, 0, 0])
    assert not robot.can_transform("odom", "base_link", 5 * SEC)  # odom no longer connects to base_link


def test_cycles_are_rejected(robot):
    with pytest.raises(TransformError, match="cycle"):
        robot.set_transform("camera", "odom", 0, np.eye(4))
    np.testing.assert_allclose(robot.lookup("map", "odom", 3 * SEC), rot_z(90, (3, 0, 0)))  # unchanged


def test_frames_and_clear_keep_static(robot):
    assert robot.frames() == {"map", "odom", "base_link", "camera", "lidar"}
    robot.clear()
    assert robot.frames() == {"odom", "base_link", "camera", "lidar"}
    assert robot.can_transform("odom", "camera", 0)
    assert not robot.can_transform("map", "camera", 0)


@pytest.mark.parametrize("args", [
    ("a", "b", 0, np.eye(3)),
    ("a", "b", 0, np.diag([1.0, 1.0, -1.0, 1.0])),  # reflection
    ("a", "b", 0, np.diag([2.0, 1.0, 1.0, 1.0])),  # scale
    ("a", "b", 0, np.full((4, 4), np.nan)),
    ("a", "b", -1, np.eye(4)),
    ("a", "b", 1.5, np.eye(4)),
    ("", "b", 0, np.eye(4)),
    ("a", "a", 0, np.eye(4)),
])
def test_bad_set_transform_arguments(args):
    with pytest.raises(ValueError):
        TfBuffer().set_transform(*args)


def test_bad_lookup_stamp_and_cache_time():
    with pytest.raises(ValueError):
        TfBuffer(cache_time_s=0)
    tf = TfBuffer()
    tf.set_transform("a", "b", 0, np.eye(4), static=True)
    with pytest.raises(ValueError):
        tf.lookup("a", "b", -5)


def test_stored_transform_is_a_copy():
    tf = TfBuffer()
    T = rot_z(0, (1, 0, 0))
    tf.set_transform("a", "b", 0, T, static=True)
    T[0, 3] = 99
    assert tf.lookup("a", "b", 0)[0, 3] == 1


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.floats(-180, 180), st.floats(-10, 10), st.floats(-10, 10)), min_size=1, max_size=6))
def test_random_chains_compose(links):
    tf = TfBuffer()
    expected = np.eye(4)
    for i, (angle, x, y) in enumerate(links):
        T = rot_z(angle, (x, y, 0.5))
        tf.set_transform(f"f{i}", f"f{i + 1}", 7 * SEC, T, static=i % 2 == 0)
        expected = expected @ T
    leaf = f"f{len(links)}"
    np.testing.assert_allclose(tf.lookup("f0", leaf, 7 * SEC), expected, atol=1e-9)
    np.testing.assert_allclose(tf.lookup(leaf, "f0", 0), invert_transform(expected), atol=1e-9)


def test_concurrent_writers_and_readers():
    tf = TfBuffer(cache_time_s=1.0)
    tf.set_transform("map", "base", 0, np.eye(4), static=True)
    errors = []

    def writer(child):
        for i in range(300):
            tf.set_transform("base", child, i * SEC // 100, rot_z(i % 360, (i, 0, 0)))

    def reader():
        for _ in range(300):
            try:
                tf.lookup("map", "sensor0", 0)
            except ConnectivityError:
                pass  # before the first sample
            except Exception as exc:  # anything else is a race
                errors.append(exc)

    threads = [threading.Thread(target=writer, args=(f"sensor{k}",)) for k in range(3)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for k in range(3):
        np.testing.assert_allclose(tf.lookup("map", f"sensor{k}", 0), rot_z(299, (299, 0, 0)), atol=1e-9)
        assert not tf.can_transform("map", f"sensor{k}", int(1.98 * SEC) - 1)  # older than the 1 s window
