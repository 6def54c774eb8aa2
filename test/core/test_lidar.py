"""LiDAR point cleaning: non-finite and out-of-range points are dropped."""
import numpy as np
import pytest

from ov3dseg_core.geometry.lidar import clean_points


def test_clean_points_hand_computed():
    points = np.array([
        [1.0, 0.0, 0.0],  # range 1: kept
        [np.nan, 0.0, 0.0],
        [0.0, np.inf, 0.0],
        [0.1, 0.1, 0.0],  # range 0.14 < 0.5
        [30.0, 40.0, 0.0],  # range 50 > 40
        [0.0, 3.0, 4.0],  # range 5: kept
        [0.0, 0.0, 0.5],  # exactly min_range: kept
    ])
    kept, keep = clean_points(points, min_range=0.5, max_range=40.0)
    np.testing.assert_array_equal(keep, [True, False, False, False, False, True, True])
    np.testing.assert_array_equal(kept, points[[0, 5, 6]].astype(np.float32))
    assert kept.dtype == np.float32


@pytest.mark.parametrize("points, min_range, max_range", [
    (np.zeros((3, 2)), 0.0, 1.0), (np.zeros((3, 3), dtype=np.int32), 0.0, 1.0), (np.zeros((3, 3)), 2.0, 1.0)])
def test_clean_points_errors(points, min_range, max_range):
    with pytest.raises(ValueError):
        clean_points(points, min_range, max_range)
