"""Rigid transforms: hand-computed cases, ROS quaternion order, and property tests (round trips, inverse,
composition, interpolation endpoints and SLERP)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from ov3dseg_core.geometry.transforms import (interpolate_transform, invert_transform, make_transform,
                                              matrix_to_quaternion, quaternion_to_matrix,
                                              transform_points, transform_to_translation_quaternion)

S45 = np.sqrt(0.5)

quaternions = st.lists(st.floats(-1, 1), min_size=4, max_size=4).map(np.array).filter(
    lambda q: np.linalg.norm(q) > 0.1)
translations = st.lists(st.floats(-50, 50), min_size=3, max_size=3).map(np.array)
transforms = st.builds(make_transform, translations, quaternions)
unit_alpha = st.floats(0, 1)


def angle_between(R0, R1):
    """Rotation angle (radians) of R0^T R1."""
    return np.linalg.norm(Rotation.from_matrix(R0.T @ R1).as_rotvec())


def test_quaternion_order_is_ros_xyzw():
    # 90 degrees about z: (x, y, z, w) = (0, 0, sin 45, cos 45).
    np.testing.assert_allclose(quaternion_to_matrix([0, 0, S45, S45]), [[0, -1, 0], [1, 0, 0], [0, 0, 1]],
                               atol=1e-15)
    # (1, 0, 0, 0) is 180 degrees about x in xyzw order (it would be the identity in wxyz order).
    np.testing.assert_allclose(quaternion_to_matrix([1, 0, 0, 0]), np.diag([1.0, -1.0, -1.0]), atol=1e-15)


def test_quaternion_is_normalised_and_canonical():
    np.testing.assert_allclose(quaternion_to_matrix([0, 0, 2, 2]), quaternion_to_matrix([0, 0, S45, S45]))
    q = matrix_to_quaternion(quaternion_to_matrix([0, 0, -S45, -S45]))
    np.testing.assert_allclose(q, [0, 0, S45, S45])


def test_make_transform_hand_computed():
    T = make_transform([1, 2, 3], [0, 0, S45, S45])
    np.testing.assert_allclose(T @ [1, 0, 0, 1], [1, 3, 3, 1], atol=1e-12)
    np.testing.assert_array_equal(T[3], [0, 0, 0, 1])


@pytest.mark.parametrize("bad", [[0, 0, 0, 0], [np.nan, 0, 0, 1], [0, 0, 1]])
def test_bad_quaternion_raises(bad):
    with pytest.raises(ValueError):
        quaternion_to_matrix(bad)


@pytest.mark.parametrize("call", [
    lambda: make_transform([0, 0], [0, 0, 0, 1]),
    lambda: make_transform([0, np.inf, 0], [0, 0, 0, 1]),
    lambda: matrix_to_quaternion(np.eye(4)),
    lambda: invert_transform(np.eye(3)),
    lambda: transform_points(np.eye(4), np.zeros((5, 2))),
    lambda: transform_points(np.eye(4), np.zeros((5, 3), dtype=np.int32)),
    lambda: interpolate_transform(np.eye(4), np.eye(4), 1.5),
    lambda: interpolate_transform(np.eye(4), np.eye(4), -0.1),
])
def test_bad_shapes_and_values_raise(call):
    with pytest.raises(ValueError):
        call()


@settings(max_examples=50, deadline=None)
@given(translations, quaternions)
def test_translation_quaternion_round_trip(t, q):
    t2, q2 = transform_to_translation_quaternion(make_transform(t, q))
    q = q / np.linalg.norm(q)
    np.testing.assert_allclose(t2, t)
    assert q2[3] >= 0
    assert min(np.abs(q2 - q).max(), np.abs(q2 + q).max()) < 1e-9  # q and -q are the same rotation


@settings(max_examples=50, deadline=None)
@given(transforms)
def test_inverse(T):
    inv = invert_transform(T)
    np.testing.assert_allclose(T @ inv, np.eye(4), atol=1e-9)
    np.testing.assert_allclose(inv, np.linalg.inv(T), atol=1e-9)


@settings(max_examples=50, deadline=None)
@given(transforms, transforms, st.sampled_from([np.float32, np.float64]))
def test_transform_points_composition_and_dtype(A, B, dtype):
    points = np.random.default_rng(0).uniform(-5, 5, size=(20, 3)).astype(dtype)
    out = transform_points(A @ B, points)
    assert out.dtype == dtype and out.shape == (20, 3)
    homogeneous = (A @ B @ np.c_[points.astype(np.float64), np.ones(20)].T).T[:, :3]
    tol = 1e-3 if dtype == np.float32 else 1e-9
    np.testing.assert_allclose(out, homogeneous, atol=tol)
    np.testing.assert_allclose(transform_points(A, transform_points(B, points)), out, atol=tol)
    np.testing.assert_allclose(transform_points(invert_transform(A), transform_points(A, points)), points, atol=tol)
    column_major = transform_points(A @ B, np.asfortranarray(points))  # the layout backproject_depth returns
    assert column_major.T.flags.c_contiguous and column_major.dtype == dtype
    np.testing.assert_allclose(column_major, out, atol=tol)


@settings(max_examples=50, deadline=None)
@given(transforms, transforms)
def test_interpolation_endpoints_are_exact(T0, T1):
    np.testing.assert_array_equal(interpolate_transform(T0, T1, 0.0), T0)
    np.testing.assert_array_equal(interpolate_transform(T0, T1, 1.0), T1)


@settings(max_examples=50, deadline=None)
@given(transforms, transforms, unit_alpha)
def test_interpolation_is_slerp_and_lerp(T0, T1, alpha):
    T = interpolate_transform(T0, T1, alpha)
    np.testing.assert_allclose(T[:3, 3], (1 - alpha) * T0[:3, 3] + alpha * T1[:3, 3], atol=1e-9)
    np.testing.assert_allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-9)
    # Constant angular velocity along the shortest arc: angles to both ends split the total angle by alpha.
    total = angle_between(T0[:3, :3], T1[:3, :3])
    np.testing.assert_allclose(angle_between(T0[:3, :3], T[:3, :3]), alpha * total, atol=1e-6)
    np.testing.assert_allclose(angle_between(T[:3, :3], T1[:3, :3]), (1 - alpha) * total, atol=1e-6)


def test_interpolation_hand_computed_midpoint():
    T0 = make_transform([0, 0, 0], [0, 0, 0, 1])
    T1 = make_transform([2, 0, 0], [0, 0, S45, S45])  # 90 degrees about z
    T = interpolate_transform(T0, T1, 0.5)
    expected = Rotation.from_euler("z", 45, degrees=True).as_matrix()
    np.testing.assert_allclose(T[:3, :3], expected, atol=1e-12)
    np.testing.assert_allclose(T[:3, 3], [1, 0, 0])


def test_interpolation_takes_the_shortest_arc():
    T0 = make_transform([0, 0, 0], Rotation.from_euler("z", 170, degrees=True).as_quat())
    T1 = make_transform([0, 0, 0], Rotation.from_euler("z", -170, degrees=True).as_quat())
    T = interpolate_transform(T0, T1, 0.5)
    np.testing.assert_allclose(T[:3, :3], Rotation.from_euler("z", 180, degrees=True).as_matrix(), atol=1e-12)
