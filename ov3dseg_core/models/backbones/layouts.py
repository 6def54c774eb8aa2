"""Convolution weight layouts: spconv 2.x (what our backbones hold), MinkowskiEngine kernels, Mosaic3D's 1x1 convs.

spconv 2.x (``FILTER_HWIO = False``, KRSC) stores a sparse conv weight as (C_out, K, K, K, C_in), where index
k_d in [0, K) is the kernel offset along grid axis d (the columns of ``grid_coord``): ``out[p] += W[:, k, :] @ in[q]``
with q_d = p_d + k_d - K//2 for submanifold (odd K) convs and q_d = 2 p_d + k_d for the K = 2, stride 2 convs (the
inverse conv scatters back along the same pairs, unflipped). A 1x1 conv is the exception: spconv multiplies the
features by ``weight.view(C_in, C_out)``, i.e. it reads the same (C_out, 1, 1, 1, C_in) buffer as an (in, out)
matrix (spconv/pytorch/conv.py, ``conv1x1``).

MinkowskiEngine stores a kernel as (K^3, C_in, C_out) with ``out = in @ kernel[k]``; offset index k runs with the
first axis fastest (k = i_0 + K i_1 + K^2 i_2), offset i_d - K//2 for odd K and i_d for even K (src/kernel_region.hpp,
``coordinate_at``). A stride-1 kernel-1 conv keeps a plain (C_in, C_out) matrix (MinkowskiConvolution.py,
``use_mm``).

Mosaic3D's ``Custom1x1Subm3d`` keeps spconv's (C_out, 1, 1, 1, C_in) parameter but computes
``x @ weight.view(C_out, C_in).T`` (src/models/utils/structure.py), the transpose of spconv's reading.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ov3dseg_core import compat

compat.apply()
from spconv.pytorch.conv import SparseConvolution  # noqa: E402  (after the CPU fixes)


def spconv_pointwise(matrix: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """spconv 1x1 conv weight of ``shape`` (C_out, 1, 1, 1, C_in) multiplying features by ``matrix`` (C_in, C_out)."""
    if tuple(matrix.shape) != (shape[-1], shape[0]) or math.prod(shape[1:-1]) != 1:
        raise ValueError(f"a ({shape[-1]}, {shape[0]}) matrix is needed for a 1x1 weight {tuple(shape)}, "
                         f"got {tuple(matrix.shape)}")
    return matrix.contiguous().reshape(shape)


def out_in_pointwise_to_spconv(weight: torch.Tensor) -> torch.Tensor:
    """Mosaic3D ``Custom1x1Subm3d`` weight (C_out, 1, 1, 1, C_in) -> the spconv 1x1 weight computing the same map."""
    out_channels, in_channels = weight.shape[0], weight.shape[-1]
    return spconv_pointwise(weight.reshape(out_channels, in_channels).t(), weight.shape)


def minkowski_to_spconv(kernel: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """MinkowskiEngine kernel -> spconv weight of ``shape`` (C_out, K, K, K, C_in) computing the same convolution.

    ``kernel`` is (K^3, C_in, C_out) with offsets ordered first axis fastest, or the (C_in, C_out) matrix of a
    stride-1 kernel-1 conv (which becomes spconv's 1x1 (in, out) reading).
    """
    out_channels, size, in_channels = shape[0], shape[1], shape[-1]
    if size == 1:
        return spconv_pointwise(kernel.reshape(in_channels, out_channels) if kernel.dim() == 3 else kernel, shape)
    if tuple(kernel.shape) != (size**3, in_channels, out_channels):
        raise ValueError(f"a ({size**3}, {in_channels}, {out_channels}) kernel is needed for a weight "
                         f"{tuple(shape)}, got {tuple(kernel.shape)}")
    # (i_2, i_1, i_0, C_in, C_out) -> (C_out, i_0, i_1, i_2, C_in)
    return kernel.reshape(size, size, size, in_channels, out_channels).permute(4, 2, 1, 0, 3).contiguous()


def pointwise_weight_keys(model: nn.Module) -> list[str]:
    """State-dict keys of the model's spconv 1x1 conv weights (those spconv reads as (C_in, C_out) matrices)."""
    return [f"{name}.weight" for name, module in model.named_modules()
            if isinstance(module, SparseConvolution) and math.prod(module.kernel_size) == 1]
