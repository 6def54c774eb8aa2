"""Mosaic3D (CVPR 2025): a sparse U-Net with Point Prompt Training trained on 3D mask-caption pairs, plus a
Mask3D-style instance decoder on top of the frozen encoder.

Signals and losses (``training_losses`` by ``stage``):

- "encoder": Eq. 4 only. The lifted 3D masks s_k of the data engine (``data_engine``) and their captions' text
  embeddings w_k reach the region contrastive loss: per point, a log-softmax over the batch's captions with a
  learnable temperature (``classifier``), mask-pooled per s_k. Optimiser SGD + OneCycle (``training``).
- "decoder": the encoder is frozen (no gradient, BatchNorm statistics fixed); the class-agnostic 3D masks
  (Segment3D's stand-in) are the decoder's targets and the concatenation of the captions Algorithm 1 merged into
  each is its caption target: L = 2 L_obj + 5 L_dice + 2 L_bce + 1 L_cap after Hungarian matching (``losses``).

No class label reaches either loss; novel classes appear only as words in captions. ``forward`` gives the unit
encoder features that ``MapSegmenter`` and the evaluation use; ``voxel_objects`` gives instances from a map, and
``window_objects`` from a window's features (the live 3D stage, ``models.semantic_stage.MapStage``, runs it after
each pass and folds the objects into the map's instance layer).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ov3dseg_core.models.backbones import offset_to_batch
from ov3dseg_core.models.heads import TextClassifier
from ov3dseg_core.models.methods.base import DistillationMethod, MethodConfig
from ov3dseg_core.models.methods.mosaic3d.data_engine import EngineConfig
from ov3dseg_core.models.methods.mosaic3d.decoder import DecoderConfig, InstanceDecoder, Objects, select_objects
from ov3dseg_core.models.methods.mosaic3d.losses import DecoderLossWeights, decoder_loss, region_contrastive_loss
from ov3dseg_core.models.voxel_inputs import grid_coordinates, point_features
from ov3dseg_core.registry import REGISTRY


@dataclass
class Mosaic3DConfig(MethodConfig):
    """backbone: REGISTRY "backbone" config (paper: Mosaic3D-SpUNet34C, PPT); condition: the PPT condition the
    simulated scenes run under (one of the backbone's conditions, released order ScanNet, ARKitScenes,
    Matterport3D, Structured3D, ScanNetPP); init_temperature: tau of Eqs. 4 and 7 at the start (learnable);
    engine: the data engine; decoder / loss_weights: the instance decoder and its loss; captions_per_mask:
    captions sampled per target mask and concatenated (not stated in the paper); min_mask_points: masks with fewer
    points in a training window are left out; momentum: SGD's; decoder_steps / decoder_lr /
    decoder_weight_decay: the decoder stage (AdamW, warm-up + cosine; the paper does not state it)."""

    backbone: dict[str, Any] = field(default_factory=lambda: {"type": "Mosaic3D-SpUNet34C"})
    condition: str = "ScanNet"
    init_temperature: float = 0.07
    engine: EngineConfig = field(default_factory=EngineConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    loss_weights: DecoderLossWeights = field(default_factory=DecoderLossWeights)
    captions_per_mask: int = 4
    min_mask_points: int = 5
    momentum: float = 0.9
    decoder_steps: int = 200
    decoder_lr: float = 1e-3
    decoder_weight_decay: float = 0.0


@REGISTRY.register("method", "Mosaic3D")
class Mosaic3D(DistillationMethod):
    config_class = Mosaic3DConfig

    def __init__(self, config: Mosaic3DConfig, vocab_text: torch.Tensor):
        super().__init__(config, vocab_text)
        self.backbone = REGISTRY.build("backbone", config.backbone, in_channels=3, out_channels=config.text_dim)
        self.classifier = TextClassifier(init_temperature=config.init_temperature)  # Eq. 4's tau
        self.decoder = InstanceDecoder(config.decoder, config.text_dim)
        self.caption_classifier = TextClassifier(init_temperature=config.init_temperature)  # Eq. 7's tau
        self.stage = "encoder"

    def forward(self, data: dict[str, torch.Tensor]) -> torch.Tensor:
        """grid_coord (N, 3), feat (N, 4) of which RGB is used, offset (B,) -> (N, D) unit features Z."""
        inputs = {"grid_coord": data["grid_coord"], "feat": data["feat"][:, :3], "offset": data["offset"],
                  "condition": self.cfg.condition}
        return F.normalize(self.backbone(inputs), dim=-1)

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per component (the encoder without PPT's context table, as the paper's 43.7M counts it)."""
        table = self.backbone.embedding_table
        context = table.weight.numel() if isinstance(table, torch.nn.Embedding) else 0
        counts = {"encoder": sum(p.numel() for p in self.backbone.parameters()) - context, "context_table": context,
                  "decoder": sum(p.numel() for p in self.decoder.parameters()), "temperatures": 2}
        return {**counts, "total": sum(counts.values())}

    def encoder_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.backbone.parameters()) + list(self.classifier.parameters())

    def freeze_encoder(self) -> None:
        """Switch to the decoder stage: encoder and Eq. 4's temperature frozen, BatchNorm in eval mode."""
        self.stage = "decoder"
        for p in self.encoder_parameters():
            p.requires_grad_(False)
        self.backbone.eval()

    def train(self, mode: bool = True) -> "Mosaic3D":
        super().train(mode)
        if self.stage == "decoder":
            self.backbone.eval()
        return self

    def training_losses(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        return self.encoder_losses(batch) if self.stage == "encoder" else self.decoder_losses(batch)

    def encoder_losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Eq. 4 over a batch of ``training.collate_mask_captions``: mask_point / mask_id (P,) pairs, mask_text
        (K, D) caption embedding per mask; identical captions share a softmax column."""
        z = self.forward(batch)
        text, column = torch.unique(batch["mask_text"], dim=0, return_inverse=True)
        loss = region_contrastive_loss(z, text, batch["mask_point"], batch["mask_id"], column,
                                       self.classifier.scale)
        return {"loss": loss, "region": loss, "tau": 1.0 / self.classifier.scale.detach()}

    def decoder_losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The decoder loss per scene of the batch, summed over the decoder's layers (each matched on its own) and
        averaged over scenes: proposal (N,) target mask ids (batch-wide, -1 none; scene b owns ids
        proposal_start[b] .. proposal_start[b + 1] - 1), proposal_text (M, D) and proposal_has_text (M,)."""
        with torch.no_grad():
            z = self.forward(batch)
        starts = batch["proposal_start"].tolist()
        bounds = [0] + batch["offset"].tolist()
        totals: dict[str, torch.Tensor] = {}
        for b in range(len(bounds) - 1):  # one step per scene
            rows = slice(bounds[b], bounds[b + 1])
            ids = torch.arange(starts[b], starts[b + 1], device=z.device)
            targets = ids[:, None] == batch["proposal"][rows][None]
            for objectness, logits, embeddings in self.decoder.forward_layers(z[rows], batch["coord"][rows]):
                losses = decoder_loss(objectness, logits, embeddings, targets, batch["proposal_text"][ids],
                                      batch["proposal_has_text"][ids], self.caption_classifier.scale,
                                      self.cfg.loss_weights)
                for k, v in losses.items():
                    totals[k] = totals.get(k, 0.0) + v / (len(bounds) - 1)
        return totals

    @torch.no_grad()
    def objects(self, data: dict[str, torch.Tensor], score_threshold: float = 0.2,
                min_points: int = 10) -> list[Objects]:
        """Instances per scene of a batch (grid_coord, feat, offset, coord (N, 3) metres): masks over each scene's
        rows, scores and text-space embeddings (``decoder.Objects``)."""
        z = self.forward(data)
        batch = offset_to_batch(data["offset"])
        return [self.window_objects(z[rows], data["coord"][rows], score_threshold, min_points)
                for rows in (torch.nonzero(batch == b)[:, 0] for b in range(len(data["offset"])))]

    @torch.no_grad()
    def window_objects(self, features: torch.Tensor, coord, score_threshold: float = 0.2,
                       min_points: int = 10) -> Objects:
        """The decoder's instances of one scene or map window from its encoder features Z (N, D) (``forward``)
        and coordinates (N, 3) metres (tensor or array), thresholded by score (``decoder.select_objects``)."""
        coord = torch.as_tensor(coord, dtype=torch.float32, device=features.device)
        return select_objects(*self.decoder(features.float(), coord), score_threshold, min_points)


def voxel_objects(model: Mosaic3D, keys: np.ndarray, positions: np.ndarray, colors: np.ndarray,
                  score_threshold: float = 0.2, min_points: int = 10) -> Objects:
    """Instances of a voxel map (or window): voxel indices (V, 3) int, mean positions (V, 3) metres (map frame,
    z up), colours (V, 3) uint8 -> ``Objects`` with masks over the V voxels. Rank them for a text query with
    ``Objects.rank(text_embedding)``."""
    device = next(model.parameters()).device
    data = {"grid_coord": torch.from_numpy(grid_coordinates(keys)).to(device),
            "feat": torch.from_numpy(point_features(colors, positions)).to(device),
            "coord": torch.from_numpy(np.asarray(positions, dtype=np.float32)).to(device),
            "offset": torch.tensor([len(keys)], device=device)}
    return model.eval().objects(data, score_threshold, min_points)[0]
