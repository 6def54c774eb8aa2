"""The Implicit 3D Captioner of XMask3D (Eq. 4): an MLP mapping the global point-cloud feature f3d to the
diffusion UNet's text-condition tokens. With a CLIP image embedding as input it is ODISE's implicit captioner
(the 2D-condition variant, Eq. 3).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class CaptionerConfig:
    """condition: "3d" (Eq. 4, f3d from the point-cloud encoder) or "2d" (Eq. 3, CLIP image embedding);
    latent_dim: width of the adapter output; time_condition: also offset the UNet timestep embedding (ODISE)."""

    condition: str = "3d"
    latent_dim: int = 768
    time_condition: bool = True


class PositionalLinear(nn.Module):
    """Linear(in_dim, out_dim) of a (B, in_dim) vector broadcast over num_tokens positions plus a learned positional
    embedding -> (B, num_tokens, out_dim)."""

    def __init__(self, in_dim: int, out_dim: int, num_tokens: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        self.positional_embedding = nn.Parameter(torch.zeros(1, num_tokens, out_dim))
        nn.init.trunc_normal_(self.positional_embedding, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).unsqueeze(1) + self.positional_embedding


class ImplicitCaptioner(nn.Module):
    """f3d (B, in_dim) -> condition tokens (B, T, token_dim) and a time-embedding offset (B, time_dim).

    tokens = null_tokens + tanh(alpha) * PositionalLinear(adapter(f3d)), where null_tokens (T, token_dim) is the
    UNet's embedding of the empty prompt and alpha (T, token_dim) starts at 0, so training starts from the
    unconditional UNet (ODISE's gated design). The time offset tanh(alpha_t) * Linear(adapter(f3d)) is added to
    the UNet's timestep embedding (time_dim = 0 disables it).
    """

    def __init__(self, in_dim: int, latent_dim: int, num_tokens: int, token_dim: int, time_dim: int = 0):
        super().__init__()
        self.adapter = nn.Linear(in_dim, latent_dim)
        self.token_proj = PositionalLinear(latent_dim, token_dim, num_tokens)
        self.alpha = nn.Parameter(torch.zeros(num_tokens, token_dim))
        self.time_proj = PositionalLinear(latent_dim, time_dim, 1) if time_dim > 0 else None
        self.alpha_time = nn.Parameter(torch.zeros(time_dim)) if time_dim > 0 else None

    def forward(self, f: torch.Tensor, null_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """f: (B, in_dim); null_tokens: (T, token_dim) -> (tokens (B, T, token_dim), time offset (B, time_dim) or
        None)."""
        if f.ndim != 2:
            raise ValueError(f"the captioner input must be (B, C), got shape {tuple(f.shape)}")
        z = self.adapter(f)
        tokens = null_tokens.to(z.dtype) + torch.tanh(self.alpha) * self.token_proj(z)
        if self.time_proj is None:
            return tokens, None
        return tokens, torch.tanh(self.alpha_time) * self.time_proj(z)[:, 0]
