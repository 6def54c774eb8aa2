"""Map queries: request validation, ranking / threshold / top_k, label-only queries through label-name embeddings,
and 26-connected grouping (hand-computed boxes, cross-checked against scipy.ndimage.label)."""
import numpy as np
import pytest
from scipy import ndimage

from ov3dseg_core.mapping import (QueryError, VoxelMap, VoxelMapConfig, group_voxels, query_features, query_labels,
                                  validate_query)
from ov3dseg_core.mapping.query import MAX_QUERY_CHARS, select_voxels

VS = 0.1


def points_at(keys) -> np.ndarray:
    """Voxel centres of integer (K, 3) keys as float32 points."""
    return ((np.asarray(keys, np.float64) + 0.5) * VS).astype(np.float32)


# ---------------------------------------------------------------- validation
def test_validate_query_accepts_and_strips():
    assert validate_query("  chair \n", 0, 0.5) == "chair"
    assert validate_query("caf\u00e9".encode(), 5, -1.0) == "caf\u00e9"
    assert validate_query("x" * MAX_QUERY_CHARS, 1, 1.0) == "x" * 256
    assert validate_query(" " + "y" * 256 + " ", np.int64(3), np.float32(0.2)) == "y" * 256


@pytest.mark.parametrize("text, top_k, threshold, message", [
    ("", 0, 0.5, "empty"),
    ("   \t", 0, 0.5, "empty"),
    ("x" * 257, 0, 0.5, "257 characters"),
    (b"\xff\xfechair", 0, 0.5, "not valid UTF-8"),
    ("bad \udcff surrogate", 0, 0.5, "not valid UTF-8"),
    (None, 0, 0.5, "must be a string"),
    ("chair", -1, 0.5, "top_k"),
    ("chair", 2.0, 0.5, "top_k"),
    ("chair", True, 0.5, "top_k"),
    ("chair", 0, 1.5, "threshold"),
    ("chair", 0, -1.01, "threshold"),
    ("chair", 0, float("nan"), "threshold"),
    ("chair", 0, "0.5", "threshold"),
])
def test_validate_query_rejects(text, top_k, threshold, message):
    with pytest.raises(QueryError, match=message):
        validate_query(text, top_k, threshold)


# ---------------------------------------------------------------- feature queries
def feature_map() -> VoxelMap:
    """Five voxels along x with features at known cosines to e0: 1, 0.8, 0.6, -1, and one without a feature."""
    vmap = VoxelMap(VoxelMapConfig(voxel_size=VS, feature_dim=3))
    keys = [[0, 0, 0], [5, 0, 0], [10, 0, 0], [15, 0, 0], [20, 0, 0]]
    vmap.integrate(points_at(keys))
    feats = np.array([[2.0, 0, 0], [0.8, 0.6, 0], [0.6, 0, 0.8], [-1.0, 0, 0]], np.float32)
    vmap.integrate_features(points_at(keys[:4]), feats)
    return vmap


def test_feature_query_threshold_then_top_k():
    vmap = feature_map()
    text = np.array([3.0, 0.0, 0.0])  # normalised by the query
    result = query_features(vmap, text, top_k=0, threshold=0.5, label="chair")
    np.testing.assert_array_equal(result.indices, [0, 1, 2])
    np.testing.assert_allclose(result.scores, [1.0, 0.8, 0.6], atol=1e-3)
    np.testing.assert_allclose(result.positions, points_at([[0, 0, 0], [5, 0, 0], [10, 0, 0]]), atol=1e-6)
    assert [g.label for g in result.objects] == ["chair"] * 3  # isolated voxels: one group each
    assert [g.num_voxels for g in result.objects] == [1, 1, 1]
    np.testing.assert_allclose([g.score for g in result.objects], [1.0, 0.8, 0.6], atol=1e-3)

    top2 = query_features(vmap, text, top_k=2, threshold=0.5)
    np.testing.assert_array_equal(top2.indices, [0, 1])
    everything = query_features(vmap, text, top_k=0, threshold=-1.0)
    np.testing.assert_array_equal(everything.indices, [0, 1, 2, 3])  # the featureless voxel never matches
    assert everything.scores[-1] == pytest.approx(-1.0, abs=1e-3)
    assert len(query_features(vmap, text, top_k=10, threshold=0.99).indices) == 1


def test_select_voxels_orders_best_first():
    scores = np.array([0.1, 0.9, -np.inf, 0.5, 0.9, 0.3], np.float32)
    np.testing.assert_array_equal(select_voxels(scores, 0, 0.2), [1, 4, 3, 5])
    np.testing.assert_array_equal(select_voxels(scores, 2, 0.2), [1, 4])
    assert select_voxels(scores, 0, 0.95).size == 0


def test_feature_query_errors():
    vmap = feature_map()
    with pytest.raises(QueryError, match="2 values"):
        query_features(vmap, np.ones(2), 0, 0.5)
    with pytest.raises(QueryError, match="non-zero"):
        query_features(vmap, np.zeros(3), 0, 0.5)
    with pytest.raises(QueryError, match="top_k"):
        query_features(vmap, np.ones(3), -2, 0.5)
    with pytest.raises(QueryError, match="no features"):
        query_features(VoxelMap(VoxelMapConfig(num_labels=2)), np.ones(3), 0, 0.5)


# ---------------------------------------------------------------- label-only queries
def test_label_query_scores_by_label_name_embedding():
    names = ["sofa", "chair", "table"]
    table = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], np.float32)
    couch = np.array([0.9, 0.1, 0.0], np.float32)  # "couch" embeds next to "sofa"
    vmap = VoxelMap(VoxelMapConfig(voxel_size=VS, num_labels=3), label_names=names)
    sofa_keys = [[0, 0, 0], [1, 0, 0], [2, 0, 0]]
    chair_keys = [[3, 0, 0], [3, 1, 0]]  # touches the sofa: must still be its own group
    far_sofa = [[10, 10, 10]]
    unlabelled = [[20, 0, 0]]
    keys = sofa_keys + chair_keys + far_sofa + unlabelled
    vmap.integrate(points_at(keys), labels=np.array([0, 0, 0, 1, 1, 0, -1]))
    result = query_labels(vmap, couch, table, names, top_k=0, threshold=0.5)
    cos_sofa = 0.9 / np.hypot(0.9, 0.1)
    assert len(result.indices) == 4
    np.testing.assert_allclose(result.scores, cos_sofa, rtol=1e-6)
    assert [(g.label, g.num_voxels) for g in result.objects] == [("sofa", 3), ("sofa", 1)]
    np.testing.assert_allclose(result.objects[0].center, [1.5 * VS, 0.5 * VS, 0.5 * VS])
    np.testing.assert_allclose(result.objects[0].size, [3 * VS, VS, VS])

    low = query_labels(vmap, couch, table, names, top_k=0, threshold=0.0)
    assert [(g.label, g.num_voxels) for g in low.objects] == [("sofa", 3), ("sofa", 1), ("chair", 2)]
    assert len(low.indices) == 6  # the unlabelled voxel never matches
    with pytest.raises(QueryError, match="label names"):
        query_labels(vmap, couch, table[:2], names[:2], 0, 0.5)


# ---------------------------------------------------------------- grouping
def test_two_separated_blobs_make_two_groups():
    cube = np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3)
    bar = np.array([[10, -4, 7], [11, -4, 7]])
    keys = np.vstack([cube, bar])
    scores = np.r_[np.full(27, 0.5), 0.9, 0.7]
    groups = group_voxels(keys, scores, VS, default_label="box")
    assert len(groups) == 2
    bar_group, cube_group = groups  # the bar holds the best voxel
    assert bar_group.num_voxels == 2 and cube_group.num_voxels == 27
    assert bar_group.score == pytest.approx(0.9) and bar_group.mean_score == pytest.approx(0.8)
    np.testing.assert_allclose(bar_group.center, [11 * VS, -3.5 * VS, 7.5 * VS])
    np.testing.assert_allclose(bar_group.size, [2 * VS, VS, VS])
    np.testing.assert_allclose(cube_group.center, [1.5 * VS] * 3)
    np.testing.assert_allclose(cube_group.size, [3 * VS] * 3)
    assert cube_group.label == "box"
    assert len(group_voxels(keys, scores, VS, min_voxels=3)) == 1
    assert group_voxels(np.zeros((0, 3), int), np.zeros(0), VS) == []


def test_diagonal_neighbours_connect_gaps_do_not():
    assert len(group_voxels([[0, 0, 0], [1, 1, 1]], [1.0, 1.0], VS)) == 1
    assert len(group_voxels([[0, 0, 0], [1, -1, 1]], [1.0, 1.0], VS)) == 1
    assert len(group_voxels([[0, 0, 0], [2, 0, 0]], [1.0, 1.0], VS)) == 2
    assert len(group_voxels([[-1, 5, 0], [0, 5, 0]], [1.0, 1.0], VS, labels=[0, 1])) == 2


def test_grouping_matches_scipy_ndimage_label():
    rng = np.random.default_rng(0)
    occupied = rng.random((14, 12, 10)) < 0.12
    components, count = ndimage.label(occupied, structure=np.ones((3, 3, 3)))
    keys = np.argwhere(occupied) - np.array([7, 3, 20])  # negative indices too
    groups = group_voxels(keys, np.ones(len(keys)), VS)
    assert len(groups) == count
    assert sorted(g.num_voxels for g in groups) == sorted(np.bincount(components[occupied])[1:].tolist())


def test_query_result_on_a_real_map_groups_blobs():
    vmap = VoxelMap(VoxelMapConfig(voxel_size=VS, feature_dim=4))
    blob_a = np.stack(np.meshgrid(np.arange(4), np.arange(2), np.arange(2), indexing="ij"), -1).reshape(-1, 3)
    blob_b = blob_a[:4] + [30, 30, 0]
    background = np.stack([np.arange(20) * 3 + 100, np.zeros(20), np.zeros(20)], 1).astype(int)
    keys = np.vstack([blob_a, blob_b, background])
    feats = np.zeros((len(keys), 4), np.float32)
    feats[:len(blob_a) + len(blob_b), 0] = 1.0
    feats[len(blob_a) + len(blob_b):, 1] = 1.0
    vmap.integrate(points_at(keys), features=feats)
    result = query_features(vmap, [1.0, 0.0, 0.0, 0.0], threshold=0.5, label="thing")
    assert len(result.indices) == 20
    assert [g.num_voxels for g in result.objects] == [16, 4]
    np.testing.assert_allclose(result.objects[0].center, [0.2, 0.1, 0.1], atol=1e-9)
    np.testing.assert_allclose(result.objects[1].center, [3.05, 3.1, 0.1], atol=1e-9)  # keys x 30, y 30..31, z 0..1
    np.testing.assert_allclose(result.objects[1].size, [0.1, 0.2, 0.2], atol=1e-9)
