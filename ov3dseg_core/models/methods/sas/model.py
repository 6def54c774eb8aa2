"""SAS (Segment Any 3D Scene with Integrated 2D Priors, ICCV 2025): a 3D student on xyz distilled from the
capability-weighted fusion of two 2D teachers.

Signals and losses:

- target F_fusion^2D (per voxel, from ``methods.data``): the dense teacher's and the text-aligned mask teacher's
  multi-view features fused by Eqs. 6-8 with each teacher's capability (``teachers.capability``);
- L_p + L_sp (Eq. 10): the target mean-pooled over superpoints, against the student per point and per superpoint
  (cosine; with ``vocab_tau`` > 0 also as soft labels over the vocabulary, see ``losses.vocabulary_distillation``);
- TESD (Eqs. 11-13) from ``tesd_start`` (the paper: epoch 71 of 100): an EMA bank of the student's own features
  (alpha) gives pseudo labels over the prebuilt vocabulary, per point and per superpoint, for a CE on the
  student's cosine logits (learnable temperature). Until then the bank is filled but unused.

The student sees voxel indices and the height channel only (no colour: ``feat[:, 3:]``). No label reaches a loss.
Optimiser: Adam (AdamW with weight decay 0), lr decayed linearly to ``min_lr_ratio`` (paper 1e-4 -> 1e-5).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ov3dseg_core.models.heads import TextClassifier
from ov3dseg_core.models.methods.base import DistillationMethod, MethodConfig
from ov3dseg_core.models.methods.losses import (
    FeatureBank, self_distillation, superpoint_distillation, vocabulary_distillation,
)
from ov3dseg_core.models.pooling import scatter_mean
from ov3dseg_core.registry import REGISTRY


@dataclass
class SASConfig(MethodConfig):
    """backbone: REGISTRY "backbone" config (paper: MinkUNet18A); tesd_start: step from which TESD is on;
    alpha: EMA factor of the feature bank; tesd_weight: weight of L^ST (the paper adds the two losses);
    vocab_tau: > 0 adds Eq. 10's targets as soft labels over the vocabulary at this temperature
    (``losses.vocabulary_distillation``, not in the paper; 0 = off)."""

    backbone: dict[str, Any] = field(default_factory=lambda: {"type": "MinkUNet18A"})
    tesd_start: int = 700
    alpha: float = 0.9
    tesd_weight: float = 1.0
    init_temperature: float = 0.07
    vocab_tau: float = 0.0


@REGISTRY.register("method", "SAS")
class SAS(DistillationMethod):
    config_class = SASConfig

    def __init__(self, config: SASConfig, vocab_text: torch.Tensor):
        super().__init__(config, vocab_text)
        self.backbone = REGISTRY.build("backbone", config.backbone, in_channels=1, out_channels=config.text_dim)
        self.classifier = TextClassifier(init_temperature=config.init_temperature)
        self.bank = FeatureBank(config.alpha)

    def train_state_dict(self) -> dict[str, Any]:
        return {"bank": self.bank.state_dict()}

    def load_train_state_dict(self, state: dict[str, Any]) -> None:
        self.bank.load_state_dict(state.get("bank", {}), self.vocab_text.device)

    def forward(self, data: dict[str, torch.Tensor]) -> torch.Tensor:
        """grid_coord (N, 3), feat (N, 4) of which only the height is used, offset (B,) -> (N, D) unit features."""
        inputs = {"grid_coord": data["grid_coord"], "feat": data["feat"][:, 3:4], "offset": data["offset"]}
        return F.normalize(self.backbone(inputs), dim=-1)

    def training_losses(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        f3d = self.forward(batch)
        sp, num_sp = batch["superpoint"], int(batch["num_superpoints"])
        has = batch["has_target"]
        target_sp = scatter_mean(batch["target"][has], sp[has], num_sp)
        has_sp = torch.bincount(sp[has], minlength=num_sp) > 0
        loss_p, loss_sp = superpoint_distillation(f3d, target_sp, sp, has_sp)
        if self.cfg.vocab_tau > 0:
            vocab_p, vocab_sp = vocabulary_distillation(f3d, target_sp, sp, has_sp, self.vocab_text, self.cfg.vocab_tau)
            loss_p, loss_sp = loss_p + vocab_p, loss_sp + vocab_sp
        bank = self.bank.update(batch["bank_index"], f3d, int(batch["bank_size"]))
        st_p = st_sp = f3d.sum() * 0.0
        if step >= self.cfg.tesd_start:
            logits = self.classifier(f3d, self.vocab_text)
            logits_sp = self.classifier(scatter_mean(f3d, sp, num_sp), self.vocab_text)
            st_p, st_sp = self_distillation(logits, logits_sp, bank, sp, self.vocab_text)
        loss = loss_p + loss_sp + self.cfg.tesd_weight * (st_p + st_sp)
        return {"loss": loss, "distill_point": loss_p, "distill_superpoint": loss_sp, "tesd_point": st_p,
                "tesd_superpoint": st_sp}
