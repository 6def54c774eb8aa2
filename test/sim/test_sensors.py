"""Ray-cast RGB-D camera and LiDAR against analytic geometry (an empty box room), noise and dropout statistics,
and label images against the ground-truth cloud."""
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from ov3dseg_core.geometry.camera import PinholeCamera, project_points
from ov3dseg_core.geometry.transforms import invert_transform, transform_points
from ov3dseg_core.labels import IGNORE_LABEL
from ov3dseg_core.sim.sensors import DepthNoiseModel, LidarModel, Light, RaycastWorld, shade
from ov3dseg_core.sim.shapes import box, concatenate, quad

W, D, H = 4.0, 3.0, 2.5
WALL, FLOOR = 0, 1
CAMERA = PinholeCamera(160, 120, 131.25, 131.25, 79.5, 59.5)
WALL_RGB = (0.8, 0.6, 0.4)


def empty_room(depth: float = D) -> RaycastWorld:
    """Walls x = 0, x = W, y = 0, y = depth (label 0), floor z = 0 (label 1), ceiling z = H (ignore)."""
    parts = [quad((0, 0, 0), (W, 0, 0), (0, depth, 0)).with_attributes(FLOOR, 1, 0, (0.5, 0.5, 0.5)),
             quad((0, 0, H), (0, depth, 0), (W, 0, 0)).with_attributes(IGNORE_LABEL, 2, 0, (1, 1, 1))]
    corners = [(0, 0), (W, 0), (W, depth), (0, depth)]
    for i in range(4):
        (x0, y0), (x1, y1) = corners[i], corners[(i + 1) % 4]
        parts.append(quad((x0, y0, 0), (x1 - x0, y1 - y0, 0), (0, 0, H)).with_attributes(WALL, 3 + i, 0, WALL_RGB))
    return RaycastWorld(concatenate(parts))


def camera_pose(position, pitch_deg: float = 0.0) -> np.ndarray:
    """T_world_optical for a camera looking along +y, pitched down by ``pitch_deg``."""
    R_level = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])  # optical x, y, z = +x, -z, +y
    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("x", -pitch_deg, degrees=True).as_matrix() @ R_level
    T[:3, 3] = position
    return T


def analytic_depth(T: np.ndarray, depth_room: float = D) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: depth (along the optical axis) of the nearest room plane and whether that plane is the floor."""
    u, v = np.meshgrid(np.arange(CAMERA.width), np.arange(CAMERA.height))
    d = np.stack([(u - CAMERA.cx) / CAMERA.fx, (v - CAMERA.cy) / CAMERA.fy, np.ones(u.shape)], -1) @ T[:3, :3].T
    o = T[:3, 3]
    with np.errstate(divide="ignore"):
        t = np.stack([(bound - o[axis]) / d[..., axis] for axis, bound in
                      ((0, 0.0), (0, W), (1, 0.0), (1, depth_room), (2, 0.0), (2, H))], -1)
    t[t <= 0] = np.inf
    return t.min(-1), t.argmin(-1) == 4


NO_NOISE = DepthNoiseModel(scale=0.0)
LIGHT = Light((2.0, 1.5, 2.3))


def test_depth_and_labels_match_the_analytic_room():
    world = empty_room()
    T = camera_pose((2.0, 0.4, 1.3), pitch_deg=25.0)
    view = world.render_rgbd(CAMERA, T, LIGHT, NO_NOISE, np.random.default_rng(0))
    expected, on_floor = analytic_depth(T)
    assert on_floor.mean() > 0.2  # the pitched camera sees floor and walls
    np.testing.assert_allclose(view.depth_clean, expected, rtol=1e-5)
    np.testing.assert_array_equal(view.depth, view.depth_clean)  # noise off: exact depth, no dropout
    np.testing.assert_array_equal(view.labels == FLOOR, on_floor)
    assert set(np.unique(view.labels)) <= {WALL, FLOOR, IGNORE_LABEL}
    np.testing.assert_allclose(view.surface_points[:, 2][on_floor.reshape(-1)], 0.0, atol=1e-5)


def test_pixel_colour_is_the_hand_computed_lambertian_shade():
    world = empty_room()
    view = world.render_rgbd(CAMERA, camera_pose((2.0, 0.5, 1.2)), LIGHT, NO_NOISE, np.random.default_rng(0))
    # the principal ray hits the far wall at (2, 3, 1.2), wall normal -y; light at (2, 1.5, 2.3)
    to_light = np.array([0.0, -1.5, 1.1])
    distance2 = to_light @ to_light
    intensity = 0.35 + 0.75 * (1.5 / np.sqrt(distance2)) / (1 + distance2 / 25)
    v, u = int(CAMERA.cy + 0.5), int(CAMERA.cx + 0.5)  # pixel (80, 60): a hair off the principal point
    np.testing.assert_allclose(view.color[v, u], np.array(WALL_RGB) * intensity * 255, atol=1.5)
    assert view.color[:, :, 0].mean() > view.color[:, :, 2].mean()  # the colour carries the albedo


def test_shade_and_shadow_by_hand():
    light = Light((0.0, 0.0, 2.0))
    albedo = np.full((3, 3), 0.5, np.float32)
    points = np.zeros((3, 3), np.float32)
    normals = np.array([[0, 0, 1], [0, 0, -1], [0, 0, 1]], np.float32)
    radiance = shade(albedo, points, normals, light, np.array([True, True, False]))
    lit_up = 0.5 * (0.35 + 0.75 * 1.0 / (1 + 4 / 25))
    np.testing.assert_allclose(radiance[:, 0], [lit_up, 0.5 * 0.35, 0.5 * 0.35], rtol=1e-6)
    # a table top shadows the floor below it from a light above
    world = RaycastWorld(box((-0.5, -0.5, 0.7), (0.5, 0.5, 0.75)))
    floor = np.array([[0.0, 0.0, 0.0], [1.5, 0.0, 0.0]], np.float32)
    np.testing.assert_array_equal(world.lit(floor, np.tile(np.float32([0, 0, 1]), (2, 1)), light), [False, True])


def test_depth_noise_grows_like_the_model():
    world = empty_room()
    noise = DepthNoiseModel()
    z = 2.5
    view = world.render_rgbd(CAMERA, camera_pose((2.0, D - z, 1.25)), LIGHT, noise, np.random.default_rng(1))
    valid = view.depth > 0
    np.testing.assert_allclose(view.depth_clean, z, rtol=1e-6)  # every pixel sees the far wall head-on
    error = view.depth[valid] - z
    sigma = 0.0012 + 0.0019 * (z - 0.4) ** 2
    assert abs(error.mean()) < 4 * sigma / np.sqrt(valid.sum())
    assert error.std() == pytest.approx(sigma, rel=0.05)


def test_dropout_at_random_when_facing_a_wall():
    world = empty_room()
    noise = DepthNoiseModel()
    view = world.render_rgbd(CAMERA, camera_pose((2.0, 0.5, 1.25)), LIGHT, noise, np.random.default_rng(2))
    n = CAMERA.width * CAMERA.height
    dropped = int((view.depth == 0).sum())
    expected = noise.random_dropout * n  # incidence below 40 deg everywhere, no depth edges
    assert abs(dropped - expected) < 4 * np.sqrt(expected)


def test_dropout_grows_at_grazing_incidence():
    world = empty_room(depth=12.0)
    noise = DepthNoiseModel(max_range=20.0)
    T = camera_pose((2.0, 0.2, 0.5))
    view = world.render_rgbd(CAMERA, T, LIGHT, noise, np.random.default_rng(3))
    y_n = (np.arange(CAMERA.height) - CAMERA.cy) / CAMERA.fy
    x_n = (np.arange(CAMERA.width) - CAMERA.cx) / CAMERA.fx
    rows = y_n > 0.2  # floor rows whose neighbours differ by < 5 % in depth (no edge dropout)
    yy, xx = np.meshgrid(y_n[rows], x_n, indexing="ij")
    incidence = np.degrees(np.arccos(yy / np.sqrt(xx ** 2 + yy ** 2 + 1)))
    p_grazing = np.clip((incidence - 70) / 20, 0, 1)
    p = 1 - (1 - p_grazing) * (1 - noise.random_dropout)
    measured = (view.depth[rows] == 0).sum()
    assert view.labels[rows].min() == FLOOR
    assert p_grazing.max() > 0.3
    assert abs(measured - p.sum()) < 4 * np.sqrt((p * (1 - p)).sum())


def test_depth_beyond_range_is_dropped_but_labelled():
    world = empty_room()
    view = world.render_rgbd(CAMERA, camera_pose((2.0, 0.5, 1.25)), LIGHT, DepthNoiseModel(max_range=2.0),
                             np.random.default_rng(0))
    assert not view.depth.any() and not view.depth_clean.any()
    assert (view.labels == WALL).all()
    assert len(view.surface_points) == 0


def test_lidar_hits_walls_at_analytic_ranges():
    world = empty_room()
    x0, y0 = 1.0, 1.2
    T = np.eye(4)
    T[:3, 3] = (x0, y0, 1.0)
    model = LidarModel(beams=3, vertical_fov_deg=(-15.0, 15.0), horizontal_resolution_deg=1.0, noise_std=0.0,
                       max_range=30.0)
    scan = world.scan_lidar(T, model, np.random.default_rng(0), stamp_ns=5)
    assert len(scan.points) == 3 * 360 and scan.stamp_ns == 5
    level = scan.ring == 1
    azimuth = np.arctan2(scan.points[level, 1], scan.points[level, 0])
    c, s = np.cos(azimuth), np.sin(azimuth)
    with np.errstate(divide="ignore"):
        t = np.stack([np.where(c > 0, (W - x0) / c, -x0 / c), np.where(s > 0, (D - y0) / s, -y0 / s)])
    np.testing.assert_allclose(np.linalg.norm(scan.points[level], axis=1), np.nanmin(np.abs(t), axis=0), rtol=1e-5)
    np.testing.assert_array_equal(scan.labels[level], WALL)
    np.testing.assert_allclose(scan.points[level, 2], 0.0, atol=1e-6)
    # a short range drops the far walls; noise stays within its model
    short = LidarModel(beams=3, horizontal_resolution_deg=1.0, noise_std=0.02, max_range=2.0)
    noisy = world.scan_lidar(T, short, np.random.default_rng(1))
    r = np.linalg.norm(noisy.points, axis=1)
    assert 0 < len(r) < 3 * 360 and r.max() <= 2.0 + 5 * 0.02 and r.min() >= short.min_range - 5 * 0.02


def test_label_images_agree_with_projected_ground_truth(clean_scene):
    agree = total = 0
    for frame in clean_scene.frames:
        points_cam = transform_points(invert_transform(frame.pose), clean_scene.points)
        uv, z, valid = project_points(frame.camera, points_cam)
        u = np.rint(uv[valid, 0]).astype(int)
        v = np.rint(uv[valid, 1]).astype(int)
        depth = frame.depth[v, u]
        visible = (depth > 0) & (np.abs(depth - z[valid]) < 0.01)
        agree += (frame.labels[v, u][visible] == clean_scene.labels[valid][visible]).sum()
        total += visible.sum()
        assert (frame.instances[v, u][visible] == clean_scene.instances[valid][visible]).mean() > 0.95
    assert total > 1000
    assert agree / total > 0.95
