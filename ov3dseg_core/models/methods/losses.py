"""Losses shared by the distillation methods: cosine distillation at point and superpoint level (SAS Eq. 10,
GeoGuide L_sp) and its vocabulary-softmax form, TESD's EMA feature bank and self-distillation CE (SAS Eqs. 11-13),
Gram-matrix MSE (GeoGuide IIRC)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ov3dseg_core.models.pooling import scatter_mean


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean of 1 - cos(a_i, b_i) over rows of a, b (M, C); 0 (attached to a) when M = 0."""
    if a.shape[0] == 0:
        return a.sum() * 0.0
    return (1.0 - F.cosine_similarity(a, b, dim=-1)).mean()


def superpoint_distillation(f3d: torch.Tensor, target_sp: torch.Tensor, superpoint: torch.Tensor,
                            has_sp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 10: L_p = 1 - cos(F_SP^2D, F^3D) over the points of superpoints that have a target, and
    L_sp = 1 - cos(f_SP^2D, f_SP^3D) over those superpoints.

    f3d (N, C) student features; target_sp (S, C) per-superpoint 2D targets f_SP^2D; superpoint (N,) ids in
    [0, S); has_sp (S,) bool. Returns (L_p, L_sp)."""
    points = has_sp[superpoint]
    f_sp3d = scatter_mean(f3d, superpoint, len(target_sp))
    return (cosine_distance(f3d[points], target_sp[superpoint[points]].detach()),
            cosine_distance(f_sp3d[has_sp], target_sp[has_sp].detach()))


def vocabulary_distillation(f3d: torch.Tensor, target_sp: torch.Tensor, superpoint: torch.Tensor,
                            has_sp: torch.Tensor, text: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 10 read through the vocabulary: soft labels softmax(cos(f_SP^2D, T) / tau) against the student's
    softmax(cos(F^3D, T) / tau) per point and per superpoint (cross-entropy), same points and superpoints as
    ``superpoint_distillation``. text (K, C) unit class embeddings. Text embeddings share a common direction
    (MiniLM prompts: mean pairwise cosine 0.51), so the cosine loss is mostly met by that direction; this term
    weighs only the differences between the classes."""
    points = has_sp[superpoint]
    soft = torch.softmax(F.normalize(target_sp[has_sp], dim=-1) @ text.t() / tau, dim=-1).detach()
    index = torch.cumsum(has_sp.long(), 0) - 1                  # superpoint id -> row of soft
    f_sp3d = F.normalize(scatter_mean(f3d, superpoint, len(target_sp))[has_sp], dim=-1)
    if not bool(points.any()):
        return f3d.sum() * 0.0, f3d.sum() * 0.0
    return (F.cross_entropy(F.normalize(f3d[points], dim=-1) @ text.t() / tau, soft[index[superpoint[points]]]),
            F.cross_entropy(f_sp3d @ text.t() / tau, soft))


class FeatureBank:
    """TESD's temporal ensemble F_hat <- alpha F_hat + (1 - alpha) F^3D (Eq. 11) per training voxel (float16,
    allocated on first use; a voxel's first feature initialises its entry). Training state, not a checkpoint
    tensor: ``state_dict`` / ``load_state_dict`` carry it through the trainer's resume state."""

    def __init__(self, alpha: float):
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"alpha must be in [0, 1), got {alpha}")
        self.alpha = alpha
        self.values: torch.Tensor | None = None
        self.seen: torch.Tensor | None = None

    def update(self, index: torch.Tensor, features: torch.Tensor, size: int) -> torch.Tensor:
        """Blend features (N, C) into entries ``index`` (N,) of a bank of ``size`` rows; returns F_hat (N, C)."""
        if self.values is None or self.values.shape[0] < size:
            self.values = features.new_zeros((size, features.shape[1]), dtype=torch.float16)
            self.seen = torch.zeros(size, dtype=torch.bool, device=features.device)
        old = self.values[index].to(features.dtype)
        blended = torch.where(self.seen[index, None], self.alpha * old + (1 - self.alpha) * features.detach(),
                              features.detach())
        self.values[index] = blended.to(torch.float16)
        self.seen[index] = True
        return blended

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The visited entries: ``index`` (M,) int64, ``values`` (M, C) float16, ``size`` () int64 (empty: unused)."""
        if self.values is None:
            return {}
        index = torch.nonzero(self.seen).squeeze(1).cpu()
        return {"index": index, "values": self.values[index.to(self.values.device)].cpu(),
                "size": torch.tensor(self.values.shape[0])}

    def load_state_dict(self, state: dict[str, torch.Tensor], device: torch.device | str = "cpu") -> None:
        """Restore what ``state_dict`` returned (the bank as it was, unvisited entries unseen)."""
        if not state:
            self.values = self.seen = None
            return
        size, index = int(state["size"]), state["index"].to(device)
        self.values = torch.zeros((size, state["values"].shape[1]), dtype=torch.float16, device=device)
        self.seen = torch.zeros(size, dtype=torch.bool, device=device)
        self.values[index] = state["values"].to(device, torch.float16)
        self.seen[index] = True


def self_distillation(logits: torch.Tensor, logits_sp: torch.Tensor, bank: torch.Tensor, superpoint: torch.Tensor,
                      text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eqs. 12-13: pseudo labels argmax(F_hat T^T) per point and argmax(f_hat_SP T^T) per superpoint, CE against
    the student's logits (N, K) and superpoint logits (S, K). bank (N, C) F_hat; text (K, C)."""
    pseudo = (bank @ text.t()).argmax(dim=-1)
    pseudo_sp = (scatter_mean(bank, superpoint, logits_sp.shape[0]) @ text.t()).argmax(dim=-1)
    return F.cross_entropy(logits, pseudo), F.cross_entropy(logits_sp, pseudo_sp)


def gram_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """MSE between the cosine Gram matrices of a (M, C1) and b (M, C2) (GeoGuide IIRC); 0 for M < 2."""
    if a.shape[0] < 2:
        return b.sum() * 0.0
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    return F.mse_loss(b @ b.t(), a @ a.t())
