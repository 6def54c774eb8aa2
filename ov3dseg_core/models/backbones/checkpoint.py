"""Load released Pointcept / Mosaic3D SpUNet weights into ``SpUNet``.

Key mapping: our module trees are Pointcept's SpUNet-v1m1 / v1m3 trees, so a checkpoint key maps to ours by
dropping the wrapper prefix in front of the stem conv (``conv_input.0.weight`` in v1m1, ``conv_input.conv.weight``
in v1m3):

    module.backbone.conv_input.0.weight    (Pointcept DefaultSegmentor saved under DDP)  -> conv_input.0.weight
    backbone.enc.0.block0.conv1.weight     (Pointcept, single GPU)                       -> enc.0.block0.conv1.weight
    net.dec.3.block0.proj.0.weight         (Mosaic3D Lightning module, v1m1)             -> dec.3.block0.proj.0.weight
    net.backbone.down.0.bn.bns.1.weight    (Mosaic3D / Pointcept PPT, v1m3)              -> down.0.bn.bns.1.weight
    final.weight / final.bias              (Pointcept with num_classes > 0; Mosaic3D v1m1 has no bias)

Keys outside the backbone (segmentation heads, optimiser state) are reported as ``ignored``. Weights are spconv 2.x
layout (out, k, k, k, in), as both projects save them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

class CheckpointError(ValueError):
    """A checkpoint that cannot be read or holds no SpUNet weights."""


@dataclass
class CheckpointReport:
    """What ``load_pointcept_checkpoint`` did, by model state-dict key."""

    prefix: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)


def read_state_dict(path: str | Path, weights_only: bool = True) -> dict[str, torch.Tensor]:
    """Tensors of a ``.pth``/``.ckpt``/``.safetensors`` file, unwrapped from ``state_dict``/``model`` entries.

    ``weights_only=False`` unpickles arbitrary objects (Lightning checkpoints with pickled configs): trusted files only.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        data: Any = torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError or ValueError depending on the file
        hint = " (a Lightning checkpoint with pickled objects? pass weights_only=False for a trusted file)"
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}{hint if weights_only else ''}") from exc
    for key in ("state_dict", "model"):
        if isinstance(data, Mapping) and isinstance(data.get(key), Mapping):
            data = data[key]
    if not isinstance(data, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(data).__name__}, not a state dict")
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


def load_pointcept_checkpoint(
    model: nn.Module, path: str | Path, strict: bool = False, weights_only: bool = True
) -> CheckpointReport:
    """Copy a Pointcept/Mosaic3D SpUNet checkpoint into ``model`` (an ``SpUNet``); returns what matched.

    Tensors whose shape differs from the model's (e.g. a final layer for another class count) are skipped and
    listed in ``mismatched``. ``strict=True`` raises CheckpointError unless every key matched.
    """
    state = read_state_dict(path, weights_only=weights_only)
    own = model.state_dict()
    # The stem conv weight (the model's first conv_input weight): what precedes it in a checkpoint key is the prefix.
    anchor = next(k for k in own if k.startswith("conv_input.") and k.endswith(".weight"))
    anchors = [k for k in state if k.endswith(anchor) and (k == anchor or k[: -len(anchor)].endswith("."))]
    if len(anchors) != 1:
        raise CheckpointError(f"{path}: expected one '*{anchor}' key to locate the backbone, found {anchors}")
    prefix = anchors[0][: -len(anchor)]
    report = CheckpointReport(prefix=prefix)
    to_load = {}
    for key, tensor in state.items():
        if not key.startswith(prefix):
            report.ignored.append(key)
            continue
        name = key[len(prefix):]
        if name not in own:
            report.unexpected.append(name)
        elif tuple(tensor.shape) != tuple(own[name].shape):
            report.mismatched.append((name, tuple(tensor.shape), tuple(own[name].shape)))
        else:
            to_load[name] = tensor
    report.missing = sorted(set(own) - set(to_load) - {m[0] for m in report.mismatched})
    report.loaded = sorted(to_load)
    if strict and not report.complete:
        raise CheckpointError(
            f"{path} does not match the model: missing {report.missing}, unexpected {report.unexpected}, "
            f"shape mismatches {report.mismatched}"
        )
    model.load_state_dict(to_load, strict=False)
    return report
