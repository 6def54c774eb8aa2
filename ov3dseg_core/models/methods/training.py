"""Setting up a method's training from a ``TrainConfig`` whose ``method`` mapping names it (``ov3dseg train``)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ov3dseg_core.atomic_write import atomic_path
from ov3dseg_core.config import to_dict
from ov3dseg_core.data.frames import Scene
from ov3dseg_core.models.methods.base import MethodConfig, method_class, method_config
from ov3dseg_core.models.methods.data import DistillWindowDataset, collate_distill, teacher_voxel_features
from ov3dseg_core.models.teachers.capability import SimulatedSynthesizer, estimate_capability
from ov3dseg_core.models.teachers.fusion import fuse_teachers


@dataclasses.dataclass
class MethodTraining:
    model: torch.nn.Module
    dataset: DistillWindowDataset
    collate_fn: Callable
    vocabulary: list[str]
    capability: dict[str, list[float]]
    method: dict                     # the method mapping as trained (with resolved fields), for the checkpoint


def teacher_capability(cfg: MethodConfig, vocabulary: Sequence[str], vocab_text: torch.Tensor,
                       label_names: Sequence[str], embed, cache_dir: str | Path) -> dict[str, np.ndarray]:
    """Per-teacher capability vectors over ``vocabulary`` (SimulatedSynthesizer stand-in for SD + SAM), cached."""
    from ov3dseg_core.models.methods.data import build_teachers

    tag = json.dumps([list(vocabulary), vars(cfg.teachers), cfg.prompt_template, cfg.text_encoder], default=str)
    path = Path(cache_dir) / f"capability_{hashlib.sha1(tag.encode()).hexdigest()[:10]}.json"
    if path.is_file():
        return {k: np.asarray(v, np.float32) for k, v in json.loads(path.read_text()).items()}
    teachers = build_teachers(cfg.teachers, label_names, embed, cfg.teachers.seed + 7919)
    scores = estimate_capability(vocabulary, vocab_text, SimulatedSynthesizer(label_names, seed=cfg.teachers.seed),
                                 teachers, cfg.teachers.capability_images)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps({k: v.round(4).tolist() for k, v in scores.items()}))
    return scores


def prepare_method_training(cfg, split, scenes: Sequence[Scene], fused: Sequence, encoder) -> MethodTraining:
    """Model, dataset and collate function for ``cfg.method`` (``cfg``: training.config.TrainConfig) on the
    training ``scenes`` and their fused maps ``fused``."""
    from ov3dseg_core.models.text import CachedTextEncoder, apply_template

    mcfg = method_config(cfg.method)
    cls = method_class(cfg.method)
    extra = {}
    if hasattr(cls, "resolve"):
        mcfg, extra = cls.resolve(mcfg)
    vocabulary = list(mcfg.vocabulary) or list(split.evaluated)
    cached = CachedTextEncoder(encoder)
    vocab_text = cached.encode(apply_template(vocabulary, mcfg.prompt_template)).float()
    cache_dir = Path(cfg.data.cache_dir) / "teachers"
    capability = teacher_capability(mcfg, vocabulary, vocab_text, scenes[0].label_names, cached.encode, cache_dir)
    print("teacher capability per class: " + "; ".join(
        f"{name}: " + ", ".join(f"{c} {v:.2f}" for c, v in zip(vocabulary, s)) for name, s in capability.items()))
    cap = torch.from_numpy(np.stack([capability["dense"], capability["mask"]]))
    targets, has, superpoints, proposals = [], [], [], []
    for i, (scene, fs) in enumerate(tqdm(list(zip(scenes, fused)), desc="teacher features", unit="scene")):
        t = teacher_voxel_features(scene, fs, mcfg.teachers, cached.encode, cache_dir, mcfg.superpoints,
                                   mcfg.teachers.seed + i)
        feats = [torch.from_numpy(t["dense"]), torch.from_numpy(t["mask"])]
        seen = [torch.from_numpy(t["dense_count"] > 0), torch.from_numpy(t["mask_count"] > 0)]
        target, ok = fuse_teachers(mcfg.fusion, feats, seen, vocab_text, cap, mcfg.tau)
        targets.append(target.half())
        has.append(ok)
        superpoints.append(t["superpoint"])
        proposals.append(t["proposal"])
    dataset = DistillWindowDataset(fused, targets, has, superpoints, proposals, cfg.windows, seed=cfg.trainer.seed)
    model = cls(mcfg, vocab_text, **extra)
    method = {"type": cfg.method["type"], **to_dict(mcfg), "vocabulary": vocabulary}
    return MethodTraining(model, dataset, partial(collate_distill, bank_size=dataset.bank_size), vocabulary,
                          {k: v.tolist() for k, v in capability.items()}, method)


def load_method(method: dict, state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A trained method from its checkpoint's ``method`` mapping and state dict."""
    model = method_class(method)(method_config(method), state_dict["vocab_text"])
    model.load_state_dict({k: v.float() for k, v in state_dict.items()})
    return model
