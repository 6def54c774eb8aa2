"""MinkowskiEngine's MinkUNet (XMask3D's 3D networks) on spconv, with MinkowskiEngine's module names.

Layout of ``MinkUNet`` (``MinkUNetBase`` in XMask3D's models/modeling/meta_arch/mink_unet.py, blocks from
MinkowskiEngine/modules/resnet_block.py; P = ``planes``, L = ``layers``, I = ``init_dim``):

    conv0p1s1, bn0            SubMConv3d(in, I, k=5) + BN + ReLU                                 (stride 1)
    conv{s+1}p{2^s}s2, bn{s+1} SparseConv3d(k=2, stride=2) keeping the width + BN + ReLU, s = 0..3 (stride 2^(s+1))
    block{s+1}.{i}            BasicBlock x L[s] to P[s] (block 0: a 1x1 conv + BN ``downsample`` if the width changes)
    convtr{4+j}p{16/2^j}s2, bntr{4+j}   SparseInverseConv3d(k=2) to P[4+j] + BN + ReLU, j = 0..3
    block{5+j}.{i}            BasicBlock x L[4+j] on cat(up, skip) to P[4+j] (1x1 ``downsample`` in block 0)
    final                     1x1 conv to out_channels, no bias (absent when out_channels == 0)

where the skip of decoder step j is the encoder output at the same stride (block3, block2, block1, then the stem).
This differs from Pointcept's SpUNet (``spunet.py``), whose stride-2 convs change the width and whose encoder blocks
have no shortcut conv, so MinkUNet weights need this layout. Batch norms are ME's (BatchNorm1d, eps 1e-5, momentum
0.1). State-dict keys are ME's with ``kernel`` -> ``weight`` and ``bn.`` dropped (``block2.0.norm1.bn.weight`` ->
``block2.0.norm1.weight``); see ``layouts.py`` for the kernel layout. The bottleneck (block4 output, P[3]
channels, stride 16) is mean-pooled per batch element into the global scene feature f3d.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from ov3dseg_core import compat
from ov3dseg_core.models.backbones.spunet import SPUNET_PRESETS, batch_mean, register_preset, sparse_input
from ov3dseg_core.registry import REGISTRY

compat.apply()
import spconv.pytorch as spconv  # noqa: E402  (after the CPU fixes)

NUM_STAGES = 4


class MinkBlock(spconv.SparseModule):
    """ME's ``BasicBlock``: conv1/norm1/ReLU, conv2/norm2, plus the input or its 1x1 conv + BN ``downsample``, ReLU."""

    def __init__(self, in_channels: int, channels: int, indice_key: str, norm: partial) -> None:
        super().__init__()
        subm3 = partial(spconv.SubMConv3d, kernel_size=3, padding=1, bias=False, indice_key=indice_key)
        self.conv1 = subm3(in_channels, channels)
        self.norm1 = norm(channels)
        self.conv2 = subm3(channels, channels)
        self.norm2 = norm(channels)
        self.downsample = None
        if in_channels != channels:
            self.downsample = spconv.SparseSequential(
                spconv.SubMConv3d(in_channels, channels, kernel_size=1, bias=False), norm(channels)
            )
        self.relu = nn.ReLU()

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        out = self.conv1(x)
        out = out.replace_feature(self.relu(self.norm1(out.features)))
        out = self.conv2(out)
        residual = x.features if self.downsample is None else self.downsample(x).features
        return out.replace_feature(self.relu(self.norm2(out.features) + residual))


@REGISTRY.register("backbone", "MinkUNet")
class MinkUNet(nn.Module):
    """MinkowskiEngine's MinkUNet with 4 stages on spconv (see the module docstring for the layout).

    Args:
        in_channels: input feature channels (3 for XMask3D's RGB in [-1, 1]).
        out_channels: channels of the final 1x1 conv; 0 returns the last decoder features (planes[7]).
        planes: the 8 widths P (MinkUNet34C: 32, 64, 128, 256, 256, 128, 96, 96).
        layers: the 8 block counts L (MinkUNet34C: 2, 3, 4, 6, 2, 2, 2, 2).
        init_dim: stem width I.
        stem_kernel_size: 5 in MinkowskiEngine's MinkUNet.
        bn_eps, bn_momentum: MinkowskiBatchNorm's defaults 1e-5 and 0.1.
        final_bias: ME's final conv has none.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        planes: Sequence[int] = SPUNET_PRESETS["SpUNet34C"]["channels"],
        layers: Sequence[int] = SPUNET_PRESETS["SpUNet34C"]["layers"],
        init_dim: int = 32,
        stem_kernel_size: int = 5,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
        final_bias: bool = False,
    ) -> None:
        super().__init__()
        planes, layers = tuple(int(p) for p in planes), tuple(int(n) for n in layers)
        if len(planes) != 2 * NUM_STAGES or len(layers) != 2 * NUM_STAGES:
            raise ValueError(f"planes and layers need {2 * NUM_STAGES} entries, got {planes} and {layers}")
        if in_channels <= 0 or out_channels < 0:
            raise ValueError(f"need in_channels > 0 and out_channels >= 0, got {in_channels}, {out_channels}")
        self.in_channels = in_channels
        self.out_channels = out_channels if out_channels > 0 else planes[-1]
        self.bottleneck_channels = planes[NUM_STAGES - 1]
        norm = partial(nn.BatchNorm1d, eps=bn_eps, momentum=bn_momentum)

        self.conv0p1s1 = spconv.SubMConv3d(in_channels, init_dim, kernel_size=stem_kernel_size,
                                           padding=stem_kernel_size // 2, bias=False, indice_key="stem")
        self.bn0 = norm(init_dim)
        width, skips = init_dim, [init_dim]
        for s in range(NUM_STAGES):
            conv, bn, block = self.encoder_names(s)
            self.add_module(conv, spconv.SparseConv3d(width, width, kernel_size=2, stride=2, bias=False,
                                                      indice_key=f"down{s}"))
            self.add_module(bn, norm(width))
            self.add_module(block, self._blocks(width, planes[s], layers[s], f"subm{s + 1}", norm))
            width = planes[s]
            skips.append(width)
        for j in range(NUM_STAGES):
            conv, bn, block = self.decoder_names(j)
            level = NUM_STAGES - 1 - j  # the encoder stage whose stride-2 conv this one inverts
            self.add_module(conv, spconv.SparseInverseConv3d(width, planes[4 + j], kernel_size=2, bias=False,
                                                             indice_key=f"down{level}"))
            self.add_module(bn, norm(planes[4 + j]))
            self.add_module(block, self._blocks(planes[4 + j] + skips[level], planes[4 + j], layers[4 + j],
                                                f"subm{level}", norm))
            width = planes[4 + j]
        self.final = (
            spconv.SubMConv3d(width, out_channels, kernel_size=1, bias=final_bias) if out_channels > 0
            else spconv.Identity()
        )
        self.relu = nn.ReLU()

    @staticmethod
    def encoder_names(stage: int) -> tuple[str, str, str]:
        """ME's (stride-2 conv, norm, blocks) names of encoder stage 0..3, e.g. ("conv2p2s2", "bn2", "block2")."""
        return f"conv{stage + 1}p{2 ** stage}s2", f"bn{stage + 1}", f"block{stage + 1}"

    @staticmethod
    def decoder_names(step: int) -> tuple[str, str, str]:
        """ME's (transposed conv, norm, blocks) names of decoder step 0..3, e.g. ("convtr4p16s2", "bntr4", "block5")."""
        return f"convtr{4 + step}p{16 >> step}s2", f"bntr{4 + step}", f"block{5 + step}"

    @staticmethod
    def _blocks(in_channels: int, channels: int, depth: int, key: str, norm: partial) -> spconv.SparseSequential:
        return spconv.SparseSequential(
            *(MinkBlock(in_channels if i == 0 else channels, channels, key, norm) for i in range(depth))
        )

    def _conv_norm_relu(self, names: tuple[str, str, str], x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        conv, bn, _ = names
        x = getattr(self, conv)(x)
        return x.replace_feature(self.relu(getattr(self, bn)(x.features)))

    def forward(
        self, data: dict[str, torch.Tensor], return_global: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Per-point features (N, C_out), plus the per-batch bottleneck mean (B, planes[3]) if return_global.

        data: ``grid_coord`` (N, 3) int voxel indices >= 0, unique within each batch element; ``feat`` (N, C_in);
        ``offset`` (B,) int64 cumulative point counts. Output rows follow the input rows.
        """
        x, batch_size = sparse_input(data, self.in_channels, type(self).__name__)
        x = self.conv0p1s1(x)
        x = x.replace_feature(self.relu(self.bn0(x.features)))
        skips = [x]
        for s in range(NUM_STAGES):
            names = self.encoder_names(s)
            x = getattr(self, names[2])(self._conv_norm_relu(names, x))
            skips.append(x)
        bottleneck = skips.pop()
        for j in range(NUM_STAGES):
            names = self.decoder_names(j)
            x = self._conv_norm_relu(names, x)
            x = x.replace_feature(torch.cat((x.features, skips.pop().features), dim=1))
            x = getattr(self, names[2])(x)
        features = self.final(x).features
        if not return_global:
            return features
        return features, batch_mean(bottleneck.features, bottleneck.indices[:, 0].long(), batch_size)


def _minkunet_preset(spunet_preset: str) -> dict[str, tuple[int, ...]]:
    """MinkUNet kwargs with the widths/depths of an SPUNET_PRESETS entry (both are MinkUNet's PLANES / LAYERS)."""
    return {"planes": SPUNET_PRESETS[spunet_preset]["channels"], "layers": SPUNET_PRESETS[spunet_preset]["layers"]}


MinkUNet14A = register_preset("MinkUNet14A", MinkUNet, _minkunet_preset("SpUNet14A"))
MinkUNet18A = register_preset("MinkUNet18A", MinkUNet, _minkunet_preset("SpUNet18A"))
MinkUNet34C = register_preset("MinkUNet34C", MinkUNet, _minkunet_preset("SpUNet34C"))
