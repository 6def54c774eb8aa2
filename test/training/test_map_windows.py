"""Training samples cut from fused voxel maps: ground truth per voxel, base-only targets (novel labels never
reach L_seg), captions that carry novel categories only through the captioner, collate."""
import dataclasses

import numpy as np
import pytest
import torch

from ov3dseg_core.data.frames import Scene
from ov3dseg_core.eval.splits import load_split
from ov3dseg_core.models.text import DEFAULT_TEMPLATE
from ov3dseg_core.training.captions import CaptionerConfig, SeenObject, colour_word, region_caption, view_caption
from ov3dseg_core.training.map_windows import (
    MapWindowConfig, MapWindowDataset, base_class_weights, base_targets, cached_fused_scene, collate_windows,
    fuse_training_scene, novel_targets,
)

SPLIT = load_split("sim_b15n4")


def _fake_embed(texts):
    return torch.stack([torch.tensor([float(len(t)), float(sum(map(ord, t)) % 97), 1.0]) for t in texts])


@pytest.fixture(scope="module")
def fused(small_scene):
    return fuse_training_scene(small_scene, 0.05)


def _dataset(fused, **kw):
    return MapWindowDataset([fused], SPLIT.base, _fake_embed, MapWindowConfig(**kw), seed=1)


def _relabelled(scene: Scene, old: int, new: int) -> Scene:
    frames = []
    for frame in scene.frames:
        labels = frame.labels.copy()
        labels[labels == old] = new
        frames.append(dataclasses.replace(frame, labels=labels))
    return Scene(scene.name, frames, scene.label_names, scene.points, scene.colors, scene.labels, scene.instances)


def test_base_targets_drop_novel_and_unknown_ids():
    names = ["wall", "sofa", "chair", "bookshelf"]
    targets = base_targets(np.array([0, 1, 2, 3, -1, 7]), names, ["chair", "wall"])
    assert targets.tolist() == [1, -1, 0, -1, -1, -1]


def test_novel_targets_mark_annotated_non_base_voxels():
    names = ["wall", "sofa", "chair", "other furniture"]
    targets = novel_targets(np.array([0, 1, 2, 3, -1, 7]), names, ["chair", "wall"])
    assert targets.tolist() == [0, 1, 0, 1, -1, -1]


def test_fused_scene_ground_truth_matches_the_frames(small_scene, fused):
    """Every voxel carries the majority label of the pixels that fell into it; the first frame's voxels are
    first seen at frame 0; the cache returns the same arrays."""
    assert len(fused.keys) == len(np.unique(fused.keys, axis=0)) > 1000
    assert (fused.labels >= 0).mean() > 0.95 and (fused.instances >= 0).mean() > 0.95
    assert fused.cameras.shape == (len(small_scene.frames), 3)
    assert (fused.first_seen == 0).any() and fused.first_seen.max() <= len(small_scene.frames) - 1
    floor = small_scene.label_names.index("floor")
    z = fused.positions[:, 2]
    assert np.median(z[fused.labels == floor]) < 0.1 < np.median(z[fused.labels != floor])


def test_fused_scene_cache_round_trip(small_scene, fused, tmp_path):
    first = cached_fused_scene(small_scene, 0.05, tmp_path)
    again = cached_fused_scene(small_scene, 0.05, tmp_path)
    assert len(list(tmp_path.iterdir())) == 1
    for name, value in vars(fused).items():
        assert np.array_equal(np.asarray(getattr(again, name)), np.asarray(value)), name
        assert np.array_equal(np.asarray(getattr(first, name)), np.asarray(value)), name


def test_novel_labels_never_reach_the_segmentation_target(small_scene, fused):
    """Relabelling a novel class as another novel class changes no L_seg target; the captions change only
    through what the captioner says about the relabelled objects."""
    sofa, bookshelf = (small_scene.label_names.index(n) for n in ("sofa", "bookshelf"))
    assert (fused.labels == sofa).any(), "the living room should show a sofa"
    swapped = fuse_training_scene(_relabelled(small_scene, sofa, bookshelf), 0.05)
    ds_a, ds_b = _dataset(fused, whole_room_prob=1.0), _dataset(swapped, whole_room_prob=1.0)
    for i in range(3):
        a, b = ds_a[i], ds_b[i]
        assert torch.equal(a["label"], b["label"])
        assert (a["label"] == -1).any() and int(a["label"].max()) < len(SPLIT.base)
        assert torch.equal(a["is_novel"], b["is_novel"])  # L_bi learns where, not which
        assert bool((a["is_novel"] == 1).any()) and bool((a["is_novel"][a["label"] >= 0] == 0).all())


def test_captions_follow_the_objects_not_the_labels_of_the_loss(small_scene, fused):
    """Relabelling the sofa as a bookshelf turns its couch/sofa captions into bookshelf words."""
    sofa, bookshelf = (small_scene.label_names.index(n) for n in ("sofa", "bookshelf"))
    swapped = fuse_training_scene(_relabelled(small_scene, sofa, bookshelf), 0.05)
    seen = {"a": [], "b": []}
    for key, scene in (("a", fused), ("b", swapped)):
        ds = MapWindowDataset([scene], SPLIT.base, lambda t: torch.zeros(len(t), 3),
                              MapWindowConfig(whole_room_prob=1.0), seed=1)
        for i in range(6):
            rng = np.random.default_rng((1, 0, i))
            select = ds._window(scene, rng)
            seen[key] += ds._captions(scene, select, np.random.default_rng(i))[2]
    sofa_words = ("sofa", "couch")
    assert any(w in c for c in seen["a"] for w in sofa_words)
    assert not any(w in c for c in seen["b"] for w in sofa_words)
    assert any("bookshelf" in c or "bookcase" in c for c in set(seen["b"]) - set(seen["a"]))


def test_window_sample_fields_and_collate(fused):
    ds = _dataset(fused)
    s0, s1 = ds[0], ds[1]
    n0 = len(s0["coord"])
    assert n0 == s0["feat"].shape[0] == s0["label"].shape[0] == s0["grid_coord"].shape[0]
    assert len(torch.unique(s0["grid_coord"], dim=0)) == n0  # one point per voxel
    assert s0["region_point"].shape == s0["region_id"].shape and int(s0["region_point"].max()) < n0
    assert int(s0["region_id"].max()) == len(s0["mask_target"]) - 1
    batch = collate_windows([s0, s1])
    assert batch["offset"].tolist() == [n0, n0 + len(s1["coord"])]
    second = batch["region_id"][len(s0["region_id"]):]
    assert int(second.min()) >= len(s0["mask_target"])
    assert int(batch["region_point"][len(s0["region_point"]):].min()) >= n0
    assert batch["view_target"].shape == (2, 3)
    assert torch.equal(batch["is_novel"], torch.cat([s0["is_novel"], s1["is_novel"]]))


def test_windows_are_deterministic_per_epoch_and_bounded(fused):
    ds = _dataset(fused, max_voxels=2000)
    a = ds[0]
    assert torch.equal(a["coord"], ds[0]["coord"]) and len(a["coord"]) <= 2000
    ds.set_epoch(1)
    assert not torch.equal(ds[0]["coord"], a["coord"])


def test_partial_windows_hold_only_voxels_seen_by_then(fused):
    ds = _dataset(fused, whole_room_prob=0.0, partial_map_prob=1.0, radius_range=(50.0, 50.0))
    sizes = set()
    for i in range(8):
        rng = np.random.default_rng(i)
        select = ds._window(fused, rng)
        frame = int(fused.first_seen[select].max())
        assert set(np.flatnonzero(fused.first_seen <= frame)) == set(select.tolist())
        sizes.add(len(select))
    assert len(sizes) > 1


def test_imperfect_regions(fused):
    """Box regions take in other voxels; partial regions are a strict subset of the object."""
    box = _dataset(fused, box_region_prob=1.0)
    part = _dataset(fused, box_region_prob=0.0, dilate_region_prob=0.0, partial_region_prob=1.0)
    positions = fused.positions
    inst = fused.instances
    member = np.flatnonzero(inst == np.bincount(inst[inst >= 0]).argmax())
    rng = np.random.default_rng(0)
    boxed = box._imperfect_region(positions, member, None, rng)
    partial = part._imperfect_region(positions, member, None, rng)
    assert set(member) < set(boxed.tolist())
    assert 0 < len(partial) < len(member) and set(partial.tolist()) <= set(member)


def test_class_weights_favour_rare_base_classes(fused):
    weights = base_class_weights([fused], SPLIT.base)
    targets = base_targets(fused.labels, fused.label_names, SPLIT.base)
    counts = np.bincount(targets[targets >= 0], minlength=len(SPLIT.base))
    present = counts > 0
    assert np.isclose(weights[present].mean(), 1.0) and (weights[~present] == 0).all()
    assert weights[np.argmax(counts)] == weights[present].min()


def test_captioner_writes_free_phrases_never_the_evaluation_template():
    rng = np.random.default_rng(0)
    cfg = CaptionerConfig(drop_prob=0.0, confuse_prob=0.0, vague_prob=0.0, synonym_prob=1.0, colour_prob=1.0,
                          size_prob=0.0, relation_prob=1.0)
    sofa = SeenObject("sofa", np.array([120, 120, 125]), np.array([2.0, 0.9, 0.8]))
    table = SeenObject("table", np.array([160, 110, 60]), np.array([1.0, 0.6, 0.4]))
    caption = region_caption(sofa, [table], rng, cfg)
    assert caption.startswith("a grey couch ") and caption.endswith(("wooden table", "wooden coffee table"))
    template = DEFAULT_TEMPLATE.replace("{}", "")
    captions = [region_caption(sofa, [table], rng, CaptionerConfig()) for _ in range(300)]
    assert not any(c and template in c for c in captions)
    assert 30 < sum(c is None for c in captions) < 90                      # drop_prob 0.2
    assert any(c and ("armchair" in c or "bed" in c) for c in captions)      # look-alike mistakes
    assert colour_word([250, 250, 250]) == "white"
    view = view_caption([table, SeenObject("chair", np.zeros(3), np.ones(3)),
                         SeenObject("chair", np.zeros(3), np.ones(3))], np.random.default_rng(3),
                        CaptionerConfig(view_drop_prob=0.0, synonym_prob=0.0, colour_prob=0.0, size_prob=0.0,
                                        confuse_prob=0.0, vague_prob=0.0))
    assert view.endswith("with a table and two chairs")
