"""Sparse residual U-Nets on spconv in Pointcept's SpUNet layout (MinkUNet-style width/depth presets).

Layout of ``SpUNet`` ("SpUNet-v1m1"; module names are the state-dict prefixes of Pointcept/Mosaic3D checkpoints):

    conv_input        SubMConv3d(in, base, k=stem_kernel_size) + BN + ReLU                  (full resolution)
    down[s]           SparseConv3d(k=2, stride=2) + BN + ReLU, s = 0..S-1                     (resolution / 2^(s+1))
    enc[s].block{i}   BasicBlock(channels[s]) x layers[s]
    up[s]             SparseInverseConv3d(k=2) + BN + ReLU back to resolution / 2^s
    dec[s].block{i}   BasicBlock x layers[2S-1-s]; block0 takes cat(up, skip) and projects with a 1x1 conv
    final             1x1 SubMConv3d to out_channels (absent when out_channels == 0)

with S = len(channels) // 2 stages and BatchNorm1d(eps=1e-3, momentum=0.01). The decoder runs from the bottleneck
(s = S-1) up to s = 0. The bottleneck ``enc[S-1]`` output (channels[S-1] channels, stride 2^S) is mean-pooled per
batch element into the global scene feature f3d.

``SpUNetPDNorm`` ("SpUNet-v1m3") is the same network with Point Prompt Training's prompt-driven normalisation
(Pointcept/Mosaic3D spconv_unet_v1m3_pdnorm): one BatchNorm per dataset condition plus a FiLM-style modulation
``x * (1 + scale) + shift`` from a context vector, as Mosaic3D trains its released model; conv/norm pairs are named
``conv``/``bn`` and the block shortcut ``proj_conv``/``proj_norm``.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ov3dseg_core import compat
from ov3dseg_core.registry import REGISTRY

compat.apply()
import spconv.pytorch as spconv  # noqa: E402  (after the CPU fixes)

SPATIAL_MARGIN = 96
"""Voxels added to the largest grid coordinate for spconv's spatial shape (as Pointcept)."""

NormFactory = Callable[[int], nn.Module]


def _batch_norm(channels: int) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(channels, eps=1e-3, momentum=0.01)


class BasicBlock(spconv.SparseModule):
    """Residual block: two 3x3x3 submanifold convs (+norm, ReLU), identity or 1x1 conv+norm shortcut.

    Keys: ``conv1.weight``, ``bn1.*``, ``conv2.weight``, ``bn2.*`` and, when in != out channels, the shortcut
    ``proj.0.weight`` + ``proj.1.*`` (v1m1) or ``proj_conv.weight`` + ``proj_norm.*`` (``split_proj``, v1m3).
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        indice_key: str,
        norm: NormFactory = _batch_norm,
        split_proj: bool = False,
    ) -> None:
        super().__init__()
        self.split_proj = split_proj and in_channels != channels
        if self.split_proj:
            self.proj_conv = spconv.SubMConv3d(in_channels, channels, kernel_size=1, bias=False)
            self.proj_norm = norm(channels)
        elif in_channels == channels:
            self.proj = spconv.SparseSequential(nn.Identity())
        else:
            self.proj = spconv.SparseSequential(
                spconv.SubMConv3d(in_channels, channels, kernel_size=1, bias=False), norm(channels)
            )
        subm3 = partial(spconv.SubMConv3d, kernel_size=3, padding=1, bias=False, indice_key=indice_key)
        self.conv1 = subm3(in_channels, channels)
        self.bn1 = norm(channels)
        self.conv2 = subm3(channels, channels)
        self.bn2 = norm(channels)
        self.relu = nn.ReLU()

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        out = self.conv1(x)
        out = out.replace_feature(self.relu(self.bn1(out.features)))
        out = self.conv2(out)
        residual = self.proj_norm(self.proj_conv(x).features) if self.split_proj else self.proj(x).features
        return out.replace_feature(self.relu(self.bn2(out.features) + residual))


class ConvNormAct(spconv.SparseModule):
    """Sparse conv + norm + ReLU with named children ``conv``, ``bn`` (the v1m3 stem/down/up layout)."""

    def __init__(self, conv: spconv.SparseModule, norm: nn.Module) -> None:
        super().__init__()
        self.conv = conv
        self.bn = norm
        self.relu = nn.ReLU()

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        out = self.conv(x)
        return out.replace_feature(self.relu(self.bn(out.features)))


def offset_to_batch(offset: torch.Tensor) -> torch.Tensor:
    """Cumulative point counts (B,) -> per-point batch index (N,) int64."""
    counts = torch.diff(offset, prepend=offset.new_zeros(1))
    return torch.repeat_interleave(torch.arange(len(offset), device=offset.device), counts)


def sparse_input(data: dict[str, torch.Tensor], in_channels: int, owner: str) -> tuple[spconv.SparseConvTensor, int]:
    """Validated spconv input (and batch size B) from ``grid_coord`` (N, 3) int voxel indices >= 0, unique per batch
    element, ``feat`` (N, in_channels) and ``offset`` (B,) cumulative counts; ``owner`` names the model in errors."""
    missing = {"grid_coord", "feat", "offset"} - set(data)
    if missing:
        raise KeyError(f"{owner} input is missing {sorted(missing)}")
    coord, feat, offset = data["grid_coord"], data["feat"], data["offset"]
    n = coord.shape[0]
    if coord.dim() != 2 or coord.shape[1] != 3 or coord.is_floating_point():
        raise ValueError(f"grid_coord must be (N, 3) integer voxel indices, got {coord.dtype} {tuple(coord.shape)}")
    if feat.shape != (n, in_channels):
        raise ValueError(f"feat must be (N={n}, {in_channels}), got {tuple(feat.shape)}")
    if offset.dim() != 1 or len(offset) == 0 or int(offset[-1]) != n or bool((torch.diff(offset) <= 0).any()):
        raise ValueError(f"offset must be increasing cumulative counts ending at N={n}, got {offset.tolist()}")
    if int(offset[0]) <= 0:
        raise ValueError("every batch element needs at least one voxel")
    if bool((coord < 0).any()):
        raise ValueError("grid_coord must be >= 0 (shift coordinates by their minimum first)")
    batch = offset_to_batch(offset)
    indices = torch.cat((batch[:, None], coord.long()), dim=1).int()
    extent = coord.max(dim=0).values + 1
    if torch.unique(_packed_rows(batch, coord, extent)).numel() != n:
        raise ValueError("grid_coord has duplicate voxels within a batch element (voxelise first)")
    spatial_shape = (extent - 1 + SPATIAL_MARGIN).tolist()
    return spconv.SparseConvTensor(feat, indices.contiguous(), spatial_shape, len(offset)), len(offset)


def _packed_rows(batch: torch.Tensor, coord: torch.Tensor, extent: torch.Tensor) -> torch.Tensor:
    """(N,) int64 keys, one per (batch, x, y, z) row of (N,) batch ids and (N, 3) coords in [0, extent) (3,)
    (a 1-D unique on these is ~40x faster than ``torch.unique(dim=0)`` on the rows)."""
    x, y, z = (int(e) for e in extent)
    if int(batch[-1] + 1) * x * y * z >= 2 ** 63:
        raise ValueError(f"grid_coord extent {x} x {y} x {z} is too large to index")
    c = coord.long()
    return ((batch.long() * x + c[:, 0]) * y + c[:, 1]) * z + c[:, 2]


@REGISTRY.register("backbone", "SpUNet-v1m1")
class SpUNet(nn.Module):
    """Sparse residual U-Net (Pointcept SpUNet-v1m1).

    Args:
        in_channels: input feature channels C_in (e.g. 3 for RGB, 6 for RGB + normals).
        out_channels: output channels C_out of the final 1x1 conv; 0 returns the last decoder features
            (channels[-1]) without a final layer (Pointcept's ``num_classes=0``).
        base_channels: stem width.
        channels: 2S widths: S encoder stages then S decoder stages (decoder listed bottleneck-first).
        layers: 2S BasicBlock counts matching ``channels``.
        stem_kernel_size: 5 in Pointcept, 3 in Mosaic3D.
        final_bias: Pointcept's final conv has a bias, Mosaic3D's v1m1 has none.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        base_channels: int = 32,
        channels: Sequence[int] = (32, 64, 128, 256, 256, 128, 96, 96),
        layers: Sequence[int] = (2, 3, 4, 6, 2, 2, 2, 2),
        stem_kernel_size: int = 5,
        final_bias: bool = True,
    ) -> None:
        super().__init__()
        channels, layers = tuple(int(c) for c in channels), tuple(int(n) for n in layers)
        if len(channels) != len(layers) or len(channels) % 2 or not channels:
            raise ValueError(f"channels and layers need the same even length, got {channels} and {layers}")
        if in_channels <= 0 or out_channels < 0:
            raise ValueError(f"need in_channels > 0 and out_channels >= 0, got {in_channels}, {out_channels}")
        self.in_channels = in_channels
        self.out_channels = out_channels if out_channels > 0 else channels[-1]
        self.channels = channels
        self.layers = layers
        self.num_stages = num_stages = len(channels) // 2
        self.bottleneck_channels = channels[num_stages - 1]

        stem = spconv.SubMConv3d(
            in_channels, base_channels, kernel_size=stem_kernel_size, padding=1, bias=False, indice_key="stem"
        )
        self.conv_input = self._conv_norm_act(stem, base_channels)
        self.down, self.enc, self.up, self.dec = nn.ModuleList(), nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        # Decoder stage s upsamples to the resolution of encoder stage s-1 (the stem for s = 0) and concatenates it.
        skip_channels = (base_channels, *channels[: num_stages - 1])
        for s in range(num_stages):
            key = f"spconv{s + 1}"
            down = spconv.SparseConv3d(
                skip_channels[s], channels[s], kernel_size=2, stride=2, bias=False, indice_key=key
            )
            self.down.append(self._conv_norm_act(down, channels[s]))
            self.enc.append(self._stage(channels[s], channels[s], layers[s], key=f"subm{s + 1}"))
            dec_in = channels[-s - 2]  # output width of the deeper decoder stage (the bottleneck for s = S-1)
            dec_width = channels[-s - 1]
            up = spconv.SparseInverseConv3d(dec_in, dec_width, kernel_size=2, bias=False, indice_key=key)
            self.up.append(self._conv_norm_act(up, dec_width))
            self.dec.append(self._stage(dec_width + skip_channels[s], dec_width, layers[-s - 1], key=f"subm{s}"))
        self.final = (
            spconv.SubMConv3d(channels[-1], out_channels, kernel_size=1, bias=final_bias)
            if out_channels > 0
            else spconv.Identity()
        )
        self.apply(_init_weights)

    def _norm(self, channels: int) -> nn.Module:
        return _batch_norm(channels)

    def _conv_norm_act(self, conv: spconv.SparseModule, channels: int) -> spconv.SparseModule:
        return spconv.SparseSequential(conv, self._norm(channels), nn.ReLU())

    def _stage(self, in_channels: int, channels: int, depth: int, key: str) -> spconv.SparseSequential:
        return spconv.SparseSequential(
            OrderedDict(
                (f"block{i}", BasicBlock(in_channels if i == 0 else channels, channels, key, self._norm))
                for i in range(depth)
            )
        )

    def forward(
        self, data: dict[str, torch.Tensor], return_global: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Per-point features (N, C_out), plus the per-batch bottleneck mean (B, C_bottleneck) if return_global.

        data: ``grid_coord`` (N, 3) int voxel indices >= 0, unique within each batch element; ``feat`` (N, C_in)
        float; ``offset`` (B,) int64 cumulative point counts (batch b owns rows offset[b-1]:offset[b]).
        Output rows follow the input rows.
        """
        x, batch_size = sparse_input(data, self.in_channels, type(self).__name__)
        x = self.conv_input(x)
        skips = [x]
        for down, enc in zip(self.down, self.enc):
            x = enc(down(x))
            skips.append(x)
        bottleneck = skips.pop()
        x = bottleneck
        for s in reversed(range(self.num_stages)):
            x = self.up[s](x)
            x = x.replace_feature(torch.cat((x.features, skips.pop().features), dim=1))
            x = self.dec[s](x)
        features = self.final(x).features
        if not return_global:
            return features
        return features, batch_mean(bottleneck.features, bottleneck.indices[:, 0].long(), batch_size)


@dataclass
class NormCondition:
    """What PDBatchNorm layers normalise with during one forward: condition index and context (1, C_ctx) or None."""

    index: int = 0
    context: torch.Tensor | None = None


class PDBatchNorm(nn.Module):
    """Prompt-driven BatchNorm: one BatchNorm1d per condition (``bns.k``) or a shared one (``bn``), then
    ``x * (1 + scale) + shift`` with (shift, scale) = ``modulation``(context) when adaptive."""

    def __init__(
        self,
        channels: int,
        state: NormCondition,
        num_conditions: int,
        context_channels: int,
        decouple: bool,
        adaptive: bool,
        affine: bool,
    ) -> None:
        super().__init__()
        self.state = state
        make = partial(nn.BatchNorm1d, channels, eps=1e-3, momentum=0.01, affine=affine)
        if decouple:
            self.bns = nn.ModuleList(make() for _ in range(num_conditions))
        else:
            self.bn = make()
        self.modulation = (
            nn.Sequential(nn.SiLU(), nn.Linear(context_channels, 2 * channels)) if adaptive else None
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out = self.bns[self.state.index](features) if hasattr(self, "bns") else self.bn(features)
        if self.modulation is None:
            return out
        if self.state.context is None:
            raise ValueError("this SpUNetPDNorm is adaptive: pass data['context'] (1, context_channels)")
        shift, scale = self.modulation(self.state.context.to(out.dtype)).chunk(2, dim=1)
        return out * (1.0 + scale) + shift


@REGISTRY.register("backbone", "SpUNet-v1m3")
class SpUNetPDNorm(SpUNet):
    """SpUNet with Point Prompt Training's prompt-driven norms (Pointcept/Mosaic3D SpUNet-v1m3).

    Args (beyond SpUNet's; Mosaic3D defaults): ``conditions`` dataset names, one BatchNorm set each;
    ``context_channels`` width of the context vector; ``norm_decouple`` per-condition norms; ``norm_adaptive``
    context modulation (zero-initialised, so it starts as the identity); ``norm_affine`` BatchNorm affine;
    ``context_table`` PPT's learned context, ``embedding_table`` (an nn.Embedding with one ``context_channels`` row
    per condition, in ``conditions`` order: a checkpoint's rows follow its own condition list).
    Mosaic3D's stem is 3x3x3 and its final 1x1 conv has a bias.

    ``forward`` also reads ``data["condition"]`` (one of ``conditions``, for the whole batch) and, when adaptive,
    the context: ``data["context"]`` (1, context_channels) or (context_channels,) when given, else
    ``embedding_table[condition]`` (PPT's ``context = embedding_table(condition index)``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        conditions: Sequence[str] = ("ScanNet", "S3DIS", "Structured3D"),
        context_channels: int = 256,
        norm_decouple: bool = True,
        norm_adaptive: bool = True,
        norm_affine: bool = True,
        context_table: bool = False,
        stem_kernel_size: int = 3,
        final_bias: bool = True,
        **kwargs,
    ) -> None:
        self.conditions = tuple(conditions)
        if not self.conditions:
            raise ValueError("need at least one condition")
        self.context_channels = context_channels
        self.norm_condition = NormCondition()
        self._pd_norm = partial(
            PDBatchNorm,
            state=self.norm_condition,
            num_conditions=len(self.conditions),
            context_channels=context_channels,
            decouple=norm_decouple,
            adaptive=norm_adaptive,
            affine=norm_affine,
        )
        super().__init__(in_channels, out_channels, stem_kernel_size=stem_kernel_size, final_bias=final_bias, **kwargs)
        self.embedding_table = nn.Embedding(len(self.conditions), context_channels) if context_table else None

    def _norm(self, channels: int) -> nn.Module:
        return self._pd_norm(channels)

    def _conv_norm_act(self, conv: spconv.SparseModule, channels: int) -> spconv.SparseModule:
        return ConvNormAct(conv, self._norm(channels))

    def _stage(self, in_channels: int, channels: int, depth: int, key: str) -> spconv.SparseSequential:
        return spconv.SparseSequential(
            OrderedDict(
                (f"block{i}", BasicBlock(in_channels if i == 0 else channels, channels, key, self._norm, True))
                for i in range(depth)
            )
        )

    def forward(
        self, data: dict[str, torch.Tensor], return_global: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        condition = data.get("condition")
        if condition not in self.conditions:
            raise ValueError(f"data['condition'] must be one of {self.conditions}, got {condition!r}")
        index = self.conditions.index(condition)
        context = data.get("context")
        if context is None and self.embedding_table is not None:
            context = self.embedding_table.weight[index]
        if context is not None:
            context = context.reshape(1, -1)
            if context.shape[1] != self.context_channels:
                raise ValueError(f"context must have {self.context_channels} values, got {context.shape[1]}")
        self.norm_condition.index = index
        self.norm_condition.context = context
        try:
            return super().forward(data, return_global)
        finally:
            self.norm_condition.context = None


def batch_mean(features: torch.Tensor, batch: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Mean of rows (M, C) per batch index (M,) -> (B, C)."""
    sums = features.new_zeros(batch_size, features.shape[1]).index_add_(0, batch, features)
    counts = torch.bincount(batch, minlength=batch_size).clamp(min=1).to(features.dtype)
    return sums / counts[:, None]


def _init_weights(module: nn.Module) -> None:
    """Pointcept's initialisation: truncated normal (std 0.02) submanifold convs and linears, unit BatchNorm,
    zero context modulation (PPT's zero_init)."""
    if isinstance(module, (spconv.SubMConv3d, nn.Linear)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm1d) and module.affine:
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, PDBatchNorm) and module.modulation is not None:
        nn.init.zeros_(module.modulation[-1].weight)
        nn.init.zeros_(module.modulation[-1].bias)


SPUNET_PRESETS: dict[str, dict[str, tuple[int, ...]]] = {
    "SpUNet14A": {"channels": (32, 64, 128, 256, 128, 128, 96, 96), "layers": (1, 1, 1, 1, 1, 1, 1, 1)},
    "SpUNet18A": {"channels": (32, 64, 128, 256, 128, 128, 96, 96), "layers": (2, 2, 2, 2, 2, 2, 2, 2)},
    "SpUNet34C": {"channels": (32, 64, 128, 256, 256, 128, 96, 96), "layers": (2, 3, 4, 6, 2, 2, 2, 2)},
}
"""Widths and depths of MinkUNet14A / 18A / 34C (Pointcept mink_unet.py, Mosaic3D configs/model/net/spunet*.yaml)."""

MOSAIC3D_CONDITION_SETS: dict[str, tuple[str, ...]] = {
    "sc+ar+sc+++ma+st": ("ScanNet", "ARKitScenes", "Matterport3D", "Structured3D", "ScanNetPP"),
    "sc+ar+sc+++ma": ("ScanNet", "ARKitScenes", "Matterport3D", "ScanNetPP"),
    "sc+ar+sc++": ("ScanNet", "ARKitScenes", "ScanNetPP"),
    "sc+ar": ("ScanNet", "ARKitScenes"),
}
"""PPT condition lists of Mosaic3D's multi-dataset trainings, by data config (Mosaic3D configs/data/<name>.yaml,
``train_dataset.conditions``): the order of a checkpoint's per-condition norms and ``embedding_table`` rows."""

MOSAIC3D_CONDITIONS = MOSAIC3D_CONDITION_SETS["sc+ar+sc+++ma+st"]
"""The five source datasets of Mosaic3D-5.6M in the released model's order (ScanNet++ is named "ScanNetPP")."""


def register_preset(name: str, network: Callable[..., nn.Module], preset: dict[str, Any]) -> Callable[..., nn.Module]:
    """Register backbone ``name`` as ``network(in_channels, out_channels, **preset, **kwargs)``; returns the builder."""
    def build(in_channels: int, out_channels: int, **kwargs) -> nn.Module:
        return network(in_channels, out_channels, **{**preset, **kwargs})

    build.__name__ = name
    build.__doc__ = f"{network.__name__} with {name}'s {preset}; other {network.__name__} kwargs pass through."
    return REGISTRY.register("backbone", name)(build)


SpUNet14A = register_preset("SpUNet14A", SpUNet, SPUNET_PRESETS["SpUNet14A"])
SpUNet18A = register_preset("SpUNet18A", SpUNet, SPUNET_PRESETS["SpUNet18A"])
SpUNet34C = register_preset("SpUNet34C", SpUNet, SPUNET_PRESETS["SpUNet34C"])


@REGISTRY.register("backbone", "Mosaic3D-SpUNet34C")
def Mosaic3DSpUNet34C(
    in_channels: int = 3,
    out_channels: int = 768,
    conditions: Sequence[str] = MOSAIC3D_CONDITIONS,
    context_table: bool = True,
    **kwargs,
) -> SpUNetPDNorm:
    """Mosaic3D's released encoder (configs/model/spunet34c+ppt.yaml): SpUNet34C with PPT norms (affine, decoupled,
    adaptive; 256-d context) for the conditions of its data config (default: the 5-dataset release, see
    MOSAIC3D_CONDITION_SETS) with PPT's context table, RGB in, 768-d out (Recap-CLIP ViT-L/16 text space).
    43,685,664 parameters (the paper's "43.7M") plus the 256 x len(conditions) context table. Load a Mosaic3D
    checkpoint with ``load_pointcept_checkpoint(..., pointwise_layout="out_in")``."""
    return SpUNetPDNorm(in_channels, out_channels, conditions=conditions, context_table=context_table,
                        **{**SPUNET_PRESETS["SpUNet34C"], **kwargs})
