"""The map's instance layer: objects of successive model passes merged by voxel IoU (the same chair keeps its id,
the newest pass wins inside its window, freed ids are reused), saved and validated in map files, and /query
answered at object level from the instances with the calibrated decision rule."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from ov3dseg_core.mapping import MapFileError, VoxelMap, VoxelMapConfig, load_map
from ov3dseg_core.mapping import map_file
from ov3dseg_core.mapping.instances import InstanceTable, merge_pass
from ov3dseg_core.mapping.query import QueryCalibration, query_features

D = 4
E = np.eye(D, dtype=np.float32)


def box_keys(lo, hi) -> np.ndarray:
    """(N, 3) voxel indices of the box lo..hi-1 per axis."""
    axes = [np.arange(a, b) for a, b in zip(lo, hi)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3).astype(np.int32)


@pytest.fixture
def room():
    """A map of two boxes ('chair' voxels and 'table' voxels) and the window holding both."""
    chair, table = box_keys((0, 0, 0), (4, 4, 4)), box_keys((10, 0, 0), (16, 6, 2))
    keys = np.concatenate([chair, table])
    vmap = VoxelMap(VoxelMapConfig(voxel_size=0.1, feature_dim=D))
    vmap.integrate((keys + 0.5).astype(np.float32) * 0.1, features=np.tile(E[3], (len(keys), 1)))
    return vmap, keys, len(chair)


def masks_of(keys, *parts):
    return np.stack([np.isin(np.arange(len(keys)), part) for part in parts])


def ids_of(vmap, keys) -> np.ndarray:
    """Instance id of each of ``keys`` (voxels present in the map)."""
    order = {tuple(k): i for i, k in enumerate(vmap.keys())}
    return vmap.instances()[[order[tuple(k)] for k in keys]]


def test_same_object_keeps_its_id_and_newest_pass_wins(room):
    vmap, keys, n_chair = room
    chair, table = np.arange(n_chair), np.arange(n_chair, len(keys))
    first = vmap.update_instances(keys, masks_of(keys, chair, table), np.array([0.9, 0.8]), E[:2])
    assert (first.objects, first.matched, first.created) == (2, 0, 2)
    ids = ids_of(vmap, keys)
    chair_id, table_id = int(ids[0]), int(ids[-1])
    assert chair_id != table_id and (ids[chair] == chair_id).all() and (ids[table] == table_id).all()

    # next pass: the chair seen a bit smaller (IoU 0.75), the table's decoder order swapped, a new third object
    smaller = chair[: 3 * n_chair // 4]
    second = vmap.update_instances(keys, masks_of(keys, table, smaller), np.array([0.6, 0.5]), E[[1, 0]])
    assert (second.matched, second.created) == (2, 0)
    ids = ids_of(vmap, keys)
    assert (ids[smaller] == chair_id).all() and (ids[table] == table_id).all()
    assert (ids[chair[len(smaller):]] == -1).all()  # inside the window, the newest pass wins
    table_row = vmap.instance_table()
    assert table_row.passes.tolist() == [2, 2] and table_row.scores[chair_id] == pytest.approx(0.7)
    np.testing.assert_allclose(np.linalg.norm(table_row.embeddings, axis=1), 1.0, rtol=1e-6)

    # a window holding only the table: the chair's voxels outside it are untouched
    third = vmap.update_instances(keys[table], masks_of(keys[table], np.arange(5)), np.array([0.9]), E[2:3])
    assert (third.matched, third.created) == (0, 1)  # 5 voxels of 72: IoU below the threshold, a new object
    ids = ids_of(vmap, keys)
    assert (ids[smaller] == chair_id).all() and len(vmap.instance_table()) == 3


def test_overlapping_masks_go_to_the_better_object_and_free_ids_are_reused():
    table = InstanceTable.empty(D)
    masks = np.array([[1, 1, 1, 0], [0, 1, 1, 1], [0, 1, 0, 0]], bool)  # the third owns nothing: dropped
    ids, table, result = merge_pass(np.full(4, -1), masks, np.array([0.3, 0.9, 0.2]), E[:3], table, np.zeros(0))
    assert ids.tolist() == [0, 1, 1, 1] and result.objects == 2 and len(table) == 2
    np.testing.assert_array_equal(table.embeddings, E[:2])
    # instance 0 owns no voxel any more: a new object takes its id instead of growing the table
    ids, table, result = merge_pass(np.array([-1, -1]), np.array([[1, 1]], bool), np.array([0.5]), E[3:],
                                    table, np.array([0, 3]))
    assert ids.tolist() == [0, 0] and len(table) == 2 and table.passes.tolist() == [1, 1]
    # a pass without objects empties its window; an empty window changes nothing
    ids, same, result = merge_pass(np.array([0, 1, -1]), np.zeros((0, 3), bool), np.zeros(0), E[:0], table,
                                   np.array([2, 1]))
    assert ids.tolist() == [-1, -1, -1] and result.objects == 0 and len(same) == 2
    assert merge_pass(np.zeros(0), np.zeros((0, 0), bool), np.zeros(0), E[:0], table, np.array([2, 1]))[0].size == 0


def test_instances_survive_save_and_load_and_crafted_ids_are_rejected(room, tmp_path):
    vmap, keys, n_chair = room
    vmap.update_instances(keys, masks_of(keys, np.arange(n_chair)), np.array([0.9]), E[:1])
    path = tmp_path / "map.safetensors"
    vmap.save(path)
    loaded = load_map(path)
    np.testing.assert_array_equal(loaded.instances(), vmap.instances())
    np.testing.assert_array_equal(loaded.instance_table().embeddings, vmap.instance_table().embeddings)
    assert loaded.update_instances(keys, masks_of(keys, np.arange(n_chair)), np.array([0.9]), E[:1]).matched == 1

    arrays = load_file(path)
    with open(path, "rb") as f:
        meta = json.loads(f.read(int.from_bytes(f.read(8), "little")))["__metadata__"]
    for changes, message in (({"instance": arrays["instance"] + 5}, r"instance ids must lie in \[-1, 1\)"),
                             ({"instance_score": arrays["instance_score"] + 2}, "scores must lie in"),
                             ({"instance_embedding": arrays["instance_embedding"][:, :2]}, "'instance_embedding'")):
        crafted = {**arrays, **changes}
        save_file(crafted, str(path), metadata={**meta, "checksum": map_file._checksum(crafted)})
        with pytest.raises(MapFileError, match=message):
            load_map(path)

    old = {k: v for k, v in arrays.items() if k in map_file.STATE_FIELDS}  # a version-1 file: no instance layer
    version1 = {k: v for k, v in meta.items() if k != "num_instances"}
    save_file(old, str(path), metadata={**version1, "version": "1", "checksum": map_file._checksum(old, 1)})
    assert (load_map(path).instances() == -1).all() and len(load_map(path).instance_table()) == 0


def test_query_answers_from_instances_with_the_calibrated_rule(room):
    vmap, keys, n_chair = room
    calibration = QueryCalibration(0.6, 0.2)
    negatives = E[[1, 2]]
    voxel_answer = query_features(vmap, E[3], negatives, calibration, min_voxels=1)
    assert voxel_answer.found and voxel_answer.objects[0].instance == -1  # no instances: voxel features, grouped

    chair, table = np.arange(n_chair), np.arange(n_chair, len(keys))
    vmap.update_instances(keys, masks_of(keys, chair, table), np.array([0.9, 0.8]), E[[0, 1]])
    answer = query_features(vmap, E[0], negatives, calibration, min_voxels=1, label="chair")
    assert answer.found and len(answer.objects) == 1
    best = answer.objects[0]
    assert best.label == "chair" and best.num_voxels == n_chair and best.instance == int(ids_of(vmap, keys)[0])
    assert best.score == pytest.approx(1 / (1 + np.exp(-10.0)), rel=1e-5)  # sigmoid(10 (1 - 0))
    np.testing.assert_allclose(best.size, [0.4, 0.4, 0.4], atol=1e-6)
    assert sorted(answer.indices.tolist()) == sorted(np.flatnonzero(vmap.instances() == best.instance).tolist())
    # the table's embedding ties its negative: relevancy 0.5 < 0.6, not found (and no voxel feature is used)
    miss = query_features(vmap, E[1], E[[1, 2]], calibration, min_voxels=1)
    assert not miss.found and miss.max_score == pytest.approx(0.5, abs=1e-5)
    assert not query_features(vmap, E[3], negatives, calibration, min_voxels=1).found  # below the floor


def test_evicted_voxels_leave_their_instance_and_clear_resets_it(room):
    vmap, keys, n_chair = room
    vmap.update_instances(keys, masks_of(keys, np.arange(n_chair)), np.array([0.9]), E[:1])
    vmap.evict_outside([0.2, 0.2, 0.2], 0.5)
    assert len(vmap) == n_chair and (vmap.instances() == 0).all()
    vmap.integrate(np.array([[5.0, 5.0, 5.0]], np.float32))  # a fresh voxel in a freed slot: no instance
    assert (vmap.instances() == -1).sum() == 1
    vmap.clear()
    vmap.integrate(np.array([[0.05, 0.05, 0.05]], np.float32))
    assert vmap.instances().tolist() == [-1] and len(vmap.instance_table()) == 0
    assert torch.is_tensor(vmap.state()["instance_embedding"])
