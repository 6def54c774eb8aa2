"""Training Mosaic3D from a ``TrainConfig`` (``ov3dseg train mosaic3d_tiny``): data engine, then the encoder
(Eq. 4, SGD + OneCycle, OUT/encoder/), then the instance decoder on the frozen encoder (OUT/).

Samples are map windows of the fused training scenes (``map_windows``) carrying, per window, the data engine's
lifted masks that keep at least ``min_mask_points`` voxels in it (with their caption embeddings) and the
class-agnostic target masks with the captions Algorithm 1 merged into them (``captions_per_mask`` sampled and
concatenated, then embedded).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ov3dseg_core.config import to_dict
from ov3dseg_core.models.methods.base import method_config
from ov3dseg_core.models.methods.mosaic3d.data_engine import dataset_statistics, format_statistics, scene_dataset
from ov3dseg_core.models.methods.mosaic3d.model import Mosaic3D, Mosaic3DConfig
from ov3dseg_core.models.voxel_inputs import grid_coordinates
from ov3dseg_core.training.map_windows import FusedScene, MapWindowConfig, MapWindowDataset
from ov3dseg_core.training.trainer import Trainer


def window_masks(mask_point: np.ndarray, mask_id: np.ndarray, local_of: np.ndarray, min_points: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scene mask pairs (P,) restricted to a window: local_of (V,) the window row of each scene point (-1
    outside). Returns window pairs (point, mask) with masks renumbered 0..K'-1 and the kept scene mask ids (K',)."""
    local = local_of[mask_point]
    inside = local >= 0
    local, mask_id = local[inside], mask_id[inside]
    count = np.bincount(mask_id, minlength=int(mask_id.max()) + 1 if len(mask_id) else 0)
    kept = np.flatnonzero(count >= min_points)
    keep = np.isin(mask_id, kept)
    return local[keep], np.searchsorted(kept, mask_id[keep]), kept


class MaskCaptionWindowDataset(MapWindowDataset):
    """Windows of fused scenes with Mosaic3D's mask-caption data. data[i]: ``data_engine.scene_dataset`` of scene
    i; caption_text[i]: (K_i, D) embeddings of its captions; embed: the (cached) text encoder for concatenated
    captions. A sample: coord, grid_coord, feat as the default model gets them; mask_point / mask_id (P,),
    mask_text (K, D); proposal (N,) target ids (-1 none), proposal_text (M, D), proposal_has_text (M,)."""

    def __init__(self, scenes: Sequence[FusedScene], data: Sequence[dict[str, Any]],
                 caption_text: Sequence[torch.Tensor], embed: Callable[[list[str]], torch.Tensor],
                 config: MapWindowConfig | None = None, captions_per_mask: int = 4, min_mask_points: int = 5,
                 seed: int = 0):
        super().__init__(scenes, [], embed, config, seed)
        self.data, self.caption_text = list(data), list(caption_text)
        self.captions_per_mask, self.min_mask_points = captions_per_mask, min_mask_points

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng((self.seed, self.epoch, index))
        s = index // self.cfg.samples_per_scene
        scene, data = self.scenes[s], self.data[s]
        select, points, feats, keys = self._sample(scene, rng)
        local_of = np.full(len(scene.keys), -1, dtype=np.int64)
        local_of[select] = np.arange(len(select))
        mask_point, mask_id, kept = window_masks(data["mask_point"], data["mask_id"], local_of,
                                                 self.min_mask_points)
        proposal, texts = self._targets(data, select, rng)
        text = self.embed_text([t or "" for t in texts]).float() if texts else torch.zeros(0, self.caption_dim)
        return {
            "coord": torch.from_numpy(points),
            "grid_coord": torch.from_numpy(grid_coordinates(keys)),
            "feat": torch.from_numpy(feats),
            "mask_point": torch.from_numpy(mask_point),
            "mask_id": torch.from_numpy(mask_id.astype(np.int64)),
            "mask_text": self.caption_text[s][torch.from_numpy(kept)].float(),
            "proposal": torch.from_numpy(proposal),
            "proposal_text": text,
            "proposal_has_text": torch.tensor([t is not None for t in texts], dtype=torch.bool),
        }

    @property
    def caption_dim(self) -> int:
        return self.caption_text[0].shape[1]

    def _targets(self, data: dict[str, Any], select: np.ndarray, rng: np.random.Generator
                 ) -> tuple[np.ndarray, list[str | None]]:
        """Target mask id per window voxel (-1 none; masks with < min_mask_points voxels dropped) and each
        target's concatenated sampled captions (None: Algorithm 1 merged none into it)."""
        scene_ids = data["proposal"][select]
        ids, local, count = np.unique(scene_ids, return_inverse=True, return_counts=True)
        valid = (ids >= 0) & (count >= self.min_mask_points)
        new = np.cumsum(valid) - 1
        proposal = np.where(valid[local], new[local], -1).astype(np.int64)
        texts = []
        for pid in ids[valid]:  # one step per target mask
            merged = data["merged"][int(pid)]
            if not merged:
                texts.append(None)
                continue
            chosen = rng.permutation(merged)[: self.captions_per_mask]
            texts.append(", ".join(data["captions"][int(k)] for k in chosen))
        return proposal, texts


def collate_mask_captions(samples: Sequence[dict]) -> dict:
    """Concatenated samples: per-point tensors stacked, mask pairs and target ids shifted batch-wide, ``offset``
    (B,) cumulative point counts, ``proposal_start`` (B + 1,) the first target id of each sample."""
    counts = torch.tensor([len(s["coord"]) for s in samples])
    point_shift = (torch.cumsum(counts, 0) - counts).tolist()
    mask_shift = np.cumsum([0] + [len(s["mask_text"]) for s in samples])
    target_start = np.cumsum([0] + [len(s["proposal_text"]) for s in samples])
    out = {k: torch.cat([s[k] for s in samples]) for k in ("coord", "grid_coord", "feat", "mask_text",
                                                           "proposal_text", "proposal_has_text")}
    out["mask_point"] = torch.cat([s["mask_point"] + p for s, p in zip(samples, point_shift)])
    out["mask_id"] = torch.cat([s["mask_id"] + int(m) for s, m in zip(samples, mask_shift)])
    out["proposal"] = torch.cat([torch.where(s["proposal"] >= 0, s["proposal"] + int(t), -1)
                                 for s, t in zip(samples, target_start)])
    out.update(offset=torch.cumsum(counts, 0), proposal_start=torch.from_numpy(target_start),
               batch_size=len(samples))
    return out


def use_sgd_onecycle(trainer: Trainer, params: list[torch.nn.Parameter], momentum: float) -> None:
    """The paper's encoder optimiser: SGD (trainer lr as OneCycle's max, its weight decay) with OneCycleLR over
    max_steps."""
    cfg = trainer.cfg
    trainer.optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=momentum, weight_decay=cfg.weight_decay)
    trainer.scheduler = torch.optim.lr_scheduler.OneCycleLR(trainer.optimizer, max_lr=cfg.lr,
                                                            total_steps=max(1, cfg.max_steps))


def build_datasets(cfg, scenes, fused, mcfg: Mosaic3DConfig, embed, out: Path) -> list[dict[str, Any]]:
    """Run (or load) the data engine on every training scene; prints and writes OUT/data_engine.json."""
    cache = Path(cfg.data.cache_dir) / "mosaic3d"
    data = [scene_dataset(scene, fs, mcfg.engine, mcfg.superpoints, cache, mcfg.engine.seed + i)
            for i, (scene, fs) in enumerate(tqdm(list(zip(scenes, fused)), desc="data engine", unit="scene"))]
    stats = dataset_statistics(data)
    print("mask-caption dataset (Tab. A1):\n" + format_statistics(stats))
    out.mkdir(parents=True, exist_ok=True)
    (out / "data_engine.json").write_text(json.dumps(stats, indent=2))
    return data


def mosaic3d_trainer(cfg, split, out: Path, resume: bool = True) -> Trainer:
    """Data engine and encoder stage (trained here, OUT/encoder/last.safetensors); returns the decoder stage's
    ``Trainer`` (OUT/, encoder frozen) for the caller to ``fit``. ``cfg``: training.config.TrainConfig."""
    from ov3dseg_core.models.text import CachedTextEncoder, apply_template, build_text_encoder
    from ov3dseg_core.training.map_windows import fused_scenes
    from ov3dseg_core.training.scenes import training_scenes

    mcfg: Mosaic3DConfig = method_config(cfg.method)
    embed = CachedTextEncoder(build_text_encoder(mcfg.text_encoder), max_entries=100_000).encode
    vocabulary = list(mcfg.vocabulary) or list(split.evaluated)
    raw = training_scenes(cfg.data)
    fused = fused_scenes(raw, cfg.windows, cfg.data.cache_dir)
    data = build_datasets(cfg, raw, fused, mcfg, embed, out)
    caption_text = [embed(list(d["captions"])).half() for d in data]
    dataset = MaskCaptionWindowDataset(fused, data, caption_text, embed, cfg.windows, mcfg.captions_per_mask,
                                       mcfg.min_mask_points, seed=cfg.trainer.seed)
    model = Mosaic3D(mcfg, embed(apply_template(vocabulary, mcfg.prompt_template)).float())
    method = {"type": "Mosaic3D", **to_dict(mcfg), "vocabulary": vocabulary}
    checkpoint_config = to_dict(dataclasses.replace(cfg, method=method))
    print(f"Mosaic3D encoder: {len(fused)} fused scenes, {len(dataset)} windows an epoch; "
          f"{sum(p.numel() for p in model.backbone.parameters()):,} encoder parameters")
    encoder = Trainer(model, dataset, collate_mask_captions, cfg.trainer, out / "encoder", checkpoint_config,
                      vocabulary)
    use_sgd_onecycle(encoder, model.encoder_parameters(), mcfg.momentum)
    print(f"encoder checkpoint: {encoder.fit(resume=resume).checkpoint}")
    model.freeze_encoder()
    decoder_cfg = dataclasses.replace(cfg.trainer, max_steps=mcfg.decoder_steps, lr=mcfg.decoder_lr,
                                      weight_decay=mcfg.decoder_weight_decay)
    print(f"Mosaic3D decoder: {sum(p.numel() for p in model.decoder.parameters()):,} parameters, encoder frozen")
    return Trainer(model, dataset, collate_mask_captions, decoder_cfg, out, checkpoint_config, vocabulary)
