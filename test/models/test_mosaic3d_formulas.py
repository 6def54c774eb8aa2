"""Mosaic3D's formulas on toy cases: Eq. 2 (lifting with the depth test), Algorithm 1 (caption merging), Eq. 4
(region contrastive loss) against a hand computation, Hungarian matching and the decoder loss (Eqs. 6-7)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ov3dseg_core.geometry.camera import PinholeCamera
from ov3dseg_core.models.methods.mosaic3d.data_engine import box_nms, lift_masks, mask_iou, merge_captions
from ov3dseg_core.models.methods.mosaic3d.decoder import farthest_points, select_objects
from ov3dseg_core.models.methods.mosaic3d.losses import (
    DecoderLossWeights, decoder_loss, hungarian_match, region_contrastive_loss,
)

CAMERA = PinholeCamera(width=8, height=6, fx=4.0, fy=4.0, cx=3.5, cy=2.5)


def test_eq2_lifting_keeps_masked_points_that_pass_the_depth_test():
    depth = np.full((6, 8), 2.0, dtype=np.float32)
    depth[0, 0] = 0.0  # invalid depth
    mask = np.zeros((1, 6, 8), dtype=bool)
    mask[0, :, :4] = True  # left half (u < 4)
    # camera = world (identity pose, optical frame: z forward); pixel (u, v) at x = (u - cx) z / fx
    def at(u, v, z):
        return [(u - 3.5) * z / 4.0, (v - 2.5) * z / 4.0, z]
    points = np.array([at(1, 2, 2.0),     # on the surface, in the mask -> 1
                       at(1, 2, 2.09),    # |d - D| = 0.09 < epsilon -> 1
                       at(1, 2, 2.5),     # behind the surface (occluded) -> 0
                       at(6, 2, 2.0),     # outside the mask -> 0
                       at(0, 0, 2.0),     # no depth there -> 0
                       [0.0, 0.0, -1.0]])  # behind the camera -> 0
    s = lift_masks(points, CAMERA, np.eye(4), depth, mask, epsilon=0.1)
    assert s.shape == (1, 6) and s[0].tolist() == [True, True, False, False, False, False]
    assert lift_masks(points, CAMERA, np.eye(4), depth, mask, epsilon=0.6)[0].tolist()[:3] == [True, True, True]
    edge = np.array([at(1, 2, 2.25)])  # |d - D| = 0.25 exactly
    assert not lift_masks(edge, CAMERA, np.eye(4), depth, mask, epsilon=0.25)[0, 0]  # strict <
    assert lift_masks(edge, CAMERA, np.eye(4), depth, mask, epsilon=0.2501)[0, 0]


def test_algorithm1_merges_each_caption_into_its_best_mask_above_the_threshold():
    n = 10
    masks3d = np.zeros((3, n), bool)
    masks3d[0, :4], masks3d[1, 4:8], masks3d[2, 8:] = True, True, True
    lifted = np.zeros((4, n), bool)
    lifted[0, :3] = True            # IoU 3/4 with mask 0
    lifted[1, 3:8] = True           # IoU 1/8 with mask 0 (1 point), 4/5 with mask 1
    lifted[2, [0, 4, 8]] = True     # IoU 1/6, 1/6, 1/4 with masks 0, 1, 2: best is mask 2 at 0.25
    lifted[3, 1:3] = True           # IoU 2/4 with mask 0
    assert mask_iou(lifted, masks3d)[1, 1] == pytest.approx(0.8)
    assert merge_captions(lifted, masks3d, iou_threshold=0.3) == [[0, 3], [1], []]
    assert merge_captions(lifted, masks3d, iou_threshold=0.2) == [[0, 3], [1], [2]]
    assert merge_captions(lifted, masks3d, iou_threshold=0.9) == [[], [], []]


def test_eq4_matches_a_hand_computation():
    z = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]), dim=-1)
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    scale = torch.tensor(2.0)  # tau = 0.5
    # s_0 = {0, 1} with caption 0, s_1 = {1, 2} with caption 1 (point 1 lies in both masks)
    point, mask = torch.tensor([0, 1, 1, 2]), torch.tensor([0, 0, 1, 1])

    def log_p(p, k):
        logits = [2.0 * float(z[p] @ w[j]) for j in range(2)]
        return logits[k] - math.log(sum(math.exp(x) for x in logits))

    expected = -0.5 * ((log_p(0, 0) + log_p(1, 0)) / 2 + (log_p(1, 1) + log_p(2, 1)) / 2)
    got = region_contrastive_loss(z, w, point, mask, torch.tensor([0, 1]), scale)
    assert float(got) == pytest.approx(expected, rel=1e-5)
    # two masks sharing one caption column: each is still pooled separately
    shared = region_contrastive_loss(z, w[:1], point, mask, torch.tensor([0, 0]), scale)
    assert float(shared) == pytest.approx(0.0, abs=1e-6)


def test_hungarian_matching_and_decoder_loss_on_a_toy_scene():
    targets = torch.tensor([[1, 1, 0, 0, 0, 0], [0, 0, 0, 1, 1, 1]], dtype=torch.bool)
    logits = torch.tensor([[-8.0, -8, -8, 8, 8, 8],    # query 0 = target 1
                           [0.0, 0, 0, 0, 0, 0],       # query 1: nothing
                           [8.0, 8, -8, -8, -8, -8]])  # query 2 = target 0
    objectness = torch.tensor([[0.0, 3.0], [3.0, 0.0], [0.0, 3.0]])
    w = DecoderLossWeights()
    rows, cols = hungarian_match(objectness, logits, targets.float(), w)
    assert dict(zip(rows.tolist(), cols.tolist())) == {0: 1, 2: 0}
    text = torch.eye(4)[:2]
    embeddings = torch.stack([text[1], torch.zeros(4), text[0]]) * 5
    losses = decoder_loss(objectness, logits, embeddings, targets, text, torch.tensor([True, True]),
                          torch.tensor(10.0), w)
    p = torch.sigmoid(torch.tensor(8.0))
    dice = 1 - (2 * 2 * p + 1) / (2 * p + 4 * (1 - p) + 2 + 1)
    dice1 = 1 - (2 * 3 * p + 1) / (3 * p + 3 * (1 - p) + 3 + 1)
    assert float(losses["dice"]) == pytest.approx(float((dice + dice1) / 2), rel=1e-3)
    assert float(losses["bce"]) == pytest.approx(-math.log(float(p)), rel=1e-3)
    ce = F.cross_entropy(objectness, torch.tensor([1, 0, 1]), weight=torch.tensor([0.1, 1.0]))
    assert float(losses["obj"]) == pytest.approx(float(ce), rel=1e-5)
    assert float(losses["cap"]) < 1e-3  # each matched embedding is its own caption
    total = 2 * losses["obj"] + 5 * losses["dice"] + 2 * losses["bce"] + losses["cap"]
    assert float(losses["loss"]) == pytest.approx(float(total), rel=1e-6)


def test_objects_nms_and_sampling():
    objects = select_objects(torch.tensor([[0.0, 5.0], [5.0, 0.0]]), torch.tensor([[9.0, 9, -9], [9.0, 9, 9]]),
                             torch.eye(3)[:2] * 3, score_threshold=0.5, min_points=2)
    assert objects.masks.tolist() == [[True, True, False]] and torch.allclose(objects.embeddings[0], torch.eye(3)[0])
    order, cosine = objects.rank(torch.tensor([1.0, 0.0, 0.0]))
    assert order.tolist() == [0] and float(cosine[0]) == pytest.approx(1.0)
    boxes = np.array([[0, 0, 9, 9], [1, 1, 9, 9], [20, 20, 30, 30]], dtype=np.float32)
    assert sorted(box_nms(boxes, np.array([0.9, 0.8, 0.7]), 0.5).tolist()) == [0, 2]
    coord = torch.tensor([[0.0, 0, 0], [0.1, 0, 0], [5.0, 0, 0], [0, 5.0, 0]])
    assert set(farthest_points(coord, 3).tolist()) == {0, 2, 3} or set(farthest_points(coord, 3).tolist()) == {1, 2, 3}


def test_instance_average_precision_and_greedy_matching():
    from ov3dseg_core.eval.instances import average_precision, greedy_match

    # precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1: interpolated area 1/2 * 1 + 1/2 * 2/3
    assert average_precision(np.array([0.9, 0.8, 0.7]), np.array([True, False, True]), 2) == pytest.approx(5 / 6)
    assert average_precision(np.zeros(0), np.zeros(0, bool), 3) == 0.0
    iou = np.array([[0.6, 0.1], [0.7, 0.0], [0.2, 0.55]])  # two predictions on ground truth 0: the best score wins
    assert greedy_match(iou, np.array([0.9, 0.5, 0.4]), 0.5).tolist() == [True, False, True]
