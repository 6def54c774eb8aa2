"""Bounded query results (issue 13): at most MAX_OBJECTS objects however many match, the best ones kept, and
the label-map query groups outside the map's lock (integration is not held up)."""
import threading

import numpy as np

from ov3dseg_core.mapping import VoxelMap, VoxelMapConfig, group_voxels, query_labels
from ov3dseg_core.mapping.query import LABEL_CALIBRATIONS, MAX_OBJECTS

NAMES = ["wall", "sofa"]
EMBEDDINGS = np.eye(2, dtype=np.float32)  # label i -> unit vector e_i; the query is "sofa" (e_1), negative "wall"


def patches(count: int, size: int = 2) -> np.ndarray:
    """(count * size^2, 3) voxel keys of ``count`` separate size x size patches, 4 voxels apart."""
    return np.array([((size + 3) * i + dx, dy, 0) for i in range(count) for dx in range(size) for dy in range(size)])


def test_group_voxels_keeps_the_best_max_groups():
    keys = np.concatenate([patches(5, 2), patches(1, 3) + [0, 50, 0]])  # five 4-voxel patches and one of 9
    groups, rank = group_voxels(keys, np.full(len(keys), 0.9), 0.05, min_voxels=1, max_groups=2)
    assert [g.num_voxels for g in groups] == [9, 4]  # the biggest (most confident) first
    assert (rank >= 0).sum() == 13 and set(rank[rank >= 0]) == {0, 1}
    all_groups, _ = group_voxels(keys, np.full(len(keys), 0.9), 0.05, min_voxels=1)
    assert len(all_groups) == 6 and [g.num_voxels for g in all_groups[:2]] == [9, 4]
    np.testing.assert_allclose(all_groups[0].center, groups[0].center)


def test_a_query_matching_everything_builds_at_most_max_objects():
    keys = patches(MAX_OBJECTS + 200)
    vmap = VoxelMap(VoxelMapConfig(num_labels=2), label_names=NAMES)
    vmap.integrate((keys + 0.5) * 0.05, labels=np.ones(len(keys), int))
    result = query_labels(vmap, EMBEDDINGS[1], EMBEDDINGS[:1], EMBEDDINGS, NAMES, LABEL_CALIBRATIONS["minilm"],
                          threshold=1e-6, min_voxels=1)
    assert len(result.objects) == MAX_OBJECTS and len(result.indices) == 4 * MAX_OBJECTS
    np.testing.assert_array_equal(result.positions, vmap.positions(result.indices))


def test_label_query_groups_without_holding_the_map_lock(monkeypatch):
    import ov3dseg_core.mapping.query as query
    vmap = VoxelMap(VoxelMapConfig(num_labels=2), label_names=NAMES)
    keys = patches(20)
    vmap.integrate((keys + 0.5) * 0.05, labels=np.ones(len(keys), int))
    held = []
    grouping = query.group_voxels

    def probe(*args, **kwargs):  # can another thread (the integrating worker) take the lock while grouping?
        def try_lock():
            got = vmap.lock.acquire(timeout=1.0)
            if got:
                vmap.lock.release()
            held.append(got)
        other = threading.Thread(target=try_lock)
        other.start()
        other.join()
        return grouping(*args, **kwargs)
    monkeypatch.setattr(query, "group_voxels", probe)
    result = query_labels(vmap, EMBEDDINGS[1], EMBEDDINGS[:1], EMBEDDINGS, NAMES, LABEL_CALIBRATIONS["minilm"],
                          min_voxels=1)
    assert held == [True] and len(result.objects) == 20


def test_dense_and_sparse_grouping_agree():
    from ov3dseg_core.mapping import query
    rng = np.random.default_rng(3)
    keys = np.unique(rng.integers(-40, 40, (6000, 3)), axis=0)
    labels = rng.integers(0, 3, len(keys))
    dense = query._components(keys, labels)  # a compact box: the dense grid
    sparse = np.empty(len(keys), np.int64)
    first = 0
    for value in np.unique(labels):
        members = np.flatnonzero(labels == value)
        ids = query._sparse_components(keys[members])
        sparse[members], first = ids + first, first + ids.max() + 1
    pairs = np.unique(np.stack([dense, sparse], 1), axis=0)  # the same partition: a one-to-one id mapping
    assert len(pairs) == len(np.unique(dense)) == len(np.unique(sparse)) > 10
    far = np.array([[0, 0, 0], [2, 2, 2], [3, 0, 0], [500_000, 0, 0]])  # a sparse box: the neighbour search
    assert query._dense_components(far) is None
    ids = query._components(far, None)
    assert ids[0] == ids[1] == ids[2] != ids[3]
