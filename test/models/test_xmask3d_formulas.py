"""XMask3D formulas against small hand-computed cases: Eq. 1/5/6/7/12/13/16, F2d = M3d G2d, the Mask2Former
matching costs and losses, and the deformable-attention sampling core."""
import itertools
import math

import numpy as np
import pytest
import torch

from ov3dseg_core.geometry.camera import PinholeCamera
from ov3dseg_core.models.fusion import FusionBlock
from ov3dseg_core.models.heads import TextClassifier, calibrate, geometric_ensemble
from ov3dseg_core.models.lifting import (exclusive_masks, gather_pixels, mask_pool, point_pixel_index,
                                         pseudo_mask_features)
from ov3dseg_core.models.losses import (LossConfig, MaskSetCriterion, binary_loss, dice_loss, mask_alignment_loss,
                                        segmentation_ce, sigmoid_ce_loss, sigmoid_focal_loss, total_loss,
                                        view_alignment_loss)
from ov3dseg_core.models.matching import HungarianMatcher, mask_cost, match, point_sample
from ov3dseg_core.models.pixel_decoder import MSDeformAttn, ms_deform_attn


def test_text_classifier_eq1_cosine_over_temperature():
    clf = TextClassifier(init_temperature=0.07)
    logits = clf(torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    assert torch.allclose(logits, torch.tensor([[0.6 / 0.07, 0.8 / 0.07]]), rtol=1e-5)
    with torch.no_grad():
        clf.log_scale.fill_(10.0)  # exp(10) > 100: clamped like CLIP
    assert float(clf.scale.detach()) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="dim"):
        clf(torch.zeros(1, 3), torch.zeros(2, 2))


def test_calibration_eq13():
    probs = torch.tensor([[0.5, 0.3, 0.2]])
    is_base = torch.tensor([True, False, False])
    out = calibrate(probs, torch.tensor([0.25]), is_base)
    # s_B = (1, 0, 0), s_N = (0, 0.6, 0.4); s = 0.75 s_B + 0.25 s_N
    assert torch.allclose(out, torch.tensor([[0.75, 0.15, 0.10]]))
    # all-base vocabulary: nothing to calibrate
    assert torch.equal(calibrate(probs, torch.tensor([0.9]), torch.ones(3, dtype=torch.bool)), probs)


def test_geometric_ensemble_eq16():
    p, aux = torch.tensor([0.8, 0.2]), torch.tensor([0.2, 0.8])
    assert torch.allclose(geometric_ensemble(p, aux, 0.5), torch.tensor([0.5, 0.5]))
    assert torch.allclose(geometric_ensemble(p, aux, 1.0), p)
    # per-class lambda: unnormalised (0.8^1 * 0.2^0, 0.2^0 * 0.8^1) = (0.8, 0.8)
    assert torch.allclose(geometric_ensemble(p, aux, torch.tensor([1.0, 0.0])), torch.tensor([0.5, 0.5]))
    lam = 0.65
    want = torch.tensor([0.8 ** lam * 0.2 ** (1 - lam), 0.2 ** lam * 0.8 ** (1 - lam)])
    assert torch.allclose(geometric_ensemble(p, aux, lam), want / want.sum())


def test_fusion_eq7_only_where_correspondences_exist():
    block = FusionBlock(dim=2, num_layers=1)
    with torch.no_grad():  # MLP(cat(a, b)) = a + 2 b
        block.mlp[0].weight.copy_(torch.tensor([[1.0, 0.0, 2.0, 0.0], [0.0, 1.0, 0.0, 2.0]]))
        block.mlp[0].bias.zero_()
    f3d = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], requires_grad=True)
    f2d = torch.tensor([[10.0, 20.0], [30.0, 40.0], [0.0, 0.0]], requires_grad=True)
    has = torch.tensor([True, False, True])
    out = block(f3d, f2d, has)
    assert torch.allclose(out, torch.tensor([[21.0, 42.0], [3.0, 4.0], [5.0, 6.0]]))
    out[1].sum().backward()  # the uncovered point depends on F3d only
    assert f2d.grad.abs().sum() == 0 and f3d.grad[1].abs().sum() > 0


def test_point_pixel_index_projection_and_depth_check():
    cam = PinholeCamera(width=4, height=3, fx=2.0, fy=2.0, cx=1.5, cy=1.0)
    pts = np.array([[0.0, 0.0, 1.0],  # u = 1.5 -> rint 2, v = 1 -> pixel 6
                    [-0.75, -0.5, 1.0],  # u = 0, v = 0 -> pixel 0
                    [0.0, 0.0, -1.0],  # behind
                    [5.0, 0.0, 1.0],  # outside
                    [-1.5, -1.0, 2.0]],  # same ray as point 1 but 2 m away: occluded
                   dtype=np.float32)
    assert point_pixel_index(pts, cam, None).tolist() == [6, 0, -1, -1, 0]
    depth = np.zeros((3, 4), np.float32)
    depth[1, 2], depth[0, 0] = 1.01, 1.0
    assert point_pixel_index(pts, cam, None, depth).tolist() == [6, 0, -1, -1, -1]
    # world frame: camera 1 m behind the origin along world z
    T_world_camera = np.eye(4)
    T_world_camera[2, 3] = -1.0
    world = pts[:2] + np.array([0, 0, -1.0], np.float32)
    assert point_pixel_index(world, cam, T_world_camera, depth).tolist() == [6, 0]


def test_lifting_masks_f2d_and_eq5_pooling():
    maps = torch.arange(12.0).reshape(2, 2, 3)  # Q = 2 masks on a 2x3 image
    assert gather_pixels(maps, torch.tensor([5, 0])).tolist() == [[5.0, 11.0], [0.0, 6.0]]
    probs = torch.tensor([[0.9, 0.6], [0.6, 0.9], [0.2, 0.3], [0.7, 0.8]])
    scores = torch.tensor([1.0, 0.5])  # score * prob: (0.9, 0.3), (0.6, 0.45), (0.2, 0.15), (0.7, 0.4)
    m3d = exclusive_masks(probs, scores)
    assert m3d.tolist() == [[True, False], [True, False], [False, False], [True, False]]
    g2d = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    f2d, has = pseudo_mask_features(m3d, g2d)  # F2d = M3d G2d
    assert torch.equal(f2d, m3d.float() @ g2d) and has.tolist() == [True, True, False, True]
    overlapping = torch.tensor([[True, True], [False, False]])
    f2d, has = pseudo_mask_features(overlapping, g2d)
    assert f2d.tolist() == [[2.0, 3.0], [0.0, 0.0]] and has.tolist() == [True, False]
    f3d = torch.tensor([[1.0, 0.0], [3.0, 2.0], [7.0, 7.0], [5.0, 4.0]])
    g3d, count = mask_pool(f3d, m3d)  # Eq. 5: mask 0 = points 0, 1, 3; mask 1 empty
    assert g3d.tolist() == [[3.0, 2.0], [0.0, 0.0]] and count.tolist() == [3.0, 0.0]


def test_hungarian_match_on_known_cost_matrix():
    cost = torch.tensor([[4.0, 1.0, 3.0], [2.0, 0.0, 5.0], [3.0, 2.0, 2.0]])
    rows, cols = match(cost)
    assert rows.tolist() == [0, 1, 2] and cols.tolist() == [1, 0, 2]  # 1 + 2 + 2 = 5 is the optimum
    rng = np.random.default_rng(0)
    for _ in range(5):  # brute force on random 4x4 costs
        c = torch.as_tensor(rng.random((4, 4)))
        rows, cols = match(c)
        best = min(sum(float(c[i, p[i]]) for i in range(4)) for p in itertools.permutations(range(4)))
        assert float(c[rows, cols].sum()) == pytest.approx(best)
    rows, cols = match(torch.tensor([[1.0], [0.0], [2.0]]))  # more queries than targets
    assert rows.tolist() == [1] and cols.tolist() == [0]
    with pytest.raises(ValueError, match="NaN"):
        match(torch.tensor([[float("nan")]]))


def test_mask_costs_hand_computed():
    pred = torch.zeros(1, 4)  # sigmoid = 0.5 everywhere
    tgt = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    ce, dice = mask_cost(pred, tgt)
    assert float(ce) == pytest.approx(math.log(2.0))
    assert float(dice) == pytest.approx(1.0 - (2 * 1.0 + 1) / (2.0 + 2.0 + 1))
    x = torch.tensor([[2.0, -1.0]])
    t = torch.tensor([[1.0, 0.0]])
    want_ce = (math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(-1.0))) / 2
    assert float(sigmoid_ce_loss(x, t, 1.0)) == pytest.approx(want_ce)
    assert float(mask_cost(x, t)[0]) == pytest.approx(want_ce)
    p0, p1 = 1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(1.0))
    assert float(dice_loss(x, t, 2.0)) == pytest.approx((1 - (2 * p0 + 1) / (p0 + p1 + 1 + 1)) / 2)
    # focal: p = 0.5, t = 1: CE log 2, (1 - p_t)^2 = 0.25, alpha 0.25
    assert float(sigmoid_focal_loss(torch.zeros(1, 1), torch.ones(1, 1), 1.0)) == pytest.approx(
        0.25 * 0.25 * math.log(2.0))


def test_matcher_pairs_masks_with_their_targets():
    gt = torch.zeros(2, 8, 8, dtype=torch.bool)
    gt[0, :4], gt[1, 4:] = True, True
    logits = torch.full((1, 3, 8, 8), -6.0)
    logits[0, 2, 4:], logits[0, 0, :4] = 6.0, 6.0  # query 2 = target 1, query 0 = target 0
    class_logits = torch.zeros(1, 3, 3)
    for num_points in (0, 64):
        (rows, cols), = HungarianMatcher(num_points=num_points)(class_logits, logits, [(torch.tensor([0, 1]), gt)])
        assert dict(zip(rows.tolist(), cols.tolist())) == {0: 0, 2: 1}


def test_point_sample_is_bilinear():
    maps = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    coords = torch.tensor([[[0.25, 0.25], [0.5, 0.5], [0.75, 0.25]]])  # pixel centres and the middle
    assert point_sample(maps, coords)[0, 0].tolist() == pytest.approx([0.0, 1.5, 1.0])


def test_set_criterion_prefers_correct_masks_and_weights_no_object():
    cfg = LossConfig(num_points=0)
    crit = MaskSetCriterion(cfg)
    gt = torch.zeros(1, 8, 8, dtype=torch.bool)
    gt[0, :, :4] = True
    targets = [(torch.tensor([1]), gt)]
    good = torch.full((1, 2, 8, 8), -8.0)
    good[0, 0, :, :4] = 8.0
    bad = -good
    cls = torch.tensor([[[0.0, 9.0, 0.0], [0.0, 0.0, 9.0]]])  # query 0 says class 1, query 1 "no object"
    lg, lb = crit([(cls, good)], targets), crit([(cls, bad)], targets)
    assert float(lg["m2f_mask"] + lg["m2f_dice"]) < 0.05 < float(lb["m2f_mask"] + lb["m2f_dice"])
    assert float(lg["m2f_class"]) < 0.01
    # unmatched query predicting a class instead of "no object": CE weighted by eos_coef in the weighted mean
    wrong = torch.tensor([[[0.0, 9.0, 0.0], [9.0, 0.0, 0.0]]])
    ce0 = -math.log(math.exp(9.0) / (math.exp(9.0) + 2))
    ce1 = -math.log(1 / (math.exp(9.0) + 2))
    want = cfg.m2f_class * (ce0 * 1.0 + ce1 * cfg.eos_coef) / (1.0 + cfg.eos_coef)
    assert float(crit([(wrong, good)], targets)["m2f_class"]) == pytest.approx(want, rel=1e-4)
    # deep supervision: two identical layers double every term
    two = crit([(cls, bad), (cls, bad)], targets)
    assert float(two["m2f_dice"]) == pytest.approx(2 * float(lb["m2f_dice"]))


def test_alignment_losses_eq6_eq12_and_binary_and_ce():
    g3d = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    g_clip = torch.tensor([[3.0, 0.0], [1.0, 0.0]], requires_grad=True)
    loss = mask_alignment_loss(g3d, g_clip)  # (1 - 1 + 1 - 0) / 2
    assert float(loss.detach()) == pytest.approx(0.5)
    loss.backward()
    assert g_clip.grad is None and g3d.grad is not None  # the CLIP target is a constant
    assert float(mask_alignment_loss(torch.zeros(0, 2, requires_grad=True), torch.zeros(0, 2)).detach()) == 0.0
    f = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    cap = torch.tensor([[1.0, 0.0], [-2.0, 0.0]])
    assert float(view_alignment_loss(f, cap)) == pytest.approx(((1 - 1 / math.sqrt(2)) + 2.0) / 2)
    logits = torch.tensor([0.0, 2.0, -1.0, 5.0])
    is_novel = torch.tensor([1, 0, -1, 0])
    # mean over the 3 valid points; base points weigh 0.25
    want = (math.log(2.0) + 0.25 * math.log(1 + math.exp(2.0)) + 0.25 * math.log(1 + math.exp(5.0))) / 3
    assert float(binary_loss(logits, is_novel, base_weight=0.25)) == pytest.approx(want, rel=1e-5)
    seg = segmentation_ce(torch.tensor([[2.0, 0.0], [0.0, 0.0]]), torch.tensor([0, -1]))
    assert float(seg) == pytest.approx(math.log(1 + math.exp(-2.0)))
    assert float(segmentation_ce(torch.zeros(2, 2, requires_grad=True), torch.tensor([-1, -1])).detach()) == 0.0


def test_total_loss_eq8_weights_and_mask_warmup():
    cfg = LossConfig(seg=4.0, mask=0.5, view_3d=1.0, view_2d=4.0, view_fuse=1.5, binary=16.0)
    one = torch.tensor(1.0)
    terms = {k: one for k in ("seg_3d", "seg_fuse", "mask", "view_3d", "view_2d", "view_fuse", "binary")}
    terms["m2f_dice"] = torch.tensor(2.0)
    total, weighted = total_loss(terms, cfg, mask_active=True)
    # omega_seg weighs all of L_seg = L3d_seg + L2d_seg (the Mask2Former terms) + Lfuse_seg
    assert float(total) == pytest.approx(4 + 4 + 0.5 + 1 + 4 + 1.5 + 16 + 4 * 2)
    assert float(weighted["m2f_dice"]) == pytest.approx(8.0)
    total_off, weighted_off = total_loss(terms, cfg, mask_active=False)
    assert float(total - total_off) == pytest.approx(0.5) and float(weighted_off["mask"]) == 0.0
    with pytest.raises(KeyError, match="unknown"):
        total_loss({"typo": one}, cfg, True)


def test_eq8_hand_computed_2d_terms_with_focal_under_omega_seg():
    """One query, one target mask on a 4x4 image (top half), logits +-2 matching it, class logits 0 over
    (class 0, no-object): every Mask2Former term by hand, then omega_seg = 4 on each (Eq. 8, L_seg includes L2d)."""
    cfg = LossConfig(num_points=0)  # dense; m2f weights 2 / 5 / 5 / 20
    gt = torch.zeros(1, 4, 4, dtype=torch.bool)
    gt[0, :2] = True
    logits = torch.where(gt, 2.0, -2.0)[None]  # (B=1, Q=1, 4, 4)
    terms = MaskSetCriterion(cfg)([(torch.zeros(1, 1, 2), logits)], [(torch.tensor([0]), gt)])
    ce = math.log1p(math.exp(-2.0))  # BCE of every pixel (p_t = sigmoid(2) everywhere)
    p_t = 1.0 / (1.0 + math.exp(-2.0))
    focal = 0.5 * (0.25 + 0.75) * ce * (1 - p_t) ** 2  # alpha 0.25 on the 8 positives, 0.75 on the 8 negatives
    dice = 1 - (2 * 8 * p_t + 1) / (8 * p_t + 8 * (1 - p_t) + 8 + 1)
    want = {"m2f_class": 2 * math.log(2.0), "m2f_mask": 5 * ce, "m2f_dice": 5 * dice, "m2f_focal": 20 * focal}
    assert {k: float(v) for k, v in terms.items()} == pytest.approx(want, rel=1e-5)
    total, _ = total_loss(terms, cfg, mask_active=False)
    assert float(total) == pytest.approx(4 * sum(want.values()), rel=1e-5)


def test_deformable_attention_core_samples_bilinearly():
    value = torch.arange(6.0).reshape(1, 6, 1, 1)  # one level 2x3, one head, dh = 1
    shapes = [(2, 3)]
    centre = torch.tensor([[(2 + 0.5) / 3, (1 + 0.5) / 2]])  # pixel (row 1, col 2) -> value 5
    between = torch.tensor([[(0.5 + 0.5) / 3, (0 + 0.5) / 2]])  # halfway between (0, 0) and (0, 1) -> 0.5
    locs = torch.stack([centre, between], 1).view(1, 2, 1, 1, 1, 2)
    out = ms_deform_attn(value, shapes, locs, torch.ones(1, 2, 1, 1, 1))
    assert out.view(-1).tolist() == pytest.approx([5.0, 0.5])
    # two points with weights 0.25 / 0.75
    locs2 = torch.cat([centre, between]).view(1, 1, 1, 1, 2, 2)
    out2 = ms_deform_attn(value, shapes, locs2, torch.tensor([0.25, 0.75]).view(1, 1, 1, 1, 2))
    assert float(out2) == pytest.approx(0.25 * 5.0 + 0.75 * 0.5)
    attn = MSDeformAttn(dim=8, n_levels=2, n_heads=2, n_points=3)
    src = torch.randn(2, 4 * 4 + 2 * 2, 8)
    q = torch.randn(2, 5, 8)
    assert attn(q, torch.rand(2, 5, 2), src, [(4, 4), (2, 2)]).shape == (2, 5, 8)
