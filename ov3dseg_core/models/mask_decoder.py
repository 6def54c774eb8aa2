"""Mask2Former's multi-scale masked transformer decoder with ODISE's pooled mask embeddings.

Learnable queries attend (masked cross-attention, then self-attention, then an FFN) to the pixel decoder's levels
in turn; after every layer each query predicts a class-agnostic mask (dot product of its mask embedding with the
per-pixel mask features) and an embedding G2d in the text space (mask-pooled pixel features + the query, through
an MLP), as ODISE's PooledMaskEmbed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ov3dseg_core.models.pixel_decoder import sine_position_encoding


@dataclass
class MaskDecoderConfig:
    hidden_dim: int = 256
    num_queries: int = 50
    num_heads: int = 8
    ffn_dim: int = 2048
    num_layers: int = 9


class MLP(nn.Module):
    """num_layers Linear layers with ReLU between them."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class AttentionLayer(nn.Module):
    """Post-norm (self- or cross-) attention with positional embeddings added to queries and keys."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, tgt, memory, query_pos, memory_pos, attn_mask=None):
        out = self.attn(tgt + query_pos, memory + memory_pos, memory, attn_mask=attn_mask, need_weights=False)[0]
        return self.norm(tgt + out)


class FFNLayer(nn.Module):
    def __init__(self, dim: int, ffn_dim: int):
        super().__init__()
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(inplace=True), nn.Linear(ffn_dim, dim))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        return self.norm(x + self.ffn(x))


@dataclass
class MaskPrediction:
    """One decoder layer's output: mask_logits (B, Q, h, w) at the mask-feature resolution and mask embeddings
    G2d (B, Q, embed_dim) in the text space."""

    mask_logits: torch.Tensor
    mask_embed: torch.Tensor


class MaskDecoder(nn.Module):
    """Multi-scale masked transformer decoder.

    forward(multi_scale (coarse first, each (B, in_channels, h_l, w_l)), mask_features (B, mask_dim, h, w)) ->
    list of num_layers + 1 MaskPrediction (the prediction before the first layer, then after each layer).
    """

    def __init__(self, in_channels: int, embed_dim: int, hidden_dim: int = 256, num_queries: int = 100,
                 num_heads: int = 8, ffn_dim: int = 2048, num_layers: int = 9, mask_dim: int = 256,
                 num_levels: int = 3):
        super().__init__()
        self.num_heads, self.num_levels = num_heads, num_levels
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(num_levels, hidden_dim)
        self.input_proj = nn.ModuleList(
            nn.Identity() if in_channels == hidden_dim else nn.Conv2d(in_channels, hidden_dim, 1)
            for _ in range(num_levels))
        self.cross = nn.ModuleList(AttentionLayer(hidden_dim, num_heads) for _ in range(num_layers))
        self.self_attn = nn.ModuleList(AttentionLayer(hidden_dim, num_heads) for _ in range(num_layers))
        self.ffn = nn.ModuleList(FFNLayer(hidden_dim, ffn_dim) for _ in range(num_layers))
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)
        self.pool_proj = nn.Sequential(nn.LayerNorm(mask_dim), nn.Linear(mask_dim, hidden_dim))
        self.embed_head = nn.Sequential(nn.LayerNorm(hidden_dim), MLP(hidden_dim, hidden_dim, embed_dim, 3))

    def forward(self, multi_scale: list[torch.Tensor], mask_features: torch.Tensor) -> list[MaskPrediction]:
        if len(multi_scale) != self.num_levels:
            raise ValueError(f"mask decoder expects {self.num_levels} feature levels, got {len(multi_scale)}")
        srcs, pos, sizes = [], [], []
        for lvl, x in enumerate(multi_scale):
            b, _, h, w = x.shape
            sizes.append((h, w))
            y = self.input_proj[lvl](x)
            pos.append(sine_position_encoding(b, h, w, y.shape[1], y.device, y.dtype).flatten(2).transpose(1, 2))
            srcs.append(y.flatten(2).transpose(1, 2) + self.level_embed.weight[lvl])
        b = mask_features.shape[0]
        query_pos = self.query_embed.weight[None].expand(b, -1, -1)
        out = self.query_feat.weight[None].expand(b, -1, -1)
        preds = []
        pred, attn_mask = self._predict(out, mask_features, sizes[0])
        preds.append(pred)
        for i, (cross, self_attn, ffn) in enumerate(zip(self.cross, self.self_attn, self.ffn)):
            lvl = i % self.num_levels
            attn_mask = attn_mask & ~attn_mask.all(-1, keepdim=True)  # a query that masks everything sees all
            out = cross(out, srcs[lvl], query_pos, pos[lvl], attn_mask=attn_mask)
            out = self_attn(out, out, query_pos, query_pos)
            out = ffn(out)
            pred, attn_mask = self._predict(out, mask_features, sizes[(i + 1) % self.num_levels])
            preds.append(pred)
        return preds

    def _predict(self, out: torch.Tensor, mask_features: torch.Tensor, size: tuple[int, int]):
        decoded = self.decoder_norm(out)
        mask_logits = torch.einsum("bqc,bchw->bqhw", self.mask_embed(decoded), mask_features)
        hard = (mask_logits.detach().sigmoid() > 0.5).to(mask_features.dtype)
        pooled = torch.einsum("bchw,bqhw->bqc", mask_features, hard / (hard.sum((-1, -2), keepdim=True) + 1e-8))
        mask_embed = self.embed_head(self.pool_proj(pooled) + decoded)
        attn = F.interpolate(mask_logits.detach(), size=size, mode="bilinear", align_corners=False)
        attn_mask = (attn.sigmoid().flatten(2) < 0.5).repeat_interleave(self.num_heads, dim=0)
        return MaskPrediction(mask_logits, mask_embed), attn_mask
