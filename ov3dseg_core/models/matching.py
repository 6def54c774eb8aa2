"""Hungarian matching of predicted masks to ground-truth masks with the Mask2Former cost
(class probability + sigmoid cross-entropy + dice), optionally on randomly sampled points.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment


def point_sample(maps: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear values of maps (B, C, H, W) at coords (B, P, 2) = (x, y) in [0, 1] image units -> (B, C, P)."""
    grid = (2.0 * coords - 1.0).unsqueeze(2)
    return F.grid_sample(maps, grid, mode="bilinear", align_corners=False).squeeze(3)


def flatten_masks(pred_masks: torch.Tensor, gt_masks: torch.Tensor, coords: torch.Tensor | None):
    """Predicted mask logits (Q, h, w) and target masks (T, H, W) as (Q, P) and (T, P) values at the same points.

    coords (P, 2) in [0, 1] samples both bilinearly (Mask2Former); None upsamples the logits to (H, W) and uses
    every target pixel.
    """
    if coords is None:
        pred = F.interpolate(pred_masks[None], size=gt_masks.shape[-2:], mode="bilinear", align_corners=False)[0]
        return pred.flatten(1), gt_masks.flatten(1).to(pred.dtype)
    c = coords[None]
    pred = point_sample(pred_masks[None], c)[0]
    tgt = point_sample(gt_masks[None].to(pred.dtype), c)[0]
    return pred, tgt


def mask_cost(pred: torch.Tensor, tgt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairwise sigmoid-CE and dice costs between mask logits pred (Q, P) and binary targets tgt (T, P) -> 2 x (Q, T).

    CE(q, t) = mean_p BCE(pred_qp, tgt_tp); dice(q, t) = 1 - (2 sum p t + 1) / (sum p + sum t + 1), p = sigmoid.
    """
    num_points = pred.shape[1]
    pos = F.binary_cross_entropy_with_logits(pred, torch.ones_like(pred), reduction="none")
    neg = F.binary_cross_entropy_with_logits(pred, torch.zeros_like(pred), reduction="none")
    ce = (pos @ tgt.t() + neg @ (1.0 - tgt).t()) / num_points
    prob = pred.sigmoid()
    dice = 1.0 - (2.0 * prob @ tgt.t() + 1.0) / (prob.sum(-1, keepdim=True) + tgt.sum(-1)[None] + 1.0)
    return ce, dice


def match(cost: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum-cost one-to-one assignment of a (Q, T) cost matrix -> (pred_idx, tgt_idx) int64, min(Q, T) pairs."""
    if not torch.isfinite(cost).all():
        raise ValueError("matching cost contains NaN or inf")
    rows, cols = linear_sum_assignment(cost.detach().cpu().numpy())
    return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)


@dataclass
class HungarianMatcher:
    """Mask2Former matcher: cost = w_class * (-p(class)) + w_mask * sigmoid-CE + w_dice * dice.

    num_points > 0 compares masks at that many uniformly random points (shared by prediction and target);
    0 compares them densely at the target resolution.
    """

    cost_class: float = 2.0
    cost_mask: float = 5.0
    cost_dice: float = 5.0
    num_points: int = 12544

    @torch.no_grad()
    def __call__(self, class_logits: torch.Tensor, mask_logits: torch.Tensor,
                 targets: list[tuple[torch.Tensor, torch.Tensor]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """class_logits (B, Q, K+1), mask_logits (B, Q, h, w); targets per image: (labels (T,) int64 in [0, K),
        masks (T, H, W)). Returns per image (pred_idx, tgt_idx)."""
        if len(targets) != class_logits.shape[0]:
            raise ValueError(f"{len(targets)} targets for a batch of {class_logits.shape[0]}")
        out = []
        for logits, masks, (labels, gt) in zip(class_logits, mask_logits, targets):
            if labels.numel() == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                out.append((empty, empty))
                continue
            coords = None
            if self.num_points > 0:
                coords = torch.rand(self.num_points, 2, device=masks.device, dtype=masks.dtype)
            pred, tgt = flatten_masks(masks.float(), gt, None if coords is None else coords.float())
            ce, dice = mask_cost(pred, tgt)
            cost_cls = -logits.float().softmax(-1)[:, labels]
            out.append(match(self.cost_class * cost_cls + self.cost_mask * ce + self.cost_dice * dice))
        return out


def uncertain_point_coords(mask_logits: torch.Tensor, num_points: int, oversample_ratio: float,
                           importance_ratio: float) -> torch.Tensor:
    """Mask2Former's importance sampling: (T, h, w) logits -> (T, num_points, 2) coords in [0, 1], of which a
    fraction importance_ratio are the most uncertain (|logit| smallest) of num_points * oversample_ratio random
    candidates and the rest uniformly random."""
    t = mask_logits.shape[0]
    n_sampled = int(num_points * oversample_ratio)
    cand = torch.rand(t, n_sampled, 2, device=mask_logits.device, dtype=mask_logits.dtype)
    uncertainty = -point_sample(mask_logits[:, None], cand)[:, 0].abs()
    n_uncertain = int(importance_ratio * num_points)
    idx = uncertainty.topk(n_uncertain, dim=1).indices
    picked = torch.gather(cand, 1, idx[..., None].expand(-1, -1, 2))
    rand = torch.rand(t, num_points - n_uncertain, 2, device=mask_logits.device, dtype=mask_logits.dtype)
    return torch.cat([picked, rand], dim=1)


__all__ = ["HungarianMatcher", "flatten_masks", "mask_cost", "match", "point_sample", "uncertain_point_coords"]
