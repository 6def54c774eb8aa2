"""Load released Pointcept / Mosaic3D SpUNet weights into ``SpUNet``.

Key mapping: our module trees are Pointcept's SpUNet-v1m1 / v1m3 trees, so a checkpoint key maps to ours by
dropping the wrapper prefix in front of the stem conv (``conv_input.0.weight`` in v1m1, ``conv_input.conv.weight``
in v1m3):

    module.backbone.conv_input.0.weight    (Pointcept DefaultSegmentor saved under DDP)  -> conv_input.0.weight
    backbone.enc.0.block0.conv1.weight     (Pointcept, single GPU)                       -> enc.0.block0.conv1.weight
    net.dec.3.block0.proj.0.weight         (Mosaic3D Lightning module, v1m1)             -> dec.3.block0.proj.0.weight
    net.backbone.down.0.bn.bns.1.weight    (Mosaic3D / Pointcept PPT, v1m3)              -> down.0.bn.bns.1.weight
    net.embedding_table.weight             (PPT's context table, beside its backbone)      -> embedding_table.weight
    final.weight / final.bias              (Pointcept with num_classes > 0; Mosaic3D v1m1 has no bias)

Keys outside the backbone (segmentation heads, optimiser state) are reported as ``ignored``. Weights are spconv 2.x
layout (out, k, k, k, in), as both projects save them, except the 1x1 convs: Pointcept's are spconv's own
(``pointwise_layout="in_out"``), Mosaic3D's ``Custom1x1Subm3d`` reads the same tensor transposed
(``pointwise_layout="out_in"``, converted on load; see ``layouts.py``).
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ov3dseg_core.models.backbones import tensor_pickle
from ov3dseg_core.models.backbones.layouts import out_in_pointwise_to_spconv, pointwise_weight_keys
from ov3dseg_core.safetensors_file import CheckpointError

POINTWISE_LAYOUTS = ("in_out", "out_in")
PPT_KEYS = ("embedding_table.weight",)
"""Model keys that PPT checkpoints keep beside the backbone (``<wrapper>.embedding_table.weight``)."""


@dataclass
class CheckpointReport:
    """What ``load_pointcept_checkpoint`` did, by model state-dict key."""

    prefix: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    transposed: list[str] = field(default_factory=list)
    skipped_objects: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)


def read_checkpoint(path: str | Path, weights_only: bool = True) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Tensors of a ``.pth``/``.ckpt``/``.safetensors`` file, unwrapped from ``state_dict``/``model`` entries, and
    the pickled objects skipped to get them.

    With ``weights_only`` a pickle that ``torch.load(weights_only=True)`` refuses (Lightning hyper-parameters,
    NumPy scalars) is read by ``tensor_pickle``, which rebuilds the tensors and replaces every other object by an
    inert stand-in; their class names come back as the second value. ``weights_only=False`` unpickles everything
    (runs code the file names): trusted files only.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path)), []
    try:
        data, skipped = _torch_load(path, weights_only)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError or ValueError depending on the file
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    for key in ("state_dict", "model"):
        if isinstance(data, Mapping) and isinstance(data.get(key), Mapping):
            data = data[key]
    if not isinstance(data, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(data).__name__}, not a state dict")
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}, skipped


def _torch_load(path: Path, weights_only: bool) -> tuple[Any, list[str]]:
    """``torch.load`` on the CPU; with ``weights_only``, pickles it refuses go through ``tensor_pickle``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only), []
    except pickle.UnpicklingError:
        if not weights_only:
            raise
    return tensor_pickle.load_tensors(path)


def read_state_dict(path: str | Path, weights_only: bool = True) -> dict[str, torch.Tensor]:
    """The tensors of ``read_checkpoint``."""
    return read_checkpoint(path, weights_only)[0]


def load_pointcept_checkpoint(
    model: nn.Module,
    path: str | Path,
    strict: bool = False,
    weights_only: bool = True,
    pointwise_layout: str = "in_out",
) -> CheckpointReport:
    """Copy a Pointcept/Mosaic3D SpUNet checkpoint file into ``model`` (an ``SpUNet``): ``read_checkpoint`` then
    ``load_pointcept_state``."""
    state, skipped = read_checkpoint(path, weights_only=weights_only)
    report = load_pointcept_state(model, state, strict=strict, pointwise_layout=pointwise_layout, source=str(path))
    report.skipped_objects = skipped
    return report


def load_pointcept_state(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    strict: bool = False,
    pointwise_layout: str = "in_out",
    source: str = "checkpoint",
) -> CheckpointReport:
    """Copy a Pointcept/Mosaic3D SpUNet state dict into ``model``; returns what matched.

    ``pointwise_layout``: "in_out" for Pointcept (and our own) checkpoints, "out_in" for Mosaic3D's, whose 1x1
    weights are transposed into spconv's reading (listed in ``transposed``). Tensors whose shape differs from the
    model's (e.g. a final layer for another class count) are skipped and listed in ``mismatched``.
    ``strict=True`` raises CheckpointError (naming ``source``) unless every key matched.
    """
    if pointwise_layout not in POINTWISE_LAYOUTS:
        raise ValueError(f"pointwise_layout must be one of {POINTWISE_LAYOUTS}, got {pointwise_layout!r}")
    own = model.state_dict()
    prefix = _backbone_prefix(state, own, source)
    names = {key: key[len(prefix):] for key in state if key.startswith(prefix)}
    wrapper = prefix[: -len("backbone.")] if prefix.endswith("backbone.") else None
    names.update({wrapper + key: key for key in PPT_KEYS if wrapper is not None and wrapper + key in state})
    pointwise = set(pointwise_weight_keys(model)) if pointwise_layout == "out_in" else set()
    report = CheckpointReport(prefix=prefix)
    to_load = {}
    for key, tensor in state.items():
        name = names.get(key)
        if name is None:
            report.ignored.append(key)
        elif name not in own:
            report.unexpected.append(name)
        elif tuple(tensor.shape) != tuple(own[name].shape):
            report.mismatched.append((name, tuple(tensor.shape), tuple(own[name].shape)))
        elif name in pointwise:
            to_load[name] = out_in_pointwise_to_spconv(tensor)
            report.transposed.append(name)
        else:
            to_load[name] = tensor
    report.missing = sorted(set(own) - set(to_load) - {m[0] for m in report.mismatched})
    report.loaded = sorted(to_load)
    report.transposed.sort()
    if strict and not report.complete:
        raise CheckpointError(
            f"{source} does not match the model: missing {report.missing}, unexpected {report.unexpected}, "
            f"shape mismatches {report.mismatched}"
        )
    model.load_state_dict(to_load, strict=False)
    return report


def _backbone_prefix(state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor], source: str) -> str:
    """What precedes the model's first weight key (its stem conv) in the one checkpoint key ending with it."""
    anchor = next(k for k in own if k.endswith(".weight"))
    prefixes = key_prefixes(state, anchor)
    if len(prefixes) != 1:
        raise CheckpointError(f"{source}: expected one '*{anchor}' key to locate the backbone, found "
                              f"{[p + anchor for p in prefixes]}")
    return prefixes[0]


def key_prefixes(state: Mapping[str, torch.Tensor], name: str) -> list[str]:
    """The prefixes ("" or ending in ".") in front of ``name`` in the keys of ``state`` that end with it."""
    return [k[: -len(name)] for k in state if k.endswith(name) and (k == name or k[: -len(name)].endswith("."))]
