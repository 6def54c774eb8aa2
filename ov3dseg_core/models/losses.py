"""XMask3D training objectives: segmentation CE (Eq. 14), the 2D Mask2Former set losses (class CE, sigmoid CE,
dice, focal, with Hungarian matching), L_mask (Eq. 6), L_view (Eq. 12), L_bi and their weighted total (Eq. 8).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ov3dseg_core.models.matching import HungarianMatcher, flatten_masks, point_sample, uncertain_point_coords


@dataclass
class LossConfig:
    """Loss weights of Eq. 8 and the Mask2Former criterion.

    seg: omega_seg on all of L_seg (Eq. 8): the 3D and fused CE and the 2D branch's Mask2Former losses;
    mask: omega_mask; view_3d / view_2d / view_fuse: omega_view^m; binary: omega_bi; binary_base_weight: BCE
    weight of base points relative to not-base ones (the official ``data_ratio``); mask_loss_start: epoch from which
    L_mask is switched on (the paper: 50 of 150); min_mask_points: masks covering fewer points are left out of
    L_mask.
    m2f_*: weights inside L2d_seg (class CE, sigmoid CE, dice, focal; the paper names CE, dice and focal without
    values: Mask2Former's 2 / 5 / 5 and MaskFormer's focal weight 20), eos_coef: CE weight of the no-object class,
    num_points: points sampled per mask (0 = dense), oversample_ratio / importance_ratio: importance sampling.
    """

    seg: float = 4.0
    mask: float = 0.5
    view_3d: float = 1.0
    view_2d: float = 4.0
    view_fuse: float = 1.5
    binary: float = 16.0
    binary_base_weight: float = 1.0
    mask_loss_start: int = 50
    min_mask_points: int = 10
    m2f_class: float = 2.0
    m2f_mask: float = 5.0
    m2f_dice: float = 5.0
    m2f_focal: float = 20.0
    eos_coef: float = 0.1
    num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_ratio: float = 0.75


def segmentation_ce(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 14: mean CE of logits (N, L) against labels (N,) int64 in [0, L), -1 ignored (0 when none is valid);
    ``weight`` (L,) optional per-class weights (weighted mean)."""
    if not bool((labels >= 0).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels, weight=weight, ignore_index=-1)


def sigmoid_ce_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Mask2Former mask loss: per-mask mean BCE over points of (T, P) logits, summed and divided by num_masks."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1).sum() / num_masks


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """1 - (2 sum(p t) + 1) / (sum p + sum t + 1) per mask (p = sigmoid), summed and divided by num_masks."""
    p = logits.sigmoid()
    dice = (2.0 * (p * targets).sum(1) + 1.0) / (p.sum(1) + targets.sum(1) + 1.0)
    return (1.0 - dice).sum() / num_masks


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float, alpha: float = 0.25,
                       gamma: float = 2.0) -> torch.Tensor:
    """Focal loss (Lin et al.; MaskFormer's mask loss) per mask, mean over points, summed / num_masks."""
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1.0 - p) * (1.0 - targets)
    loss = ce * (1.0 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1.0 - alpha) * (1.0 - targets)) * loss
    return loss.mean(1).sum() / num_masks


def mask_alignment_loss(g3d: torch.Tensor, g_clip: torch.Tensor) -> torch.Tensor:
    """Eq. 6: mean over masks of 1 - cos(G3d_i, G_CLIP_i); g3d, g_clip (M, D); the CLIP target gets no gradient.
    Zero (still attached to g3d) when M = 0."""
    if g3d.shape[0] == 0:
        return g3d.sum() * 0.0
    return (1.0 - F.cosine_similarity(g3d, g_clip.detach(), dim=-1)).mean()


def view_alignment_loss(f_view: torch.Tensor, f_text: torch.Tensor) -> torch.Tensor:
    """Eq. 12: mean over views of 1 - cos(f_view^m, f_view^T); f_view, f_text (B, D); no gradient to the text."""
    return (1.0 - F.cosine_similarity(f_view, f_text.detach(), dim=-1)).mean()


def binary_loss(logits: torch.Tensor, is_novel: torch.Tensor, base_weight: float = 1.0) -> torch.Tensor:
    """L_bi: BCE of novel logits (N,) against is_novel (N,) (1 novel, 0 base, -1 ignored); base points weigh
    base_weight, novel points 1; mean over the valid points (0 when none)."""
    valid = is_novel >= 0
    if not bool(valid.any()):
        return logits.sum() * 0.0
    target = is_novel[valid].to(logits.dtype)
    weight = torch.where(target > 0.5, torch.ones_like(target), torch.full_like(target, base_weight))
    return F.binary_cross_entropy_with_logits(logits[valid], target, weight=weight)


class MaskSetCriterion(nn.Module):
    """Mask2Former's set criterion for the 2D branch, with deep supervision over the decoder layers.

    Per layer: Hungarian matching, then CE over K + 1 classes (unmatched queries -> no-object, weighted eos_coef),
    sigmoid CE, dice and focal losses of the matched masks at importance-sampled points (or densely).
    """

    def __init__(self, cfg: LossConfig):
        super().__init__()
        self.cfg = cfg
        self.matcher = HungarianMatcher(cfg.m2f_class, cfg.m2f_mask, cfg.m2f_dice, cfg.num_points)

    def forward(self, layers: list[tuple[torch.Tensor, torch.Tensor]],
                targets: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """layers: per decoder layer (class_logits (B, Q, K+1), mask_logits (B, Q, h, w)); targets per image:
        (labels (T,) int64 in [0, K), masks (T, H, W) bool). Returns weighted terms m2f_class, m2f_mask, m2f_dice,
        m2f_focal, each summed over layers."""
        num_masks = max(float(sum(int(t[0].numel()) for t in targets)), 1.0)
        terms = {k: 0.0 for k in ("m2f_class", "m2f_mask", "m2f_dice", "m2f_focal")}
        for class_logits, mask_logits in layers:
            indices = self.matcher(class_logits, mask_logits, targets)
            terms["m2f_class"] = terms["m2f_class"] + self.cfg.m2f_class * self._class_loss(class_logits, targets,
                                                                                             indices)
            src, tgt = self._matched_points(mask_logits, targets, indices)
            if src.shape[0] == 0:
                zero = mask_logits.sum() * 0.0
                terms["m2f_mask"] = terms["m2f_mask"] + zero
                continue
            terms["m2f_mask"] = terms["m2f_mask"] + self.cfg.m2f_mask * sigmoid_ce_loss(src, tgt, num_masks)
            terms["m2f_dice"] = terms["m2f_dice"] + self.cfg.m2f_dice * dice_loss(src, tgt, num_masks)
            if self.cfg.m2f_focal > 0:
                terms["m2f_focal"] = terms["m2f_focal"] + self.cfg.m2f_focal * sigmoid_focal_loss(src, tgt, num_masks)
        return {k: v if torch.is_tensor(v) else layers[-1][0].new_zeros(()) for k, v in terms.items()}

    def _class_loss(self, class_logits, targets, indices) -> torch.Tensor:
        b, q, k1 = class_logits.shape
        target_classes = torch.full((b, q), k1 - 1, dtype=torch.int64, device=class_logits.device)
        for i, ((labels, _), (src_idx, tgt_idx)) in enumerate(zip(targets, indices)):
            target_classes[i, src_idx.to(class_logits.device)] = labels[tgt_idx.to(labels.device)].to(
                class_logits.device)
        weight = torch.ones(k1, device=class_logits.device, dtype=class_logits.dtype)
        weight[-1] = self.cfg.eos_coef
        return F.cross_entropy(class_logits.transpose(1, 2), target_classes, weight=weight)

    def _matched_points(self, mask_logits, targets, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Matched (prediction, target) masks as (T, P) logits and (T, P) float targets."""
        srcs, tgts = [], []
        for masks, (_, gt), (src_idx, tgt_idx) in zip(mask_logits, targets, indices):
            if src_idx.numel() == 0:
                continue
            src = masks[src_idx.to(masks.device)]
            tgt = gt[tgt_idx.to(gt.device)].to(src.dtype)
            if self.cfg.num_points > 0:
                with torch.no_grad():
                    coords = uncertain_point_coords(src.detach(), self.cfg.num_points, self.cfg.oversample_ratio,
                                                    self.cfg.importance_ratio)
                srcs.append(point_sample(src[:, None], coords)[:, 0])
                tgts.append(point_sample(tgt[:, None], coords)[:, 0])
            else:
                s, t = flatten_masks(src, tgt, None)
                srcs.append(s)
                tgts.append(t)
        if not srcs:
            return mask_logits.new_zeros((0, 1)), mask_logits.new_zeros((0, 1))
        return torch.cat(srcs), torch.cat(tgts)


def total_loss(terms: dict[str, torch.Tensor], cfg: LossConfig, mask_active: bool) -> tuple[torch.Tensor, dict]:
    """Eq. 8 as written: L = w_seg L_seg + w_mask L_mask + L_view + w_bi L_bi with
    L_seg = L3d_seg + L2d_seg + Lfuse_seg (L2d_seg: the Mask2Former terms m2f_*) and
    L_view = sum_m w_view^m L_view^m.

    terms: unweighted seg_3d, seg_fuse, view_3d, view_2d, view_fuse, mask, binary (any may be missing) and the
    m2f_* terms with their Mask2Former-internal weights already applied. Returns (total, the weighted terms).
    """
    weights = {"seg_3d": cfg.seg, "seg_fuse": cfg.seg, "mask": cfg.mask if mask_active else 0.0,
               "view_3d": cfg.view_3d, "view_2d": cfg.view_2d, "view_fuse": cfg.view_fuse, "binary": cfg.binary,
               "m2f_class": cfg.seg, "m2f_mask": cfg.seg, "m2f_dice": cfg.seg, "m2f_focal": cfg.seg}
    unknown = set(terms) - set(weights)
    if unknown:
        raise KeyError(f"unknown loss terms {sorted(unknown)}")
    weighted = {k: weights[k] * v for k, v in terms.items()}
    return sum(weighted.values()), weighted
