"""GeoGuide (hierarchical geometric guidance, CVPR 2026; from its summary card): a frozen pretrained 3D backbone,
a trainable MLP adapter into the text space, and three training-only modules.

Signals and losses:

- F_3d^G (N, C1): the frozen backbone's last decoder features (any registered backbone with a checkpoint; here the
  embedded default's SpUNet, trained on simulated scenes with base-class labels and captions), no gradient;
- F_3d^sem = normalize(adapter(F_3d^G)) (N, D): the model's output, used at inference alone (no extra cost);
- F_2d: the fused 2D teacher target (``methods.data``; capability fusion = the paper's "SAS*" features);
- USD (lambda1): reliability logits W = MLP([S_3d^G - F_3d^G; S_2d - F_2d]) (S = superpoint means), normalised by
  a softmax within each superpoint (the card leaves the normalisation open), pool F_2d into S_bar_2d; L_sp =
  1 - cos at point level (S_bar_2d broadcast) and superpoint level (against the mean of F_3d^sem);
- IMR (lambda2): each class-agnostic instance proposal M_i loses ``occlusion`` of its points at random; the rest
  of F_3d^sem is mean-pooled, passed through a Linear layer, and M_hat_i = sigmoid(scale * cos(F_i, F_3d^sem))
  over the points of the same scene is trained with BCE against M_i (scale 1 = the card's form);
- IIRC (lambda3): MSE between the cosine Gram matrices of instance-pooled F_3d^G and F_3d^sem, plus the same over
  superpoints.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ov3dseg_core.models.backbones import offset_to_batch
from ov3dseg_core.models.methods.base import DistillationMethod, MethodConfig
from ov3dseg_core.models.methods.losses import cosine_distance, gram_mse
from ov3dseg_core.models.pooling import scatter_mean, scatter_softmax, scatter_weighted_mean
from ov3dseg_core.registry import REGISTRY
from ov3dseg_core.training.checkpoint import load_checkpoint


@dataclass
class GeoGuideConfig(MethodConfig):
    """backbone_checkpoint: an ov3dseg checkpoint whose ``backbone.*`` weights (and backbone config, input
    channels) are taken ("default" = the embedded default); backbone / in_channels: filled from it; hidden: adapter
    width; lambda_sp / lambda_mask / lambda_sim: lambda1..3; occlusion: fraction of each proposal hidden in IMR;
    mask_logit_scale: IMR's cos scale; min_proposal_points: smaller proposals are left out of IMR and IIRC;
    learned_reliability: USD's learned weights W (False: every point of a superpoint weighs the same, plain superpoint
    distillation, the "w/o USD" ablation)."""

    backbone_checkpoint: str = "default"
    backbone: dict[str, Any] = field(default_factory=dict)
    in_channels: int = 4
    hidden: int = 256
    lambda_sp: float = 1.0
    lambda_mask: float = 0.5
    lambda_sim: float = 1.0
    occlusion: float = 0.5
    mask_logit_scale: float = 1.0
    min_proposal_points: int = 10
    learned_reliability: bool = True


def resolve_backbone(cfg: GeoGuideConfig) -> tuple[GeoGuideConfig, dict[str, torch.Tensor]]:
    """The config with the source checkpoint's backbone config and input channels, and its backbone weights."""
    from dataclasses import replace

    from ov3dseg_core.models.map_segmenter import resolve_checkpoint

    ckpt = load_checkpoint(resolve_checkpoint(cfg.backbone_checkpoint))
    model = ckpt.config.get("model", {})
    state = {k[len("backbone."):]: v.float() for k, v in ckpt.state_dict.items() if k.startswith("backbone.")}
    if not state:
        raise KeyError(f"{cfg.backbone_checkpoint}: no backbone.* weights")
    backbone = dict(model.get("backbone") or {"type": "SpUNet14A"})
    return replace(cfg, backbone=backbone, in_channels=int(model.get("in_channels", cfg.in_channels))), state


@REGISTRY.register("method", "GeoGuide")
class GeoGuide(DistillationMethod):
    config_class = GeoGuideConfig

    def __init__(self, config: GeoGuideConfig, vocab_text: torch.Tensor,
                 backbone_state: dict[str, torch.Tensor] | None = None):
        super().__init__(config, vocab_text)
        if not config.backbone:
            raise ValueError("GeoGuide needs a backbone config (resolve_backbone fills it from the checkpoint)")
        self.backbone = REGISTRY.build("backbone", config.backbone, in_channels=config.in_channels, out_channels=0)
        if backbone_state is not None:
            missing, _ = self.backbone.load_state_dict(backbone_state, strict=False)
            if missing:
                raise KeyError(f"backbone weights missing from the checkpoint: {missing[:5]}")
        self.backbone.requires_grad_(False)
        c1, d = self.backbone.out_channels, config.text_dim
        self.adapter = nn.Sequential(nn.Linear(c1, config.hidden), nn.LayerNorm(config.hidden), nn.GELU(),
                                     nn.Linear(config.hidden, d))
        self.reliability = nn.Sequential(nn.Linear(c1 + d, config.hidden // 2), nn.GELU(),
                                         nn.Linear(config.hidden // 2, 1))
        self.mask_proj = nn.Linear(d, d)

    @classmethod
    def resolve(cls, config: GeoGuideConfig) -> tuple[GeoGuideConfig, dict]:
        """Training set-up: the backbone config and weights from ``backbone_checkpoint``."""
        config, state = resolve_backbone(config)
        return config, {"backbone_state": state}

    def train(self, mode: bool = True) -> "GeoGuide":
        super().train(mode)
        self.backbone.eval()  # frozen: batch-norm statistics stay those of the checkpoint
        return self

    def geometry(self, data: dict[str, torch.Tensor]) -> torch.Tensor:
        """F_3d^G (N, C1) of the frozen backbone."""
        with torch.no_grad():
            return self.backbone({"grid_coord": data["grid_coord"], "feat": data["feat"], "offset": data["offset"]})

    def forward(self, data: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.normalize(self.adapter(self.geometry(data)), dim=-1)

    def training_losses(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        geo = self.geometry(batch)
        sem = F.normalize(self.adapter(geo), dim=-1)
        sp, num_sp = batch["superpoint"], int(batch["num_superpoints"])
        usd = self._usd(geo, sem, batch["target"], batch["has_target"], sp, num_sp)
        mask, sim_inst = self._instances(geo, sem, batch)
        sim_sp = gram_mse(scatter_mean(geo, sp, num_sp), scatter_mean(sem, sp, num_sp))
        sim = sim_inst + sim_sp
        cfg = self.cfg
        loss = cfg.lambda_sp * usd + cfg.lambda_mask * mask + cfg.lambda_sim * sim
        return {"loss": loss, "usd": usd, "imr": mask, "iirc": sim}

    def _usd(self, geo, sem, target, has, sp, num_sp) -> torch.Tensor:
        """Uncertainty-weighted superpoint distillation over the points with a 2D target."""
        geo_h, f2d, sp_h = geo[has], F.normalize(target[has], dim=-1), sp[has]
        if self.cfg.learned_reliability:
            s_geo = scatter_mean(geo_h, sp_h, num_sp)[sp_h]
            s_2d = scatter_mean(f2d, sp_h, num_sp)[sp_h]
            logits = self.reliability(torch.cat([s_geo - geo_h, s_2d - f2d], dim=1)).squeeze(1)
            pooled = scatter_weighted_mean(f2d, scatter_softmax(logits, sp_h, num_sp), sp_h, num_sp)  # S_bar_2d
        else:
            pooled = scatter_mean(f2d, sp_h, num_sp)
        has_sp = torch.bincount(sp_h, minlength=num_sp) > 0
        points = has_sp[sp]
        return (cosine_distance(sem[points], pooled[sp[points]])
                + cosine_distance(scatter_mean(sem, sp, num_sp)[has_sp], pooled[has_sp]))

    def _instances(self, geo, sem, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_mask, instance-level Gram MSE) over the batch's proposals."""
        proposal, num = batch["proposal"], int(batch["num_proposals"])
        zero = sem.sum() * 0.0
        inside = proposal >= 0
        if num == 0:
            return zero, zero
        size = torch.bincount(proposal[inside], minlength=num)
        kept = inside & (torch.rand(len(proposal), device=sem.device) >= self.cfg.occlusion)
        kept_size = torch.bincount(proposal[kept], minlength=num)
        valid = (size >= self.cfg.min_proposal_points) & (kept_size > 0)
        if not bool(valid.any()):
            return zero, zero
        partial = scatter_mean(sem[kept], proposal[kept], num)[valid]
        queries = F.normalize(self.mask_proj(partial), dim=-1)
        logits = self.cfg.mask_logit_scale * queries @ sem.t()                        # (R, N)
        ids = torch.arange(num, device=sem.device)[valid]
        target = (proposal[None] == ids[:, None]).float()
        batch_of = offset_to_batch(batch["offset"])
        proposal_batch = torch.zeros(num, dtype=torch.long, device=sem.device).index_put_(
            (proposal[inside],), batch_of[inside])[valid]
        same = (proposal_batch[:, None] == batch_of[None]).float()                     # the proposal's own scene
        bce = F.binary_cross_entropy_with_logits(logits, target, weight=same, reduction="sum") / same.sum()
        sim = gram_mse(scatter_mean(geo[inside], proposal[inside], num)[valid],
                       scatter_mean(sem[inside], proposal[inside], num)[valid])
        return bce, sim
