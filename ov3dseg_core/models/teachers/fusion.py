"""Fusing the point features of T teachers (T = 2 in SAS: dense LSeg-like, mask SEEM-like) into one target.

- ``capability_fusion`` (SAS Eqs. 6-8): every teacher predicts a class per point, P_t = argmax(F_t . F_text^T);
  teacher t's probability of being right is the mean of its capabilities over those predictions,
  p_t = (1/T) sum_u S_t[P_u] (Eq. 7; T = 2 gives (S_t[P_L] + S_t[P_S]) / 2), and
  F = sum_t softmax_t(p_t / tau) F_t (Eq. 8).
- ``add_fusion``: the plain mean (Tab. 3 "Add"); ``linear_fusion``: weights proportional to each feature's largest
  cosine to the vocabulary (Tab. 3 "Linear").

Features are L2-normalised first. A point that a teacher does not see (count 0) takes no weight from it (and its
prediction is left out of Eq. 7); points that no teacher sees keep a zero feature and ``has`` False.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

FUSION_RULES = ("capability", "add", "linear", "dense", "mask")


def _stack(features: Sequence[torch.Tensor], seen: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return F.normalize(torch.stack([f.float() for f in features]), dim=-1), torch.stack(list(seen)).bool()


def _weighted(feats: torch.Tensor, seen: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sum_t softmax_t(logits) F_t over the teachers that see each point -> ((N, C), has (N,))."""
    weight = torch.softmax(logits.masked_fill(~seen, float("-inf")), dim=0).nan_to_num(0.0)
    return (weight[..., None] * feats).sum(dim=0), seen.any(dim=0)


def capability_fusion(features: Sequence[torch.Tensor], seen: Sequence[torch.Tensor], text: torch.Tensor,
                      capability: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Eqs. 6-8. features: T tensors (N, C); seen: T (N,) bool; text (K, C) unit vocabulary embeddings;
    capability (T, K) S_t; tau > 0 the temperature. Returns (fused (N, C), has (N,) bool)."""
    feats, seen = _stack(features, seen)
    pred = (feats @ text.t()).argmax(dim=-1)                                   # (T, N) Eq. 6
    s = capability.to(feats)[:, pred]                                         # (T_teacher, T_pred, N)
    p = (s * seen[None]).sum(dim=1) / seen.sum(dim=0).clamp_min(1)[None]      # (T, N) Eq. 7
    return _weighted(feats, seen, p / tau)                                    # Eq. 8


def add_fusion(features: Sequence[torch.Tensor], seen: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    feats, seen = _stack(features, seen)
    return _weighted(feats, seen, torch.zeros(seen.shape))


def linear_fusion(features: Sequence[torch.Tensor], seen: Sequence[torch.Tensor],
                  text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    feats, seen = _stack(features, seen)
    best = (feats @ text.t()).amax(dim=-1).clamp_min(1e-6)
    return _weighted(feats, seen, best.log())  # softmax of log s = s / sum s


def fuse_teachers(rule: str, features: Sequence[torch.Tensor], seen: Sequence[torch.Tensor], text: torch.Tensor,
                  capability: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One of FUSION_RULES; "dense" / "mask" take teacher 0 / 1 alone."""
    if rule == "capability":
        return capability_fusion(features, seen, text, capability, tau)
    if rule == "add":
        return add_fusion(features, seen)
    if rule == "linear":
        return linear_fusion(features, seen, text)
    if rule in ("dense", "mask"):
        t = 0 if rule == "dense" else 1
        return F.normalize(features[t].float(), dim=-1), seen[t].bool()
    raise ValueError(f"unknown fusion rule {rule!r}; known: {FUSION_RULES}")
