"""Voxel map storage: growth past the first reservation and through many index merges keeps every voxel and its
data; chunked feature fusion equals one-chunk fusion; the int8 feature copy ranks like float32."""
import numpy as np
import torch

from ov3dseg_core.mapping import VoxelMap, VoxelMapConfig
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
