"""Model checkpoints in safetensors, with the config and the vocabulary embedded as metadata.

A checkpoint is one ``.safetensors`` file holding the model's state dict; its metadata carries
``ov3dseg_format``, ``config`` (JSON), ``vocabulary`` (JSON list of class names), ``step`` and ``extra`` (JSON).
Optimizer/scheduler state for resuming lives beside it in ``<name>.train_state.pt``. Both are written atomically.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ov3dseg_core.atomic_write import atomic_path
from ov3dseg_core.safetensors_file import CheckpointError, read_format_metadata

FORMAT = "ov3dseg-checkpoint/1"


@dataclass
class Checkpoint:
    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any]
    vocabulary: list[str]
    step: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` to ``path`` (.safetensors) atomically; tensors are stored contiguous on CPU."""
    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in ckpt.state_dict.items()}
    metadata = {
        "ov3dseg_format": FORMAT,
        "config": json.dumps(ckpt.config),
        "vocabulary": json.dumps(list(ckpt.vocabulary)),
        "step": str(int(ckpt.step)),
        "extra": json.dumps(ckpt.extra),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The decoded metadata of a checkpoint without loading its tensors."""
    meta = read_format_metadata(path, FORMAT)
    return {
        "config": json.loads(meta["config"]),
        "vocabulary": json.loads(meta["vocabulary"]),
        "step": int(meta["step"]),
        "extra": json.loads(meta.get("extra", "{}")),
    }


def split_name(config: dict[str, Any]) -> str:
    """The base/novel split a checkpoint's config names: its "split" (XMask3D configs keep it in "model");
    KeyError when it names none."""
    return config.get("split") or config["model"]["split"]


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`; CheckpointError when corrupt or foreign."""
    meta = read_metadata(path)
    try:
        state = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt: {exc}") from exc
    return Checkpoint(state_dict=state, **meta)


def update_extra(path: str | Path, entries: dict[str, Any], out: str | Path | None = None) -> Path:
    """Rewrite checkpoint ``path`` (or write a copy to ``out``) atomically with ``entries`` merged into its
    ``extra`` metadata; tensors, config and vocabulary are kept as they are."""
    ckpt = load_checkpoint(path)
    ckpt.extra = {**ckpt.extra, **entries}
    return save_checkpoint(path if out is None else out, ckpt)


def train_state_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.stem + ".train_state.pt")


def save_train_state(path: str | Path, state: dict[str, Any]) -> None:
    """Optimizer, scheduler, scaler and RNG state for resuming, beside checkpoint ``path``."""
    with atomic_path(train_state_path(path)) as tmp:
        torch.save(state, tmp)


def load_train_state(path: str | Path) -> dict[str, Any] | None:
    p = train_state_path(path)
    return torch.load(p, map_location="cpu", weights_only=True) if p.exists() else None


def export_half(src: str | Path, dst: str | Path) -> Path:
    """Copy checkpoint ``src`` to ``dst`` with floating-point tensors in float16 (for shipping; loaders cast back)."""
    ckpt = load_checkpoint(src)
    ckpt.state_dict = {k: v.half() if v.is_floating_point() else v for k, v in ckpt.state_dict.items()}
    return save_checkpoint(dst, ckpt)
