"""Mask2Former's multi-scale deformable-attention pixel decoder (as used by ODISE and XMask3D), in plain PyTorch.

The three coarsest feature levels go through a deformable-attention transformer encoder; finer levels are merged
in an FPN, whose last output becomes the per-pixel mask features.
"""
from __future__ import annotations

from dataclasses import dataclass

import math

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class PixelDecoderConfig:
    dim: int = 256
    mask_dim: int = 256
    num_heads: int = 8
    ffn_dim: int = 1024
    num_layers: int = 6
    num_points: int = 4


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels), channels)


def sine_position_encoding(b: int, h: int, w: int, dim: int, device: torch.device,
                           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """DETR's normalised 2D sine position encoding -> (B, dim, H, W) (dim/2 channels for y, then dim/2 for x)."""
    if dim % 2:
        raise ValueError(f"position encoding dim must be even, got {dim}")
    npf = dim // 2
    eps, scale = 1e-6, 2 * math.pi
    y = torch.arange(1, h + 1, device=device, dtype=dtype)[:, None].expand(h, w) / (h + eps) * scale
    x = torch.arange(1, w + 1, device=device, dtype=dtype)[None, :].expand(h, w) / (w + eps) * scale
    dim_t = 10000 ** (2 * (torch.arange(npf, device=device, dtype=dtype) // 2) / npf)
    pos_x, pos_y = x[..., None] / dim_t, y[..., None] / dim_t
    pos_x = torch.stack([pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()], dim=3).flatten(2)
    pos_y = torch.stack([pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()], dim=3).flatten(2)
    return torch.cat([pos_y, pos_x], dim=2).permute(2, 0, 1)[None].expand(b, -1, -1, -1)


def ms_deform_attn(value: torch.Tensor, shapes: list[tuple[int, int]], locations: torch.Tensor,
                   weights: torch.Tensor) -> torch.Tensor:
    """Multi-scale deformable attention core.

    value (B, S, nH, dh) with S = sum(h * w) over levels; locations (B, Lq, nH, nL, nP, 2) as (x, y) in [0, 1];
    weights (B, Lq, nH, nL, nP) -> (B, Lq, nH * dh). Samples bilinearly (zeros outside) with grid_sample.
    """
    b, _, n_heads, dh = value.shape
    _, lq, _, n_levels, n_points, _ = locations.shape
    values = value.split([h * w for h, w in shapes], dim=1)
    grids = 2.0 * locations - 1.0
    sampled = []
    for lvl, (h, w) in enumerate(shapes):
        v = values[lvl].flatten(2).transpose(1, 2).reshape(b * n_heads, dh, h, w)
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)  # (B*nH, Lq, nP, 2)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    stacked = torch.stack(sampled, dim=-2).flatten(-2)  # (B*nH, dh, Lq, nL*nP)
    attn = weights.transpose(1, 2).reshape(b * n_heads, 1, lq, n_levels * n_points)
    out = (stacked * attn).sum(-1).view(b, n_heads * dh, lq)
    return out.transpose(1, 2)


class MSDeformAttn(nn.Module):
    """Deformable DETR's multi-scale deformable attention module."""

    def __init__(self, dim: int, n_levels: int, n_heads: int, n_points: int):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"dim {dim} is not divisible by n_heads {n_heads}")
        self.n_levels, self.n_heads, self.n_points = n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(dim, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(dim, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(n_heads, dtype=torch.float32) * (2.0 * math.pi / n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(n_heads, 1, 1, 2).repeat(1, n_levels, n_points, 1)
        grid = grid * torch.arange(1, n_points + 1, dtype=torch.float32).view(1, 1, n_points, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(self, query: torch.Tensor, reference: torch.Tensor, src: torch.Tensor,
                shapes: list[tuple[int, int]]) -> torch.Tensor:
        """query (B, Lq, C), reference (B, Lq, 2) in [0, 1], src (B, S, C) flattened levels of ``shapes``."""
        b, lq, _ = query.shape
        value = self.value_proj(src).view(b, src.shape[1], self.n_heads, -1)
        offsets = self.sampling_offsets(query).view(b, lq, self.n_heads, self.n_levels, self.n_points, 2)
        weights = self.attention_weights(query).view(b, lq, self.n_heads, self.n_levels * self.n_points)
        weights = weights.softmax(-1).view(b, lq, self.n_heads, self.n_levels, self.n_points)
        normaliser = torch.tensor([[w, h] for h, w in shapes], dtype=query.dtype, device=query.device)
        locations = reference[:, :, None, None, None, :] + offsets / normaliser[None, None, None, :, None, :]
        return self.output_proj(ms_deform_attn(value, shapes, locations, weights))


class DeformEncoderLayer(nn.Module):
    """Post-norm encoder layer: deformable self-attention and a ReLU FFN."""

    def __init__(self, dim: int, ffn_dim: int, n_levels: int, n_heads: int, n_points: int):
        super().__init__()
        self.attn = MSDeformAttn(dim, n_levels, n_heads, n_points)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(inplace=True), nn.Linear(ffn_dim, dim))
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, src, pos, reference, shapes):
        src = self.norm1(src + self.attn(src + pos, reference, src, shapes))
        return self.norm2(src + self.ffn(src))


class PixelDecoder(nn.Module):
    """MSDeformAttnPixelDecoder: inputs {stride: (B, in_channels, H/s, W/s)} -> (mask_features (B, mask_dim,
    H/s_min, W/s_min), multi-scale features: list of (B, dim, H/s, W/s) for the transformer strides, coarse first).

    strides: the input strides; the ``num_levels`` coarsest go through the deformable transformer (6 layers in
    Mask2Former), the finer ones through the FPN.
    """

    def __init__(self, strides: list[int], in_channels: int, dim: int = 256, mask_dim: int = 256, num_heads: int = 8,
                 ffn_dim: int = 1024, num_layers: int = 6, num_points: int = 4, num_levels: int = 3):
        super().__init__()
        strides = sorted(strides)
        self.transformer_strides = strides[::-1][:num_levels]  # coarse -> fine
        self.fpn_strides = [s for s in strides[::-1] if s not in self.transformer_strides]
        if len(self.fpn_strides) + len(self.transformer_strides) != len(strides):
            raise ValueError(f"duplicate strides in {strides}")
        n = len(self.transformer_strides)
        self.input_proj = nn.ModuleList(nn.Sequential(nn.Conv2d(in_channels, dim, 1), group_norm(dim))
                                        for _ in range(n))
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)
        self.level_embed = nn.Parameter(torch.empty(n, dim))
        nn.init.normal_(self.level_embed)
        self.layers = nn.ModuleList(DeformEncoderLayer(dim, ffn_dim, n, num_heads, num_points)
                                    for _ in range(num_layers))
        self.lateral = nn.ModuleList(nn.Sequential(nn.Conv2d(in_channels, dim, 1, bias=False), group_norm(dim))
                                     for _ in self.fpn_strides)
        self.output = nn.ModuleList(nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, bias=False), group_norm(dim),
                                                  nn.ReLU(inplace=True)) for _ in self.fpn_strides)
        self.mask_features = nn.Conv2d(dim, mask_dim, 1)
        self.dim = dim

    def forward(self, features: dict[int, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        missing = [s for s in self.transformer_strides + self.fpn_strides if s not in features]
        if missing:
            raise ValueError(f"pixel decoder needs strides {missing}, got {sorted(features)}")
        srcs, pos, refs, shapes = [], [], [], []
        for lvl, stride in enumerate(self.transformer_strides):
            x = self.input_proj[lvl](features[stride])
            b, c, h, w = x.shape
            shapes.append((h, w))
            srcs.append(x.flatten(2).transpose(1, 2))
            pe = sine_position_encoding(b, h, w, c, x.device, x.dtype).flatten(2).transpose(1, 2)
            pos.append(pe + self.level_embed[lvl])
            ys = (torch.arange(h, device=x.device, dtype=x.dtype) + 0.5) / h
            xs = (torch.arange(w, device=x.device, dtype=x.dtype) + 0.5) / w
            ref = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(1, -1, 2)
            refs.append(ref.expand(b, -1, -1))
        src, pos_all, ref_all = torch.cat(srcs, 1), torch.cat(pos, 1), torch.cat(refs, 1)
        for layer in self.layers:
            src = layer(src, pos_all, ref_all, shapes)
        b = src.shape[0]
        outs = [s.transpose(1, 2).reshape(b, self.dim, h, w)
                for s, (h, w) in zip(src.split([h * w for h, w in shapes], dim=1), shapes)]
        y = outs[-1]
        for stride, lateral, output in zip(self.fpn_strides, self.lateral, self.output):
            x = lateral(features[stride])
            y = output(x + F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False))
        return self.mask_features(y), outs
