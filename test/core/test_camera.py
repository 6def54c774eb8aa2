"""Pinhole camera: construction (K, CameraInfo from rclpy and rosbags), scaling, depth conversion, back-projection
(hand-computed and cross-checked against Open3D), projection and distortion."""
import numpy as np
import pytest

from ov3dseg_core.geometry.camera import (PinholeCamera, backproject_depth, backproject_rgbd, depth_to_metres,
                                         project_points)
from ov3dseg_core.geometry.transforms import make_transform, transform_points

CAMERA = PinholeCamera(width=4, height=3, fx=2.0, fy=4.0, cx=1.5, cy=1.0)


def camera_info_fields():
    """CameraInfo field values of a 640 x 480 camera with plumb_bob distortion."""
    return dict(height=480, width=640, distortion_model="plumb_bob", d=[0.1, -0.05, 0.001, 0.002, 0.0],
                k=[525.0, 0, 319.5, 0, 530.0, 239.5, 0, 0, 1], r=[1.0, 0, 0, 0, 1, 0, 0, 0, 1],
                p=[525.0, 0, 319.5, 0, 0, 530.0, 239.5, 0, 0, 0, 1, 0])


def rosbags_camera_info():
    """(rosbags typestore, rosbags CameraInfo) with ``camera_info_fields``."""
    typesys = pytest.importorskip("rosbags.typesys")
    store = typesys.get_typestore(getattr(typesys.Stores, "ROS2_KILTED", typesys.Stores.ROS2_HUMBLE))
    types = store.types
    header = types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=1, nanosec=0),
                                          frame_id="camera")
    roi = types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    fields = {key: np.asarray(value, dtype=np.float64) if key in "dkrp" else value
              for key, value in camera_info_fields().items()}
    return store, types["sensor_msgs/msg/CameraInfo"](header=header, binning_x=0, binning_y=0, roi=roi, **fields)


def test_K_and_from_K_round_trip():
    np.testing.assert_array_equal(CAMERA.K, [[2, 0, 1.5], [0, 4, 1], [0, 0, 1]])
    assert PinholeCamera.from_K(CAMERA.K, 4, 3) == CAMERA
    assert PinholeCamera.from_K(CAMERA.K.ravel().tolist(), 4, 3) == CAMERA


@pytest.mark.parametrize("kwargs", [
    dict(width=0, height=3, fx=1, fy=1, cx=0, cy=0),
    dict(width=4, height=3, fx=-1, fy=1, cx=0, cy=0),
    dict(width=4, height=3, fx=1, fy=1, cx=np.nan, cy=0),
    dict(width=4, height=3, fx=1, fy=1, cx=0, cy=0, distortion=(0.1, 0.2, 0.3)),
])
def test_invalid_intrinsics_raise(kwargs):
    with pytest.raises(ValueError):
        PinholeCamera(**kwargs)


def test_from_K_rejects_skew():
    with pytest.raises(ValueError, match="K must be"):
        PinholeCamera.from_K([[1, 0.5, 0], [0, 1, 0], [0, 0, 1]], 4, 3)


def test_from_camera_info_rclpy_and_rosbags_agree():
    sensor_msgs = pytest.importorskip("sensor_msgs.msg")
    serialization = pytest.importorskip("rclpy.serialization")
    store, bag_msg = rosbags_camera_info()
    # rosbags CDR bytes -> rclpy message: both decoders must give the same camera.
    rclpy_msg = serialization.deserialize_message(bytes(store.serialize_cdr(bag_msg, bag_msg.__msgtype__)),
                                                  sensor_msgs.CameraInfo)
    expected = PinholeCamera(640, 480, 525.0, 530.0, 319.5, 239.5, (0.1, -0.05, 0.001, 0.002, 0.0))
    assert PinholeCamera.from_camera_info(bag_msg) == expected
    assert PinholeCamera.from_camera_info(rclpy_msg) == expected


def test_from_camera_info_errors():
    sensor_msgs = pytest.importorskip("sensor_msgs.msg")
    fields = camera_info_fields()
    fisheye = sensor_msgs.CameraInfo(**{**fields, "distortion_model": "equidistant"})
    with pytest.raises(ValueError, match="equidistant"):
        PinholeCamera.from_camera_info(fisheye)
    with pytest.raises(ValueError, match="calibrated"):
        PinholeCamera.from_camera_info(sensor_msgs.CameraInfo(width=640, height=480))
    rectified = sensor_msgs.CameraInfo(**{**fields, "distortion_model": "equidistant", "d": [0.0] * 4})
    assert not PinholeCamera.from_camera_info(rectified).is_distorted


def test_scaled_maps_pixel_centres():
    camera = PinholeCamera(640, 480, 500.0, 510.0, 319.5, 239.5)
    half = camera.scaled(0.5)
    assert (half.width, half.height, half.fx, half.fy, half.cx, half.cy) == (320, 240, 250.0, 255.0, 159.5, 119.5)
    points = np.random.default_rng(0).uniform([-1, -1, 1], [1, 1, 4], size=(50, 3)).astype(np.float64)
    uv, _, _ = project_points(camera, points)
    uv_half, _, _ = project_points(half, points)
    np.testing.assert_allclose(uv_half, (uv + 0.5) * 0.5 - 0.5, atol=1e-4)
    with pytest.raises(ValueError):
        camera.scaled(0)


def test_depth_to_metres():
    raw = np.array([[0, 1000, 1234, 65535]], dtype=np.uint16)
    np.testing.assert_array_equal(depth_to_metres(raw), np.float32([[0, 1.0, 1.234, 65.535]]))
    np.testing.assert_array_equal(depth_to_metres(raw, depth_scale=5000), np.float32([[0, 0.2, 0.2468, 13.107]]))
    floats = np.array([[np.nan, np.inf, -1.0, 2.5]], dtype=np.float32)
    metres = depth_to_metres(floats)
    assert metres.dtype == np.float32
    np.testing.assert_array_equal(metres, [[0, 0, 0, 2.5]])
    assert np.isnan(floats[0, 0])  # input untouched


@pytest.mark.parametrize("depth, scale", [
    (np.zeros((2, 2), dtype=bool), None), (np.zeros((2, 2, 1), dtype=np.uint16), None),
    (np.zeros((2, 2), dtype=np.uint16), 0.0)])
def test_depth_to_metres_errors(depth, scale):
    with pytest.raises(ValueError):
        depth_to_metres(depth, scale)


def test_backproject_hand_computed():
    depth = np.zeros((3, 4), dtype=np.float32)
    depth[0, 3] = 2.0  # u = 3, v = 0: x = (3 - 1.5) / 2 * 2, y = (0 - 1) / 4 * 2
    depth[2, 1] = 20.0  # beyond max_range
    depth[1, 1] = np.nan
    depth[1, 2] = 0.05  # below min_range
    points, index = backproject_depth(CAMERA, depth)
    np.testing.assert_allclose(points, [[1.5, -0.5, 2.0]])
    np.testing.assert_array_equal(index, [3])
    assert points.dtype == np.float32 and index.dtype == np.int64
    assert points.T.flags.c_contiguous  # column-major: one (3, N) array (what VoxelMap.integrate reads by axis)
    points, index = backproject_depth(CAMERA, depth, min_range=0.0, max_range=25.0)
    np.testing.assert_array_equal(index, [3, 6, 9])


def test_backproject_stride_is_a_subset():
    depth = np.random.default_rng(1).uniform(0.5, 5, size=(3, 4)).astype(np.float32)
    points, index = backproject_depth(CAMERA, depth)
    sub_points, sub_index = backproject_depth(CAMERA, depth, stride=2)
    np.testing.assert_array_equal(sub_index, [0, 2, 8, 10])
    np.testing.assert_array_equal(sub_points, points[sub_index])


@pytest.mark.parametrize("stride", [1, 2])
def test_backproject_rgbd_posed_and_gathered(stride):
    rng = np.random.default_rng(2)
    depth = rng.uniform(0.5, 5, size=(3, 4)).astype(np.float32)
    depth[1, 2] = 0.0
    colors = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    labels = rng.integers(-1, 7, (3, 4)).astype(np.int64)
    pose = make_transform([1.0, -2.0, 0.5], [0.0, 0.0, np.sqrt(0.5), np.sqrt(0.5)])  # 90 degrees about z
    points, index, point_colors, point_labels = backproject_rgbd(CAMERA, depth, colors, labels, stride=stride,
                                                                 pose=pose)
    camera_points, camera_index = backproject_depth(CAMERA, depth, stride=stride)
    np.testing.assert_array_equal(index, camera_index)
    np.testing.assert_allclose(points, transform_points(pose, camera_points), atol=1e-6)
    np.testing.assert_array_equal(point_colors, colors.reshape(-1, 3)[index])
    np.testing.assert_array_equal(point_labels, labels.reshape(-1)[index])
    assert point_labels.dtype == np.int32 and points.T.flags.c_contiguous
    assert backproject_rgbd(CAMERA, depth)[2:] == (None, None)
    with pytest.raises(ValueError, match="colors"):
        backproject_rgbd(CAMERA, depth, colors[:2])


@pytest.mark.parametrize("depth, stride", [
    (np.zeros((4, 3), dtype=np.float32), 1), (np.zeros((3, 4), dtype=np.uint16), 1),
    (np.zeros((3, 4), dtype=np.float32), 0)])
def test_backproject_errors(depth, stride):
    with pytest.raises(ValueError):
        backproject_depth(CAMERA, depth, stride=stride)


def test_backproject_matches_open3d():
    o3d = pytest.importorskip("open3d")
    camera = PinholeCamera(64, 48, 52.5, 53.0, 31.5, 23.7)
    rng = np.random.default_rng(2)
    raw = rng.integers(0, 6000, size=(48, 64)).astype(np.uint16)
    raw[rng.random(raw.shape) < 0.2] = 0
    intrinsic = o3d.camera.PinholeCameraIntrinsic(64, 48, camera.fx, camera.fy, camera.cx, camera.cy)
    cloud = o3d.geometry.PointCloud.create_from_depth_image(o3d.geometry.Image(raw), intrinsic, depth_scale=1000.0,
                                                            depth_trunc=4.5)
    expected = np.asarray(cloud.points)
    points, index = backproject_depth(camera, depth_to_metres(raw), min_range=0.0, max_range=4.5)
    assert len(points) == len(expected) > 1000
    np.testing.assert_allclose(points, expected, atol=1e-5)  # same row-major pixel order
    np.testing.assert_array_equal(index, np.flatnonzero((raw > 0) & (raw <= 4500)))


def test_project_inverts_backproject():
    camera = PinholeCamera(64, 48, 52.5, 53.0, 31.5, 23.7)
    depth = np.random.default_rng(3).uniform(0.5, 5, size=(48, 64)).astype(np.float32)
    points, index = backproject_depth(camera, depth)
    uv, z, valid = project_points(camera, points)
    assert valid.all()
    np.testing.assert_allclose(uv, np.stack([index % 64, index // 64], axis=1), atol=1e-3)
    np.testing.assert_allclose(z, depth.ravel()[index])


def test_project_validity():
    points = np.array([
        [0.0, 0.0, 1.0],  # principal point (1.5, 1.0): valid
        [0.0, 0.0, -1.0],  # behind the camera
        [0.0, 0.0, 0.0],  # at the centre
        [0.995, 0.0, 1.0],  # u = 3.49: inside the last column (pixel 3 covers [2.5, 3.5))
        [1.0, 0.0, 1.0],  # u = 3.5: right of the image
        [0.0, -0.375, 1.0],  # v = -0.5: top edge of the first row
        [0.0, -0.376, 1.0],  # v = -0.504: above the image
    ])
    uv, z, valid = project_points(CAMERA, points)
    np.testing.assert_array_equal(valid, [True, False, False, True, False, True, False])
    np.testing.assert_allclose(uv[[0, 3, 4, 5]], [[1.5, 1.0], [3.49, 1.0], [3.5, 1.0], [1.5, -0.5]], atol=1e-6)
    assert np.isnan(uv[1]).all() and np.isnan(uv[2]).all()
    np.testing.assert_array_equal(z, [1, -1, 0, 1, 1, 1, 1])
    with pytest.raises(ValueError):
        project_points(CAMERA, np.zeros((2, 2)))


def test_distortion_hand_computed():
    camera = PinholeCamera(101, 101, 100.0, 100.0, 50.0, 50.0, (0.1, 0.0, 0.0, 0.0))
    # x = 0.3, r^2 = 0.09: radial = 1 + 0.1 * 0.09 = 1.009 -> u = 100 * 0.3027 + 50
    uv, _, valid = project_points(camera, np.array([[0.3, 0.0, 1.0]]))
    np.testing.assert_allclose(uv, [[80.27, 50.0]], atol=1e-4)
    assert valid.all()
    # Tangential p1 = 0.01 at (x, y) = (0.2, 0.1): x += 2 p1 x y, y += p1 (r^2 + 2 y^2)
    camera = PinholeCamera(101, 101, 100.0, 100.0, 50.0, 50.0, (0.0, 0.0, 0.01, 0.0))
    uv, _, _ = project_points(camera, np.array([[0.2, 0.1, 1.0]]))
    np.testing.assert_allclose(uv, [[50 + 100 * (0.2 + 0.0004), 50 + 100 * (0.1 + 0.0007)]], atol=1e-4)


@pytest.mark.parametrize("distortion", [(0.12, -0.3, 0.001, -0.002, 0.1), (0.5, 0.1, 0.0, 0.001, 0.0, 0.4, 0.05, 0.0)])
def test_distorted_backproject_project_round_trip(distortion):
    camera = PinholeCamera(64, 48, 52.5, 53.0, 31.5, 23.7, distortion)
    depth = np.full((48, 64), 2.0, dtype=np.float32)
    points, index = backproject_depth(camera, depth)
    uv, _, valid = project_points(camera, points)
    assert valid.all()
    np.testing.assert_allclose(uv, np.stack([index % 64, index // 64], axis=1), atol=1e-3)


def test_distortion_fold_back_is_invalid():
    camera = PinholeCamera(61, 61, 100.0, 100.0, 30.0, 30.0, (-0.5, 0.0, 0.0, 0.0))
    # x = 1.5 lies far outside the view, yet the polynomial maps it to x_d = 1.5 (1 - 0.5 * 2.25) = -0.1875, inside.
    uv, _, valid = project_points(camera, np.array([[1.5, 0.0, 1.0], [0.25, 0.0, 1.0]]))
    np.testing.assert_allclose(uv[0], [11.25, 30.0], atol=1e-4)
    np.testing.assert_array_equal(valid, [False, True])


def test_non_invertible_distortion_raises():
    # With k1 = -0.5 the radius r (1 - 0.5 r^2) never exceeds 0.544, short of the image corners (0.707).
    camera = PinholeCamera(101, 101, 100.0, 100.0, 50.0, 50.0, (-0.5, 0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="cannot be inverted"):
        backproject_depth(camera, np.ones((101, 101), dtype=np.float32))
