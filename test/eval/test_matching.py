"""Voxel-to-point matching: hand-computed lookups, missing voxels, the purity bound."""
import numpy as np
import pytest

from ov3dseg_core.eval.matching import match_points_to_voxels, pack_keys, voxel_indices, voxel_purity


def test_hand_computed_matches_including_missing_and_unlabelled_voxels():
    keys = np.array([[0, 0, 0], [1, 0, 0], [-1, 2, 3]], dtype=np.int32)
    labels = np.array([2, -1, 0])
    points = np.array([[0.05, 0.05, 0.05],    # voxel (0,0,0) -> 2
                       [0.15, 0.01, 0.09],    # voxel (1,0,0), unlabelled -> -1, but in the map
                       [-0.05, 0.25, 0.35],   # voxel (-1,2,3) -> 0
                       [0.55, 0.55, 0.55],    # voxel (5,5,5) missing -> -1
                       [-0.01, 0.05, 0.05]],  # voxel (-1,0,0) missing (floor, not truncation)
                      dtype=np.float32)
    pred, in_map = match_points_to_voxels(points, keys, labels, voxel_size=0.1)
    np.testing.assert_array_equal(pred, [2, -1, 0, -1, -1])
    np.testing.assert_array_equal(in_map, [True, True, True, False, False])
    assert pred.dtype == np.int32


def test_random_matches_agree_with_a_dict_lookup():
    rng = np.random.default_rng(1)
    voxel_size = 0.05
    keys = np.unique(rng.integers(-40, 40, (3000, 3)), axis=0)
    labels = rng.integers(-1, 20, len(keys))
    points = rng.uniform(-2.0, 2.0, (20000, 3)).astype(np.float32)
    pred, in_map = match_points_to_voxels(points, keys, labels, voxel_size)
    table = {tuple(k): l for k, l in zip(keys.tolist(), labels.tolist())}
    ref_keys = [tuple(k) for k in np.floor(points / np.float32(voxel_size)).astype(int).tolist()]
    np.testing.assert_array_equal(in_map, [k in table for k in ref_keys])
    np.testing.assert_array_equal(pred, [table.get(k, -1) for k in ref_keys])


def test_empty_map_and_bad_input():
    pred, in_map = match_points_to_voxels(np.zeros((3, 3)), np.zeros((0, 3), int), np.zeros(0, int), 0.1)
    np.testing.assert_array_equal(pred, [-1, -1, -1])
    assert not in_map.any()
    with pytest.raises(ValueError, match="duplicate"):
        match_points_to_voxels(np.zeros((1, 3)), np.zeros((2, 3), int), np.zeros(2, int), 0.1)
    with pytest.raises(ValueError, match="voxel labels"):
        match_points_to_voxels(np.zeros((1, 3)), np.zeros((2, 3), int), np.zeros(3, int), 0.1)
    with pytest.raises(ValueError, match="packable range"):
        pack_keys(np.array([[2 ** 20, 0, 0]]))
    with pytest.raises(ValueError, match="voxel_size"):
        voxel_indices(np.zeros((1, 3)), 0.0)


def test_pack_keys_is_injective_at_the_range_ends():
    idx = np.array([[-2 ** 20, 0, 0], [0, -2 ** 20, 0], [0, 0, -2 ** 20], [2 ** 20 - 1] * 3, [0, 0, 0], [-1, -1, -1]])
    assert len(np.unique(pack_keys(idx))) == len(idx)


def test_voxel_purity_bound():
    # voxel A holds labels 0, 0, 1 (majority 0); voxel B holds 2; an unlabelled point is skipped -> 3 of 4
    points = np.array([[0.01, 0.01, 0.01], [0.02, 0.02, 0.02], [0.03, 0.03, 0.03], [0.31, 0.01, 0.01],
                       [0.32, 0.01, 0.01]])
    labels = np.array([0, 0, 1, 2, -1])
    assert voxel_purity(points, labels, 0.1) == pytest.approx(0.75)
    assert voxel_purity(points, labels, 0.01) == pytest.approx(1.0)
    assert voxel_purity(points, np.full(5, -1), 0.1) is None
