"""2D teachers: SAS's text alignment, capability estimate (Eqs. 2-4) and fusion rules (Eqs. 6-8), stand-ins."""
import numpy as np
import torch

from ov3dseg_core.models.teachers import (
    SEEM_LIKE, AlignedMaskTeacher, SimCaptioner, SimDenseTeacher, SimMaskTeacher, SimulatedSynthesizer,
    TeacherProfile, add_fusion, aggregate_cross_attention, binary_miou, capability_fusion, estimate_capability,
    linear_fusion, paint_masks, replace_noun,
)
from ov3dseg_core.training.captions import SYNONYMS

NAMES = ["wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
         "counter", "desk", "curtain", "refrigerator", "shower curtain", "toilet", "sink", "bathtub",
         "other furniture"]


def test_replace_noun():
    assert replace_noun("a small grey couch near a wooden table", "sofa") == "a small grey sofa near a wooden table"
    assert replace_noun("a wooden bench", "table") == "a wooden table"
    assert replace_noun("some furniture", "armchair") == "an armchair"
    assert replace_noun("a white toilet bowl against the wall", "sink") == "a white sink against the wall"


def test_paint_masks_small_on_top():
    masks = np.zeros((2, 4, 4), bool)
    masks[0] = True
    masks[1, :2, :2] = True
    painted = paint_masks(masks, torch.eye(2), stride=2)
    assert painted.index.tolist() == [[1, 0], [0, 0]]


def test_capability_fusion_eqs_6_to_8():
    text = torch.eye(2)
    f_l = torch.tensor([[1.0, 0.2], [1.0, 0.1]])        # dense teacher predicts class 0 at both points
    f_s = torch.tensor([[0.1, 1.0], [0.9, 0.3]])        # mask teacher: class 1, then class 0
    s = torch.tensor([[0.9, 0.3], [0.5, 0.7]])          # S_L, S_S over the 2 classes
    seen = [torch.ones(2, dtype=torch.bool)] * 2
    fused, has = capability_fusion([f_l, f_s], seen, text, s, tau=0.1)
    # point 0: P_L = (S_L[0] + S_L[1]) / 2 = 0.6, P_S = (0.5 + 0.7) / 2 = 0.6 -> equal weights
    # point 1: P_L = 0.9, P_S = 0.5 -> weights softmax([9, 5])
    n_l, n_s = torch.nn.functional.normalize(f_l, dim=-1), torch.nn.functional.normalize(f_s, dim=-1)
    w = torch.softmax(torch.tensor([9.0, 5.0]), 0)
    assert torch.allclose(fused[0], 0.5 * n_l[0] + 0.5 * n_s[0], atol=1e-6)
    assert torch.allclose(fused[1], w[0] * n_l[1] + w[1] * n_s[1], atol=1e-6) and has.all()
    only_mask = [torch.tensor([False, True]), torch.ones(2, dtype=torch.bool)]
    fused, _ = capability_fusion([f_l, f_s], only_mask, text, s, tau=0.1)
    assert torch.allclose(fused[0], n_s[0], atol=1e-6)  # unseen by the dense teacher: the mask teacher alone


def test_add_and_linear_fusion():
    a, b = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    seen = [torch.ones(1, dtype=torch.bool)] * 2
    assert torch.allclose(add_fusion([a, b], seen)[0], torch.tensor([[0.5, 0.5]]))
    text = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    fused, _ = linear_fusion([a, b], seen, text)      # weights 1.0 and 0.8 (largest cosines), normalised
    assert torch.allclose(fused, torch.tensor([[1 / 1.8, 0.8 / 1.8]]))


def test_eq2_aggregation_and_binary_miou():
    maps = torch.rand(2, 3, 4, 5)
    expected = sum(maps[y, z] / maps[y, z].max() for y in range(2) for z in range(3)) / 6
    assert torch.allclose(aggregate_cross_attention(maps), expected)
    a = np.zeros((2, 2), bool)
    a[0] = True
    b = np.zeros((2, 2), bool)
    b[0, 0] = True
    assert binary_miou(a, b) == (0.5 + 2 / 3) / 2 and binary_miou(a, a) == 1.0


def _embed(texts):
    """A deterministic stand-in for the text encoder: one direction per class, found by its longest word in the
    text (the class name or a synonym), and one for texts naming none."""
    words = [(w, j) for j, n in enumerate(NAMES) for w in SYNONYMS[n]]
    out = torch.zeros(len(texts), len(NAMES) + 1)
    for i, t in enumerate(texts):
        hits = [(len(w), j) for w, j in words if w in t]
        out[i, max(hits)[1] if hits else -1] = 1.0
    return out


def test_capability_reflects_teacher_confusions():
    vocabulary = ["wall", "floor", "chair", "picture"]
    text = _embed(vocabulary)
    bad_on_chair = TeacherProfile(confusion={"chair": 1.0}, default_confusion=0.0, look_alikes={"chair": ["sofa"]},
                                  stride=2)
    good = TeacherProfile(default_confusion=0.0, stride=2)
    teachers = {name: AlignedMaskTeacher(SimMaskTeacher(NAMES, profile), SimCaptioner(NAMES), _embed, stride=2)
                for name, profile in (("bad", bad_on_chair), ("good", good))}
    scores = estimate_capability(vocabulary, text, SimulatedSynthesizer(NAMES, 64, 48), teachers, images_per_class=3)
    chair = vocabulary.index("chair")
    assert scores["good"][chair] > 0.8 and scores["bad"][chair] < 0.6
    assert abs(scores["good"][0] - scores["bad"][0]) < 1e-6  # same habits elsewhere


def test_stand_in_teachers_on_a_rendered_frame():
    frame = SimulatedSynthesizer(NAMES, 64, 48)("sofa", 0).frame
    dense = SimDenseTeacher(NAMES, _embed, TeacherProfile(default_confusion=0.0, noise=0.0, stride=4))(0, frame)
    assert dense.index.shape == (12, 16) and (dense.index >= 0).all()
    feats, valid = dense.at_pixels(np.arange(64 * 48), 64, 48)
    label = feats.argmax(1).reshape(48, 64).numpy()
    assert np.mean(label == np.array([NAMES.index(n) for n in NAMES] + [0])[frame.labels]) > 0.8
    masks = SimMaskTeacher(NAMES, SEEM_LIKE, seed=1)(0, frame)
    assert masks.masks.shape[1:] == (48, 64) and len(masks.labels) == len(masks.masks) >= 1
