"""Scatter pooling over segments (superpoints, instances, batch elements): mean, weighted mean, softmax, broadcast.

``index`` (N,) int64 assigns each of N rows to a segment in [0, S); empty segments give zero rows.
"""
from __future__ import annotations

import torch


def segment_count(index: torch.Tensor, num_segments: int) -> torch.Tensor:
    """(S,) float32 number of rows in each segment."""
    return torch.bincount(index, minlength=num_segments).float()


def scatter_mean(src: torch.Tensor, index: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Mean of src (N, C) rows per segment -> (S, C)."""
    total = src.new_zeros(num_segments, src.shape[1]).index_add_(0, index, src)
    return total / segment_count(index, num_segments).clamp_min(1.0).to(src.dtype)[:, None]


def scatter_weighted_mean(src: torch.Tensor, weight: torch.Tensor, index: torch.Tensor,
                          num_segments: int) -> torch.Tensor:
    """sum_i w_i src_i / sum_i w_i per segment; src (N, C), weight (N,) >= 0 -> (S, C)."""
    total = src.new_zeros(num_segments, src.shape[1]).index_add_(0, index, src * weight[:, None])
    norm = weight.new_zeros(num_segments).index_add_(0, index, weight)
    return total / norm.clamp_min(1e-12)[:, None]


def scatter_softmax(logits: torch.Tensor, index: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Softmax of logits (N,) within each segment -> (N,) weights summing to 1 per non-empty segment."""
    peak = logits.new_full((num_segments,), float("-inf")).scatter_reduce(0, index, logits.detach(), "amax")
    e = (logits - peak[index]).exp()
    return e / e.new_zeros(num_segments).index_add_(0, index, e)[index]

