"""Convert released XMask3D and Mosaic3D checkpoints into safetensors for our modules.

XMask3D (wangzy22/XMask3D, ``<split>.pth.tar`` = {epoch, state_dict, optimizer, best_iou}, keys ``module.*``):
the 3D branch ``pc_decoder`` (``PC_Processor``: a MinkowskiEngine MinkUNet34C 3 -> 256 ``encoder``, Linear(256, 768)
``decoder`` per voxel into the CLIP space and Linear(256, 768) ``point2text_adapter`` on the bottleneck for the
implicit captioner) and ``pc_binary_head`` (``PC_Binary_Processor``: MinkUNet18A 3 -> 256, BatchNorm1d, Linear(256, 1))
become our XMask3D's ``backbone`` (``MinkUNet34C``), ``proj_3d``, ``captioner.adapter`` and ``binary_head``
(``MinkUNet18A``, ``norm``, ``fc``). MinkowskiEngine kernels are rewritten for spconv (``layouts.py``). The 2D branch
(ODISE's diffusion feature extractor ``backbone.*``, the Mask2Former ``sem_seg_head.*``, CLIP) is reported as skipped.

Mosaic3D (NVlabs/Mosaic3D Lightning ``.ckpt``, ``state_dict`` keys ``net.*``): the SpUNet (``net.backbone.*`` for the
PPT model SpUNet-v1m3 with its context table ``net.embedding_table.weight``, or ``net.*`` for SpUNet-v1m1) becomes a
``SpUNet-v1m3``/``SpUNet-v1m1`` whose architecture (widths, depths, PPT norm options, conditions) is read off the
checkpoint; its 1x1 weights are transposed (``pointwise_layout="out_in"``). Other modules (the frozen CLIP encoder,
loss buffers) are skipped.

The output is a safetensors file with format ``CONVERTED_FORMAT`` whose metadata holds the conversion report,
including ``model_config``: the config entries under which our model takes these weights.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from ov3dseg_core.atomic_write import atomic_path
from ov3dseg_core.models.backbones.checkpoint import (PPT_KEYS, CheckpointError, key_prefixes, load_pointcept_state,
                                                      read_checkpoint)
from ov3dseg_core.models.backbones.layouts import minkowski_to_spconv
from ov3dseg_core.models.backbones import minkunet  # noqa: F401  (registers the MinkUNet backbones)
from ov3dseg_core.models.backbones.spunet import MOSAIC3D_CONDITION_SETS
from ov3dseg_core.registry import REGISTRY
from ov3dseg_core.safetensors_file import read_format_metadata

CONVERTED_FORMAT = "ov3dseg-converted-weights/1"
BN_FIELDS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


@dataclass
class ConvertedPart:
    """One source module written to the output: source and target key prefixes, size, how the tensors changed."""

    name: str
    source: str
    target: str
    tensors: int
    parameters: int
    transform: str


@dataclass
class SkippedGroup:
    """Source tensors under ``prefix`` left out of the output, and why."""

    prefix: str
    tensors: int
    reason: str


@dataclass
class ConversionReport:
    """What a conversion wrote (``parts``, under ``model_config``) and left out (``skipped``, pickled objects)."""

    source_format: str
    source: str
    model_config: dict[str, Any]
    parts: list[ConvertedPart] = field(default_factory=list)
    skipped: list[SkippedGroup] = field(default_factory=list)
    skipped_objects: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class ConvertedWeights:
    state_dict: dict[str, torch.Tensor]
    report: ConversionReport


@dataclass(frozen=True)
class XMask3DPart:
    name: str
    source: str
    target: str
    build: Callable[[], nn.Module]
    minkowski: bool = False


XMASK3D_MODEL_CONFIG = {
    "in_channels": 3,
    "feature_dim": 768,
    "backbone": {"type": "MinkUNet34C", "out_channels": 256},
    "binary_head": {"type": "MinkUNet18A", "out_channels": 256},
    "captioner": {"condition": "3d", "latent_dim": 768},
}
"""Our XMask3D ``model:`` entries that these weights need (XMask3D's MinkUNet34C / MinkUNet18A, 768-d CLIP space)."""


def _xmask3d_network(entry: str) -> Callable[[], nn.Module]:
    """Builder of the backbone XMASK3D_MODEL_CONFIG[entry] on XMask3D's RGB input."""
    in_channels = XMASK3D_MODEL_CONFIG["in_channels"]
    return lambda: REGISTRY.build("backbone", XMASK3D_MODEL_CONFIG[entry], in_channels=in_channels)


XMASK3D_ANCHOR = "pc_decoder.encoder.conv0p1s1.kernel"
XMASK3D_PARTS = (
    XMask3DPart("3D backbone, MinkUNet34C 3 -> 256 (pc_decoder.encoder)", "pc_decoder.encoder.", "backbone.",
                _xmask3d_network("backbone"), minkowski=True),
    XMask3DPart("per-voxel adapter 256 -> 768 (pc_decoder.decoder)", "pc_decoder.decoder.", "proj_3d.",
                lambda: nn.Linear(256, 768)),
    XMask3DPart("bottleneck adapter 256 -> 768 for the captioner (pc_decoder.point2text_adapter)",
                "pc_decoder.point2text_adapter.", "captioner.adapter.", lambda: nn.Linear(256, 768)),
    XMask3DPart("binary head backbone, MinkUNet18A 3 -> 256 (pc_binary_head.encoder)", "pc_binary_head.encoder.",
                "binary_head.backbone.", _xmask3d_network("binary_head"), minkowski=True),
    XMask3DPart("binary head BatchNorm1d(256)", "pc_binary_head.batch_norm.", "binary_head.norm.",
                lambda: nn.BatchNorm1d(256)),
    XMask3DPart("binary head Linear(256, 1)", "pc_binary_head.fc.", "binary_head.fc.", lambda: nn.Linear(256, 1)),
)
"""The converted modules of an XMask3D checkpoint: source prefix (after ``module.``) -> our XMask3D prefix."""

SKIP_REASONS = {
    "xmask3d": {
        "backbone": "2D branch (ODISE's Stable Diffusion feature extractor and implicit captioner): not converted; "
                    "our model reads Stable Diffusion from a diffusers folder (diffusion.pretrained)",
        "sem_seg_head": "2D branch (Mask2Former pixel and mask decoders): not converted, its module layout differs "
                        "from our pixel_decoder / mask_decoder",
        "category_head": "CLIP text embeddings: our model loads CLIP from open_clip weights (text_encoder.pretrained)",
        "clip_head": "CLIP: our model loads it from open_clip weights (text_encoder.pretrained)",
        "criterion": "CLIP inside the loss: our model loads CLIP from open_clip weights",
    },
    "mosaic3d": {
        "clip_encoder": "frozen CLIP (Recap-CLIP) used for the loss: our model loads CLIP text encoders itself",
    },
}
DEFAULT_SKIP_REASON = "not part of the converted 3D network"


def convert_xmask3d(path: str | Path) -> ConvertedWeights:
    """XMask3D ``<split>.pth.tar`` -> tensors keyed by our XMask3D module names (see the module docstring)."""
    state, skipped_objects = read_checkpoint(path)
    prefix = _unique_prefix(state, XMASK3D_ANCHOR, path, "XMask3D")
    report = ConversionReport("xmask3d", str(path), XMASK3D_MODEL_CONFIG, skipped_objects=skipped_objects)
    report.notes.append(
        "captioner.adapter: XMask3D applies point2text_adapter to every bottleneck voxel and max-pools per scene; "
        "our captioner applies it to the mean-pooled bottleneck")
    out: dict[str, torch.Tensor] = {}
    for part in XMASK3D_PARTS:
        source = {k[len(prefix + part.source):]: v for k, v in state.items() if k.startswith(prefix + part.source)}
        target = part.build().state_dict()
        tensors = minkowski_state_to_spconv(source, target) if part.minkowski else source
        _require_match(tensors, target, f"{path}: {part.name}")
        out.update({part.target + k: v for k, v in tensors.items()})
        transform = "MinkowskiEngine kernels -> spconv weights" if part.minkowski else "copied"
        report.parts.append(ConvertedPart(part.name, prefix + part.source, part.target, len(tensors),
                                          _parameter_count(tensors), transform))
    converted = tuple(prefix + part.source for part in XMASK3D_PARTS)
    report.skipped = _skipped_groups([k for k in state if not k.startswith(converted)], prefix, SKIP_REASONS["xmask3d"])
    return ConvertedWeights(out, report)


def minkowski_state_to_spconv(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
                              ) -> dict[str, torch.Tensor]:
    """MinkowskiEngine module state -> our ``MinkUNet`` state: ``X.kernel`` -> ``X.weight`` in the layout of
    ``target[X.weight]``, ``X.bn.<field>`` (MinkowskiBatchNorm) -> ``X.<field>``; other keys unchanged."""
    out = {}
    for key, tensor in source.items():
        bn = re.fullmatch(rf"(.+)\.bn\.({'|'.join(BN_FIELDS)})", key)
        if key.endswith(".kernel"):
            key = key[: -len("kernel")] + "weight"
            tensor = minkowski_to_spconv(tensor, target[key].shape) if key in target else tensor
        elif bn:
            key = f"{bn.group(1)}.{bn.group(2)}"
        out[key] = tensor
    return out


def convert_mosaic3d(path: str | Path, conditions: Sequence[str] | None = None) -> ConvertedWeights:
    """Mosaic3D Lightning ``.ckpt`` -> ``backbone.*`` tensors of the SpUNet read off it (see the module docstring).

    ``conditions``: the PPT condition names in the training's order; default: the Mosaic3D data config with as many
    conditions as the checkpoint (MOSAIC3D_CONDITION_SETS).
    """
    state, skipped_objects = read_checkpoint(path)
    ppt = any(k.endswith("backbone.conv_input.conv.weight") for k in state)
    wrapper = _unique_prefix(state, "backbone.conv_input.conv.weight" if ppt else "conv_input.0.weight", path,
                             "Mosaic3D")
    prefix = wrapper + "backbone." if ppt else wrapper
    backbone = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    backbone.update({k: state[wrapper + k] for k in PPT_KEYS if ppt and wrapper + k in state})
    config = mosaic3d_backbone_config(backbone, conditions)
    model = REGISTRY.build("backbone", config)
    loaded = load_pointcept_state(model, state, strict=True, pointwise_layout="out_in", source=str(path))
    report = ConversionReport("mosaic3d", str(path), {"backbone": config}, skipped_objects=skipped_objects)
    out = {"backbone." + k: v for k, v in model.state_dict().items()}
    report.parts.append(ConvertedPart(
        f"3D encoder {config['type']}"
        + (f" with PPT's context table {wrapper}embedding_table.weight" if config.get("context_table") else ""),
        loaded.prefix, "backbone.", len(out), _parameter_count(out),
        f"1x1 weights transposed to spconv's reading: {', '.join(loaded.transposed)}"))
    if ppt:
        report.notes.append(
            f"PPT: norms and context rows follow the conditions {config['conditions']}; pass data['condition'] as "
            f"one of them (the context is embedding_table[condition])")
    report.skipped = _skipped_groups(loaded.ignored, wrapper, SKIP_REASONS["mosaic3d"])
    return ConvertedWeights(out, report)


def mosaic3d_backbone_config(backbone: Mapping[str, torch.Tensor], conditions: Sequence[str] | None = None
                             ) -> dict[str, Any]:
    """REGISTRY config of the Mosaic3D SpUNet whose state (keys without the ``net.``/``net.backbone.`` prefix) is
    ``backbone``: widths and depths from the block weights, PPT options from the norm keys."""
    ppt = "conv_input.conv.weight" in backbone
    stem = backbone["conv_input.conv.weight" if ppt else "conv_input.0.weight"]
    num_stages = 1 + max(int(k.split(".")[1]) for k in backbone if k.startswith("enc."))
    blocks = {".".join(k.split(".")[:3]) for k in backbone if k.startswith(("enc.", "dec."))}  # e.g. "enc.0.block1"
    depth = Counter(name.rsplit(".", 1)[0] for name in blocks)
    width = {f"{part}.{s}": backbone[f"{part}.{s}.block0.conv1.weight"].shape[0]
             for part in ("enc", "dec") for s in range(num_stages)}
    order = [f"enc.{s}" for s in range(num_stages)] + [f"dec.{s}" for s in reversed(range(num_stages))]
    config: dict[str, Any] = {
        "type": "SpUNet-v1m3" if ppt else "SpUNet-v1m1",
        "in_channels": stem.shape[-1],
        "out_channels": backbone["final.weight"].shape[0],
        "base_channels": stem.shape[0],
        "channels": [width[name] for name in order],
        "layers": [depth[name] for name in order],
        "stem_kernel_size": stem.shape[1],
        "final_bias": "final.bias" in backbone,
    }
    if ppt:
        config.update(_ppt_options(backbone, conditions))
    return config


def _ppt_options(backbone: Mapping[str, torch.Tensor], conditions: Sequence[str] | None) -> dict[str, Any]:
    """PDNorm options of a v1m3 state (read off the stem norm ``conv_input.bn``) and its conditions: ``conditions``
    or the Mosaic3D data config with as many as the checkpoint's per-condition norms / context rows."""
    norm = "conv_input.bn."
    modulation = backbone.get(norm + "modulation.1.weight")
    table = backbone.get("embedding_table.weight")
    per_condition = {k.split(".")[3] for k in backbone if k.startswith(norm + "bns.")}
    count = len(per_condition) or (table.shape[0] if table is not None else None)
    if conditions is None:
        matches = [names for names in MOSAIC3D_CONDITION_SETS.values() if len(names) == count]
        if len(matches) != 1:
            raise CheckpointError(f"cannot tell the PPT conditions of this checkpoint ({count} per-condition norms "
                                  "or context rows): pass the condition names in training order")
        conditions = matches[0]
    if count is not None and len(conditions) != count:
        raise CheckpointError(f"the checkpoint has {count} PPT conditions, got {len(conditions)}: {list(conditions)}")
    context = modulation if modulation is not None else table
    return {
        "conditions": list(conditions),
        "context_channels": context.shape[1] if context is not None else 256,
        "norm_decouple": bool(per_condition),
        "norm_adaptive": modulation is not None,
        "norm_affine": (norm + ("bns.0.weight" if per_condition else "bn.weight")) in backbone,
        "context_table": table is not None,
    }


CONVERTERS: dict[str, Callable[..., ConvertedWeights]] = {"xmask3d": convert_xmask3d, "mosaic3d": convert_mosaic3d}


def save_converted(path: str | Path, weights: ConvertedWeights) -> Path:
    """Write the tensors (contiguous, CPU) and the report (metadata ``report``, JSON) as safetensors, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in weights.state_dict.items()}
    metadata = {"ov3dseg_format": CONVERTED_FORMAT, "report": json.dumps(asdict(weights.report))}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def load_converted(path: str | Path) -> ConvertedWeights:
    """Read a file written by ``save_converted``; CheckpointError when it is missing or another format."""
    from safetensors.torch import load_file

    metadata = read_format_metadata(path, CONVERTED_FORMAT, "converted weights",
                                    " (write it with `ov3dseg convert-checkpoint`)")
    data = json.loads(metadata["report"])
    report = ConversionReport(
        **{**data, "parts": [ConvertedPart(**p) for p in data["parts"]],
           "skipped": [SkippedGroup(**g) for g in data["skipped"]]})
    return ConvertedWeights(load_file(str(path)), report)


def load_converted_state(model: nn.Module, weights: ConvertedWeights, prefix: str = "") -> list[str]:
    """Copy the converted tensors under ``prefix`` (stripped) into ``model``; every one must exist in the model
    with the same shape (CheckpointError naming the others). Model keys that were not converted keep their
    values. Returns the loaded model keys."""
    tensors = {k[len(prefix):]: v for k, v in weights.state_dict.items() if k.startswith(prefix)}
    _, unexpected, mismatched = _state_diff(tensors, model.state_dict())
    if not tensors or unexpected or mismatched:
        raise CheckpointError(f"{weights.report.source} (converted) does not fit {type(model).__name__} under "
                              f"prefix {prefix!r}: unexpected {unexpected}, shape mismatches {mismatched}"
                              + ("" if tensors else ", no tensors under the prefix"))
    model.load_state_dict(tensors, strict=False)
    return sorted(tensors)


def _unique_prefix(state: Mapping[str, torch.Tensor], anchor: str, path: str | Path, what: str) -> str:
    """The prefix in front of ``anchor`` in the one key ending with it (CheckpointError otherwise)."""
    found = key_prefixes(state, anchor)
    if len(found) != 1:
        sample = sorted(state)[:5]
        raise CheckpointError(f"{path} holds no {what} weights: expected one '*{anchor}' key, found "
                              f"{len(found)} (first keys: {sample})")
    return found[0]


def _state_diff(tensors: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
                ) -> tuple[list[str], list[str], list[tuple[str, tuple[int, ...], tuple[int, ...]]]]:
    """(missing, unexpected, shape-mismatched (key, given, expected)) keys of ``tensors`` against ``target``."""
    missing = sorted(set(target) - set(tensors))
    unexpected = sorted(set(tensors) - set(target))
    mismatched = [(k, tuple(v.shape), tuple(target[k].shape)) for k, v in sorted(tensors.items())
                  if k in target and v.shape != target[k].shape]
    return missing, unexpected, mismatched


def _require_match(tensors: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], what: str) -> None:
    """CheckpointError naming missing, unexpected and mis-shaped keys unless ``tensors`` matches ``target`` exactly."""
    missing, unexpected, mismatched = _state_diff(tensors, target)
    if missing or unexpected or mismatched:
        raise CheckpointError(f"{what} does not match: missing {missing}, unexpected {unexpected}, "
                              f"shape mismatches {mismatched}")


def _skipped_groups(keys: Sequence[str], wrapper: str, reasons: Mapping[str, str]) -> list[SkippedGroup]:
    """``keys`` grouped by their first module name after the ``wrapper`` prefix (when they have it), with reasons."""
    counts: Counter[str] = Counter()
    for key in keys:
        inner = key.startswith(wrapper)
        counts[(wrapper if inner else "") + key[len(wrapper) if inner else 0:].split(".")[0]] += 1
    return [SkippedGroup(group + ".", n, reasons.get(group[len(wrapper):] if group.startswith(wrapper) else group,
                                                     DEFAULT_SKIP_REASON))
            for group, n in sorted(counts.items())]


def _parameter_count(tensors: Mapping[str, torch.Tensor]) -> int:
    """Elements of the floating-point tensors except BatchNorm running statistics."""
    return sum(v.numel() for k, v in tensors.items() if v.is_floating_point() and ".running_" not in k)
