"""Mosaic3D's losses: the region contrastive loss (Eq. 4) and the instance decoder's loss after Hungarian matching
(L_mask = 2 L_obj + 5 L_dice + 2 L_bce + 1 L_cap, Eqs. 6-7)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment


def region_contrastive_loss(features: torch.Tensor, text: torch.Tensor, mask_point: torch.Tensor,
                            mask_id: torch.Tensor, mask_caption: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Eq. 4: L = -(1/K) sum_k Pool(s_k, log softmax_j(Z w_j^T / tau)[k]).

    features Z (N, D) and text w (C, D), both unit; (P,) pairs mask_point / mask_id put point mask_point[i] in mask
    s_{mask_id[i]} (K masks); mask_caption (K,) the column of w holding mask k's caption (arange(K) is the paper's
    one caption per mask; identical captions may share a column); scale 1 / tau (learnable). Pool is the mean over
    a mask's points. Returns 0 (attached to features) without pairs."""
    if len(mask_point) == 0:
        return features.sum() * 0.0
    points, local = torch.unique(mask_point, return_inverse=True)
    log_prob = torch.log_softmax(scale * features[points] @ text.t(), dim=-1)  # (N', C): per point, over captions
    num_masks = len(mask_caption)
    pair_log_prob = log_prob[local, mask_caption[mask_id]]
    pooled = torch.zeros(num_masks, dtype=log_prob.dtype, device=log_prob.device).index_add_(0, mask_id,
                                                                                             pair_log_prob)
    count = torch.bincount(mask_id, minlength=num_masks)
    present = count > 0
    return -(pooled[present] / count[present]).mean()


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice loss per pair of mask logits (M, N) and binary targets (M, N): 1 - (2 |p t| + 1) / (|p| + |t| + 1),
    p = sigmoid(logits). Returns (M,)."""
    p = logits.sigmoid()
    return 1.0 - (2 * (p * targets).sum(-1) + 1) / (p.sum(-1) + targets.sum(-1) + 1)


def pairwise_dice(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice cost (Q, M) between every predicted mask (Q, N) logits and target (M, N) float."""
    p = logits.sigmoid()
    return 1.0 - (2 * p @ targets.t() + 1) / (p.sum(-1)[:, None] + targets.sum(-1)[None] + 1)


def pairwise_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy (Q, M) of every predicted mask (Q, N) against every target (M, N) float."""
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    return (pos @ targets.t() + neg @ (1 - targets).t()) / logits.shape[1]


@dataclass
class DecoderLossWeights:
    """The paper's lambdas and Mask3D's down-weighting of the no-object class in L_obj."""

    obj: float = 2.0
    dice: float = 5.0
    bce: float = 2.0
    cap: float = 1.0
    no_object: float = 0.1


@torch.no_grad()
def hungarian_match(objectness: torch.Tensor, mask_logits: torch.Tensor, targets: torch.Tensor,
                    w: DecoderLossWeights) -> tuple[torch.Tensor, torch.Tensor]:
    """Optimal one-to-one assignment of Q predictions to M targets (scipy linear_sum_assignment) under the cost
    w.obj * (-p_object) + w.dice * dice + w.bce * bce. objectness (Q, 2) logits (class 1 = object), mask_logits
    (Q, N), targets (M, N) float. Returns (query indices, target indices), each (min(Q, M),) int64."""
    cost = (-w.obj * objectness.softmax(-1)[:, 1:2] + w.dice * pairwise_dice(mask_logits, targets)
            + w.bce * pairwise_bce(mask_logits, targets))
    rows, cols = linear_sum_assignment(cost.float().cpu().numpy())
    return torch.from_numpy(rows.astype(np.int64)), torch.from_numpy(cols.astype(np.int64))


def caption_loss(embeddings: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Eq. 7: -(1/M) sum_m log softmax_j(Z_mask,m w_j^T / tau)[m] for matched mask embeddings (M, D) and their
    concatenated-caption embeddings w (M, D); 0 without pairs."""
    if len(text) == 0:
        return embeddings.sum() * 0.0
    logits = scale * F.normalize(embeddings, dim=-1) @ F.normalize(text, dim=-1).t()
    return F.cross_entropy(logits, torch.arange(len(text), device=logits.device))


def decoder_loss(objectness: torch.Tensor, mask_logits: torch.Tensor, embeddings: torch.Tensor,
                 targets: torch.Tensor, caption_text: torch.Tensor, has_caption: torch.Tensor,
                 scale: torch.Tensor, w: DecoderLossWeights) -> dict[str, torch.Tensor]:
    """Mask3D-style loss of one scene after Hungarian matching. objectness (Q, 2), mask_logits (Q, N), embeddings
    (Q, D) from the decoder; targets (M, N) bool class-agnostic masks, caption_text (M, D) their concatenated
    caption embeddings, valid where has_caption (M,). L_obj: CE of every query (matched -> object, others ->
    no object, weighted w.no_object); L_dice, L_bce: matched pairs; L_cap (Eq. 7): matched pairs with captions."""
    targets = targets.to(mask_logits.dtype)
    rows, cols = hungarian_match(objectness, mask_logits, targets, w)
    rows, cols = rows.to(objectness.device), cols.to(objectness.device)
    label = torch.zeros(len(objectness), dtype=torch.int64, device=objectness.device)
    label[rows] = 1
    obj = F.cross_entropy(objectness, label, weight=objectness.new_tensor([w.no_object, 1.0]))
    if len(rows):
        dice = dice_loss(mask_logits[rows], targets[cols]).mean()
        bce = F.binary_cross_entropy_with_logits(mask_logits[rows], targets[cols])
    else:
        dice = bce = mask_logits.sum() * 0.0
    captioned = has_caption[cols]
    cap = caption_loss(embeddings[rows[captioned]], caption_text[cols[captioned]], scale)
    total = w.obj * obj + w.dice * dice + w.bce * bce + w.cap * cap
    return {"loss": total, "obj": obj, "dice": dice, "bce": bce, "cap": cap}
