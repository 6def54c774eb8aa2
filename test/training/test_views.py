"""Training samples: voxelisation, base-only targets (novel labels never reach a loss), captions, collate."""
import dataclasses

import numpy as np
import torch

from ov3dseg_core.data.frames import Scene
from ov3dseg_core.eval.splits import load_split
from ov3dseg_core.training.captions import CaptionerConfig, region_captions, view_caption
from ov3dseg_core.training.views import (
    ViewSampleConfig, ViewWindowDataset, base_targets, collate_views, grid_coordinates, voxelise,
)

SPLIT = load_split("sim_b15n4")


def _dataset(scene, embed, **kw):
    cfg = ViewSampleConfig(window=2, window_stride=2, pixel_stride=2, **kw)
    return ViewWindowDataset([scene], SPLIT.base, embed, cfg, seed=1)


def _fake_embed(texts):
    return torch.stack([torch.tensor([float(len(t)), float(sum(map(ord, t)) % 97), 1.0]) for t in texts])


def test_base_targets_drop_novel_and_unknown_ids():
    names = ["wall", "sofa", "chair", "bookshelf"]
    targets = base_targets(np.array([0, 1, 2, 3, -1, 7]), names, ["chair", "wall"])
    assert targets.tolist() == [1, -1, 0, -1, -1, -1]


def test_voxelise_keeps_one_point_per_voxel():
    pts = np.array([[0.01, 0.01, 0.01], [0.02, 0.03, 0.04], [0.06, 0, 0], [-0.01, 0, 0]], dtype=np.float32)
    keep = voxelise(pts, 0.05)
    assert keep.tolist() == [0, 2, 3]
    grid = grid_coordinates(pts[keep], 0.05)
    assert grid.min() == 0 and len(np.unique(grid, axis=0)) == 3


def test_novel_labels_never_reach_the_training_target(small_scene):
    """Relabelling every novel-class pixel as another novel class leaves the training targets unchanged."""
    novel_ids = [small_scene.label_names.index(n) for n in SPLIT.novel]
    present = [i for i in novel_ids if any((f.labels == i).any() for f in small_scene.frames)]
    assert present, "the living room should show a novel class (sofa or bookshelf)"
    swapped_frames = []
    for frame in small_scene.frames:
        labels = frame.labels.copy()
        labels[np.isin(labels, novel_ids)] = novel_ids[0] if present[0] != novel_ids[0] else novel_ids[1]
        swapped_frames.append(dataclasses.replace(frame, labels=labels))
    swapped = Scene(small_scene.name, swapped_frames, small_scene.label_names)
    a, b = _dataset(small_scene, _fake_embed)[0], _dataset(swapped, _fake_embed)[0]
    assert torch.equal(a["label"], b["label"])
    assert int(a["label"].max()) < len(SPLIT.base)
    assert (a["label"] == -1).any()  # the novel points are there, unlabelled


def test_sample_fields_and_collate(small_scene):
    ds = _dataset(small_scene, _fake_embed)
    s0, s1 = ds[0], ds[1]
    assert s0["coord"].shape[0] == s0["feat"].shape[0] == s0["label"].shape[0] == s0["instance"].shape[0]
    assert len(torch.unique(s0["grid_coord"], dim=0)) == len(s0["grid_coord"])  # unique voxels per sample
    assert s0["instance"].max() == len(s0["mask_target"]) - 1
    batch = collate_views([s0, s1])
    assert batch["offset"].tolist() == [len(s0["coord"]), len(s0["coord"]) + len(s1["coord"])]
    assert batch["mask_target"].shape[0] == len(s0["mask_target"]) + len(s1["mask_target"])
    second = batch["instance"][len(s0["coord"]):]
    assert second[second >= 0].min() >= len(s0["mask_target"])  # region ids shifted past the first sample's
    assert batch["view_target"].shape == (2, 3)


def test_samples_are_deterministic_per_epoch(small_scene):
    ds = _dataset(small_scene, _fake_embed)
    a, b = ds[0], ds[0]
    assert torch.equal(a["coord"], b["coord"])
    ds.set_epoch(1)
    assert not torch.equal(ds[0]["coord"], a["coord"])


def test_captioner_uses_free_words():
    rng = np.random.default_rng(0)
    cfg = CaptionerConfig(drop_prob=0.0, confuse_prob=0.0, synonym_prob=1.0)
    assert region_captions(["sofa", "wall"], ["sofa", "wall"], rng, cfg) == ["a couch in a scene", "a wall in a scene"]
    assert view_caption(["wall", "bed", "desk"], rng, cfg) == "a room with a bed and a writing desk"
    dropped = region_captions(["sofa"] * 200, ["sofa"], rng, CaptionerConfig(drop_prob=0.5))
    assert 60 < sum(c is None for c in dropped) < 140
