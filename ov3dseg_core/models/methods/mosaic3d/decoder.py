"""Mosaic3D's instance decoder (Sec. 4.2): a Mask3D-style transformer with non-parametric queries.

Queries are the positional encodings of Q points sampled from the scene by farthest point sampling (Mask3D's
``non_parametric_queries``), their content the projected encoder features of those points plus the same encodings
(Mask3D's ``use_np_features``; zero content learnt several times slower in short runs). Each layer:
cross-attention of the queries to the point features (plus the points' positional encodings), self-attention
among the queries, an FFN. Outputs per query after every layer (the loss supervises all of them, as Mask3D's):
objectness o = Linear(Z_mask) (Q, 2), mask logits Z_mask Z'^T (Q, N) (S_pred = sigmoid of them, Eq. 6) and an
embedding in the text space (Eq. 7's Z_mask).

Deviation, stated: Eq. 6 writes S_pred = sigmoid(Z_mask Z^T) with Z the encoder's features. The encoder here is
frozen and its unit features are semantic only (two chairs get the same feature), so the masks are taken against
Z' = MLP(Z, PE(xyz)), the encoder features with the points' positional encodings (Mask3D's mask features play
this role). The caption embedding is a separate linear head of the same query state.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class DecoderConfig:
    """d_model / heads / layers / ffn: transformer sizes; queries: Q; frequencies: Fourier bands of the positional
    encoding; attention_points: at most this many points as attention keys (an even stride over the scene)."""

    d_model: int = 128
    heads: int = 4
    layers: int = 3
    ffn: int = 256
    queries: int = 32
    frequencies: int = 6
    attention_points: int = 4096


def farthest_points(coord: torch.Tensor, num: int) -> torch.Tensor:
    """Indices (min(num, N),) of farthest point sampling of coord (N, 3), starting from the point nearest the
    centroid (deterministic)."""
    n = len(coord)
    num = min(num, n)
    chosen = torch.empty(num, dtype=torch.int64, device=coord.device)
    chosen[0] = (coord - coord.mean(0)).norm(dim=1).argmin()
    dist = torch.full((n,), float("inf"), device=coord.device)
    for i in range(1, num):  # one step per query, vectorised over points
        dist = torch.minimum(dist, (coord - coord[chosen[i - 1]]).square().sum(1))
        chosen[i] = dist.argmax()
    return chosen


def fourier_encoding(coord: torch.Tensor, frequencies: int) -> torch.Tensor:
    """Sin/cos encoding (N, 6 F) of coordinates (N, 3) normalised to [0, 1] over the scene's bounding box."""
    lo, hi = coord.min(0).values, coord.max(0).values
    x = (coord - lo) / (hi - lo).clamp_min(1e-6)
    bands = (2.0 ** torch.arange(frequencies, device=coord.device, dtype=coord.dtype)) * math.pi
    angles = (x[:, :, None] * bands).flatten(1)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cross = nn.MultiheadAttention(cfg.d_model, cfg.heads, batch_first=True)
        self.self_attn = nn.MultiheadAttention(cfg.d_model, cfg.heads, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(cfg.d_model, cfg.ffn), nn.ReLU(), nn.Linear(cfg.ffn, cfg.d_model))
        self.norms = nn.ModuleList(nn.LayerNorm(cfg.d_model) for _ in range(3))

    def forward(self, q: torch.Tensor, q_pos: torch.Tensor, keys: torch.Tensor, key_pos: torch.Tensor) -> torch.Tensor:
        """q, q_pos (1, Q, C); keys, key_pos (1, K, C) -> (1, Q, C)."""
        q = self.norms[0](q + self.cross(q + q_pos, keys + key_pos, keys, need_weights=False)[0])
        q = self.norms[1](q + self.self_attn(q + q_pos, q + q_pos, q, need_weights=False)[0])
        return self.norms[2](q + self.ffn(q))


class InstanceDecoder(nn.Module):
    """Point features Z (N, text_dim) and coordinates (N, 3) of one scene -> objectness (Q, 2), mask logits (Q, N)
    and text-space embeddings (Q, text_dim)."""

    def __init__(self, cfg: DecoderConfig, text_dim: int):
        super().__init__()
        self.cfg = cfg
        c = cfg.d_model
        self.pos = nn.Sequential(nn.Linear(6 * cfg.frequencies, c), nn.ReLU(), nn.Linear(c, c))
        self.point_proj = nn.Linear(text_dim, c)
        self.mask_features = nn.Sequential(nn.Linear(2 * c, c), nn.ReLU(), nn.Linear(c, c))
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.layers))
        self.objectness = nn.Linear(c, 2)
        self.mask_embed = nn.Sequential(nn.Linear(c, c), nn.ReLU(), nn.Linear(c, c))
        self.caption_embed = nn.Linear(c, text_dim)

    def forward(self, features: torch.Tensor, coord: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The last layer's (objectness, mask logits, embeddings)."""
        return self.forward_layers(features, coord)[-1]

    def forward_layers(self, features: torch.Tensor, coord: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        """(objectness, mask logits, embeddings) after every layer (Mask3D's deep supervision)."""
        pos = self.pos(fourier_encoding(coord.float(), self.cfg.frequencies))
        points = self.point_proj(features)
        stride = max(1, math.ceil(len(coord) / self.cfg.attention_points))
        keys, key_pos = points[::stride][None], pos[::stride][None]
        sampled = farthest_points(coord.float(), self.cfg.queries)
        q_pos = pos[sampled][None]
        q = (points[sampled] + pos[sampled])[None]
        mask_feats = self.mask_features(torch.cat([points, pos], dim=1))
        outputs = []
        for layer in self.layers:
            q = layer(q, q_pos, keys, key_pos)
            outputs.append((self.objectness(q[0]), self.mask_embed(q[0]) @ mask_feats.t(), self.caption_embed(q[0])))
        return outputs


@dataclass
class Objects:
    """Instances of one scene: masks (O, N) bool over its points/voxels, scores (O,) in [0, 1] (objectness times
    the mean mask probability inside the mask, Mask3D's score), embeddings (O, D) unit text-space vectors, sorted
    by score."""

    masks: torch.Tensor
    scores: torch.Tensor
    embeddings: torch.Tensor

    def rank(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Objects ranked for a text query embedding text (D,): (order (O,) int64 best first, cosines (O,))."""
        cosine = self.embeddings @ F.normalize(text.to(self.embeddings), dim=-1)
        return cosine.argsort(descending=True), cosine


def select_objects(objectness: torch.Tensor, mask_logits: torch.Tensor, embeddings: torch.Tensor,
                   score_threshold: float = 0.2, min_points: int = 10) -> Objects:
    """The decoder's outputs of one scene -> ``Objects``: masks sigmoid > 0.5 with at least ``min_points``,
    score p_object * mean probability inside >= score_threshold."""
    prob = mask_logits.sigmoid()
    masks = prob > 0.5
    count = masks.sum(1)
    inside = (prob * masks).sum(1) / count.clamp_min(1)
    scores = objectness.softmax(-1)[:, 1] * inside
    keep = torch.nonzero((count >= min_points) & (scores >= score_threshold))[:, 0]
    keep = keep[scores[keep].argsort(descending=True)]
    return Objects(masks[keep], scores[keep], F.normalize(embeddings[keep], dim=-1))
