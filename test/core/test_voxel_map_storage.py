"""Voxel map storage: growth past the first reservation and through many index merges keeps every voxel and its
data; chunked feature fusion equals one-chunk fusion; the int8 feature copy ranks like float32, and the query's
compiled pass over it selects the voxels a NumPy reference selects."""
import numpy as np
import torch

from ov3dseg_core.mapping import VoxelMap, VoxelMapConfig, kernels
from ov3dseg_core.mapping import voxel_map as voxel_map_module
from ov3dseg_core.mapping.voxel_map import Int8Scorer, quantize_rows

VS = 0.05


def grid_points(start: int, count: int) -> np.ndarray:
    """One point in each of ``count`` voxels along a 3-D serpentine of cells, from cell ``start`` on."""
    cells = np.arange(start, start + count)
    keys = np.stack([cells % 50, (cells // 50) % 50, cells // 2500], axis=1)
    return ((keys + 0.5) * VS).astype(np.float32)


def test_growth_and_index_merges_keep_all_voxels(monkeypatch):
    monkeypatch.setattr(voxel_map_module, "RESERVE_HEADROOM", 16)  # the reservation is outgrown (a copy)
    vmap = VoxelMap(VoxelMapConfig(voxel_size=VS, num_labels=3, max_voxels=1000))
    vmap.config.max_voxels = 10 ** 9  # never evict: only growth and merges happen below
    rng = np.random.default_rng(0)
    batches = [(grid_points(start, 700), rng.integers(0, 256, (700, 3), dtype=np.uint8), rng.integers(0, 3, 700))
               for start in range(0, 70_000, 700)]
    rng.shuffle(batches)  # new keys land before and after the existing ones
    for points, colors, labels in batches:
        vmap.integrate(points, colors, labels)
    points = np.concatenate([b[0] for b in batches])
    assert len(vmap) == len(points) == 70_000
    order = np.lexsort(np.floor(points / np.float32(VS)).astype(np.int64).T[::-1])
    np.testing.assert_array_equal(vmap.keys(), np.floor(points[order] / np.float32(VS)).astype(np.int32))
    np.testing.assert_allclose(vmap.positions(), points[order], atol=1e-6)
    np.testing.assert_array_equal(vmap.colors(), np.concatenate([b[1] for b in batches])[order])
    np.testing.assert_array_equal(vmap.labels()[0], np.concatenate([b[2] for b in batches])[order])
    stats = vmap.integrate(points[:10])  # every key is found again after the merges
    assert stats.voxels_created == 0 and stats.voxels_updated == 10


def test_index_merge_outside_the_lock_keeps_later_inserts():
    vmap = VoxelMap(VoxelMapConfig(voxel_size=VS))
    vmap.integrate(grid_points(0, 70_000))  # delta above 2**16 keys: merged after the call
    assert vmap._delta_keys.numel() == 0 and len(vmap) == 70_000
    vmap.integrate(grid_points(100_000, 70_000))
    vmap.integrate(grid_points(200_000, 10))
    assert len(vmap) == 140_010 and len(np.unique(vmap.keys(), axis=0)) == 140_010


def test_chunked_feature_fusion_equals_one_chunk(monkeypatch):
    rng = np.random.default_rng(1)
    points = rng.uniform(-1, 1, (3000, 3)).astype(np.float32)
    observations = [(rng.standard_normal((3000, 16)).astype(np.float32), rng.uniform(0.5, 2, 3000))
                    for _ in range(3)]
    maps = []
    for chunk in (7, 100_000):
        monkeypatch.setattr(VoxelMap._fuse_features, "__defaults__", (chunk,))
        vmap = VoxelMap(VoxelMapConfig(voxel_size=0.1, feature_dim=16))
        for features, weights in observations:
            vmap.integrate_features(points, features, weights=weights)
        maps.append(vmap)
    np.testing.assert_array_equal(maps[0].features(), maps[1].features())
    np.testing.assert_array_equal(maps[0].feature_weights(), maps[1].feature_weights())
    text = rng.standard_normal(16)
    np.testing.assert_array_equal(maps[0].feature_similarity(text, compact=True),
                                  maps[1].feature_similarity(text, compact=True))


def test_int8_store_ranks_like_float32():
    rng = np.random.default_rng(2)
    dim, m = 384, 20_000
    text = rng.standard_normal(dim).astype(np.float32)
    text /= np.linalg.norm(text)
    features = rng.standard_normal((m, dim)).astype(np.float32)
    features[:1000] = text + rng.uniform(0.5, 2.0, (1000, 1)) * rng.standard_normal((1000, dim)) / np.sqrt(dim)
    vmap = VoxelMap(VoxelMapConfig(voxel_size=VS, feature_dim=dim, max_voxels=2 * m))
    vmap.integrate_features(grid_points(0, m), features)
    exact = features.astype(np.float16).astype(np.float64) @ text
    exact /= np.linalg.norm(features.astype(np.float16).astype(np.float64), axis=1)
    compact = vmap.feature_similarity(text, compact=True)
    by_key = np.lexsort(np.floor(grid_points(0, m) / np.float32(VS)).astype(np.int64).T[::-1])
    exact = exact[by_key]
    np.testing.assert_allclose(compact, exact, atol=1e-2)
    top = 100
    agreement = len(set(np.argsort(-compact)[:top]) & set(np.argsort(-exact)[:top])) / top
    assert agreement >= 0.95
    np.testing.assert_allclose(vmap.feature_similarity(text), exact, atol=1e-3)  # the float16 path is unchanged


def test_int8_scores_match_the_float_product_on_any_backend():
    rng = np.random.default_rng(3)
    rows = torch.from_numpy(rng.standard_normal((5000, 64)).astype(np.float32))
    embeddings = torch.from_numpy(rng.standard_normal((5, 64)).astype(np.float32))
    codes, scale = quantize_rows(rows)
    assert codes.dtype == torch.int8 and int(codes.abs().max()) == 127
    assert float((codes.float() * scale[:, None] - rows).abs().max()) <= float(scale.max()) / 2 + 1e-6
    exact = rows @ embeddings.t()
    bound = 0.02 * rows.norm(dim=1, keepdim=True) * embeddings.norm(dim=1)
    scorer = Int8Scorer(embeddings)
    scores = scorer(codes, scale)
    assert bool(((scores - exact).abs() <= bound).all())
    scorer.onednn = False  # the portable float32 path gives the same products
    np.testing.assert_allclose(scorer(codes, scale).numpy(), scores.numpy(), rtol=1e-5, atol=1e-4)
    assert Int8Scorer(embeddings[:0])(codes, scale).shape == (5000, 0)


def test_query_similarity_is_the_query_column_and_the_best_negative(monkeypatch):
    monkeypatch.setattr(voxel_map_module, "QUERY_CHUNK", 1000)
    rng = np.random.default_rng(4)
    vmap = VoxelMap(VoxelMapConfig(voxel_size=VS, feature_dim=32))
    vmap.integrate_features(grid_points(0, 4500), rng.standard_normal((4500, 32)).astype(np.float32))
    vmap.integrate(grid_points(10_000, 5))  # voxels without features
    table = rng.standard_normal((6, 32))
    cosine = vmap.feature_similarity(table, compact=True)
    query, hardest = vmap.query_similarity(table[0], table[1:])
    np.testing.assert_allclose(query, cosine[:, 0], atol=1e-6)
    np.testing.assert_allclose(hardest, cosine[:, 1:].max(axis=1), atol=1e-6)
    bare = vmap.feature_weights() == 0
    assert bare.sum() == 5 and np.isneginf(query[bare]).all() and np.isneginf(hardest[bare]).all()
    some = np.array([3, 4400, 4502])
    np.testing.assert_allclose(vmap.query_similarity(table[0], table[1:], some)[1], hardest[some], atol=1e-6)
    only_query, none = vmap.query_similarity(table[0], table[:0])
    np.testing.assert_allclose(only_query, query, atol=1e-6)
    assert np.isneginf(none).all()


def reference_cosines(codes, scale, norm, query):
    """float64 cosines of the int8 rows with ``query``; NaN where a row has no feature."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return codes.astype(np.float64) @ query * scale / np.where(norm > 0, norm, np.nan)


def test_compiled_query_pass_selects_like_numpy():
    rng = np.random.default_rng(5)
    for dim, m in ((7, 50), (64, 3000), (384, 9000), (600, 700)):  # 9000 rows: more than two blocks
        features = rng.standard_normal((m, dim)).astype(np.float32)
        features[::11] = 0  # rows without a feature
        codes, scale = (t.numpy() for t in quantize_rows(torch.from_numpy(features)))
        norm = np.linalg.norm(features, axis=1).astype(np.float32)
        query = rng.standard_normal(dim).astype(np.float32)
        query /= np.linalg.norm(query)
        exact = reference_cosines(codes, scale, norm, query)
        floor = float(np.nanquantile(exact, 0.9))
        q, q_scale = kernels.quantize_query(query)
        rows, cosine = kernels.int8_cosines_at_least(codes, scale, norm, q, q_scale, np.float32(floor))
        clear = np.abs(exact - floor) > 1e-4  # rows within rounding of the floor may go either way
        expected = np.flatnonzero(exact >= floor)
        np.testing.assert_array_equal(rows[clear[rows]], expected[clear[expected]])
        assert np.all(np.diff(rows) > 0) and not np.isin(np.arange(0, m, 11), rows).any()
        np.testing.assert_allclose(cosine, exact[rows], atol=1e-4)


def test_query_pass_cannot_overflow_at_any_feature_size():
    for dim in (384, 516, 517, 4096):  # the int16 query range shrinks above 516 values
        codes = np.full((3, dim), 127, np.int8)
        codes[1] = -127
        query = np.full(dim, 1 / np.sqrt(dim), np.float32)
        q, q_scale = kernels.quantize_query(query)
        assert int(np.abs(q.astype(np.int64)).sum()) * 127 < 2 ** 31
        scale = np.full(3, 1 / 127, np.float32)
        norm = np.float32(np.sqrt(dim)) * np.ones(3, np.float32)
        rows, cosine = kernels.int8_cosines_at_least(codes, scale, norm, q, q_scale, np.float32(-1.0))
        assert rows.tolist() == [0, 1, 2]
        np.testing.assert_allclose(cosine, [1.0, -1.0, 1.0], atol=1e-4)


def test_features_at_least_skips_evicted_voxels_and_matches_the_full_scores():
    rng = np.random.default_rng(6)
    dim = 32
    vmap = VoxelMap(VoxelMapConfig(voxel_size=VS, feature_dim=dim))
    points = grid_points(0, 6000)
    vmap.integrate_features(points, rng.standard_normal((6000, dim)).astype(np.float32))
    query, negatives = rng.standard_normal(dim), rng.standard_normal((5, dim))
    before = vmap.features_at_least(query, 0.2)[0]
    assert vmap.evict_outside(points[0], 0.6) > 0  # freed slots keep their stale features
    vmap.integrate(grid_points(20_000, 50))  # new voxels without features, some in freed slots
    vmap.integrate_features(grid_points(30_000, 40), rng.standard_normal((40, dim)).astype(np.float32))
    assert vmap._delta_keys.numel() > 0  # indices come from the main index and the unmerged delta
    full, full_hardest = vmap.query_similarity(query, negatives)
    indices, cosine, hardest = vmap.features_at_least(query, 0.2, negatives)
    clear = np.abs(full - 0.2) > 2e-2  # the two paths quantise the queries differently
    expected = np.flatnonzero(full >= 0.2)
    np.testing.assert_array_equal(indices[clear[indices]], expected[clear[expected]])
    np.testing.assert_allclose(cosine, full[indices], atol=2e-2)
    np.testing.assert_allclose(hardest, full_hardest[indices], atol=2e-2)
    assert len(indices) < len(before) and np.all(np.diff(indices) > 0)
    with vmap.lock:  # the torch path that maps on other devices take selects the same voxels
        torch_path = vmap._scored_at_least(vmap._query_rows(query, negatives), 0.2)
    np.testing.assert_array_equal(torch_path[0][clear[torch_path[0]]], expected[clear[expected]])
    np.testing.assert_allclose(torch_path[2], full_hardest[torch_path[0]], atol=1e-6)
    no_negatives = vmap.features_at_least(query, 0.2)
    np.testing.assert_array_equal(no_negatives[0], indices)
    assert np.isneginf(no_negatives[2]).all()
    assert vmap.features_at_least(query, 1.0)[0].size == 0


def test_compiled_negatives_pass_is_the_largest_cosine():
    rng = np.random.default_rng(7)
    features = rng.standard_normal((500, 48)).astype(np.float32)
    features[3] = 0
    codes, scale = (t.numpy() for t in quantize_rows(torch.from_numpy(features)))
    norm = np.linalg.norm(features, axis=1).astype(np.float32)
    negatives = rng.standard_normal((4, 48)).astype(np.float32)
    negatives /= np.linalg.norm(negatives, axis=1, keepdims=True)
    rows = np.array([0, 3, 17, 499])
    q, q_scale = kernels.quantize_query(negatives)
    best = kernels.int8_max_cosines(codes, scale, norm, rows, q, q_scale)
    exact = np.max([reference_cosines(codes, scale, norm, n) for n in negatives], axis=0)
    np.testing.assert_allclose(best[[0, 2, 3]], exact[[0, 17, 499]], atol=1e-4)
    assert np.isneginf(best[1])  # no feature
    assert np.isneginf(kernels.int8_max_cosines(codes, scale, norm, rows, q[:0], q_scale[:0])).all()
