"""Classification heads of XMask3D: the cosine text classifier (Eq. 1, 15), the PLA binary base/novel head and
the base/novel calibration (Eq. 13), plus the ODISE-style geometric ensemble with the CLIP mask classifier (Eq. 16).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ov3dseg_core.registry import REGISTRY


class TextClassifier(nn.Module):
    """Cosine similarity to text embeddings divided by a learnable temperature tau (Eq. 1 and 15).

    The scale 1/tau starts at 1/0.07 and is clamped to at most 100 (CLIP's convention).
    """

    def __init__(self, init_temperature: float = 0.07, max_scale: float = 100.0):
        super().__init__()
        if not 0 < init_temperature:
            raise ValueError(f"init_temperature must be > 0, got {init_temperature}")
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        self.max_scale = max_scale

    @property
    def scale(self) -> torch.Tensor:
        """1 / tau, a 0-d tensor."""
        return self.log_scale.exp().clamp(max=self.max_scale)

    def forward(self, features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """features (..., D), text (L, D) -> logits (..., L) = cos(features, text) / tau."""
        if features.shape[-1] != text.shape[-1]:
            raise ValueError(f"feature dim {features.shape[-1]} != text embedding dim {text.shape[-1]}")
        return self.scale * F.normalize(features, dim=-1) @ F.normalize(text, dim=-1).t()


class BinaryHead(nn.Module):
    """PLA's binary head: a small sparse U-Net, BatchNorm, ReLU and a linear layer giving a novel-class logit.

    ``backbone`` is a REGISTRY "backbone" config; its per-voxel features (V, C) (C = its ``out_channels``) become
    logits (V,) of s_b = P(point belongs to a novel class) (Eq. 13).
    """

    def __init__(self, backbone: Mapping[str, Any]):
        super().__init__()
        self.backbone = REGISTRY.build("backbone", dict(backbone))
        channels = self.backbone.out_channels
        self.norm = nn.BatchNorm1d(channels)
        self.fc = nn.Linear(channels, 1)

    def forward(self, data: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """data: the backbone input dict (grid_coord, feat, offset) -> (V,) novel logits."""
        return self.fc(torch.relu(self.norm(self.backbone(dict(data))))).squeeze(-1)


def calibrate(probs: torch.Tensor, novel_prob: torch.Tensor, is_base: torch.Tensor) -> torch.Tensor:
    """Eq. 13: s = s_B (1 - s_b) + s_N s_b.

    probs: (N, L) class probabilities over the vocabulary; novel_prob: (N,) s_b in [0, 1]; is_base: (L,) bool.
    s_B / s_N renormalise ``probs`` over the base / novel classes (the other classes set to zero). With no base (or
    no novel) class in the vocabulary the input comes back unchanged.
    """
    is_base = is_base.to(device=probs.device, dtype=torch.bool)
    if is_base.shape != probs.shape[-1:]:
        raise ValueError(f"is_base has shape {tuple(is_base.shape)}, expected ({probs.shape[-1]},)")
    if bool(is_base.all()) or not bool(is_base.any()):
        return probs
    base = probs * is_base
    novel = probs * ~is_base
    s_base = base / base.sum(-1, keepdim=True).clamp_min(1e-12)
    s_novel = novel / novel.sum(-1, keepdim=True).clamp_min(1e-12)
    s_b = novel_prob.unsqueeze(-1)
    return s_base * (1.0 - s_b) + s_novel * s_b


def geometric_ensemble(p: torch.Tensor, p_aux: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
    """Eq. 16 (ODISE): p_final proportional to p^lam * p_aux^(1 - lam), renormalised over the last dim.

    p, p_aux: (..., L) probabilities; lam: scalar or (L,) per-class weights (XMask3D uses one value for base and
    another for novel classes).
    """
    lam = torch.as_tensor(lam, dtype=p.dtype, device=p.device)
    log_p = lam * p.clamp_min(1e-12).log() + (1.0 - lam) * p_aux.clamp_min(1e-12).log()
    return torch.softmax(log_p, dim=-1)
