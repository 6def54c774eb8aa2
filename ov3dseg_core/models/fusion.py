"""The 3D-2D mask feature fusion block of XMask3D (Eq. 7)."""
from __future__ import annotations

import torch
from torch import nn


class FusionBlock(nn.Module):
    """F_fuse = MLP(cat(F3d, F2d)) on points with a 2D correspondence, F3d elsewhere (Eq. 7).

    dim: feature width D (the text-embedding width); num_layers: linear layers of the MLP (1 = a single
    Linear(2D, D), the official implementation; more layers put ReLUs between Linear(., D) layers).
    """

    def __init__(self, dim: int, num_layers: int = 1):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        layers: list[nn.Module] = [nn.Linear(2 * dim, dim)]
        for _ in range(num_layers - 1):
            layers += [nn.ReLU(inplace=True), nn.Linear(dim, dim)]
        self.mlp = nn.Sequential(*layers)

    def forward(self, f3d: torch.Tensor, f2d: torch.Tensor, has_2d: torch.Tensor) -> torch.Tensor:
        """f3d, f2d: (N, D); has_2d: (N,) bool, True where the point lies in a lifted 2D mask -> (N, D)."""
        if f3d.shape != f2d.shape or has_2d.shape != f3d.shape[:1]:
            raise ValueError(f"shape mismatch: f3d {tuple(f3d.shape)}, f2d {tuple(f2d.shape)}, "
                             f"has_2d {tuple(has_2d.shape)}")
        fused = self.mlp(torch.cat([f3d[has_2d], f2d[has_2d]], dim=-1))
        return f3d.index_put((has_2d.nonzero(as_tuple=True)[0],), fused)
