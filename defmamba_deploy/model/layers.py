"""Small building blocks of DefMamba (written here; timm is not a dependency)."""
from __future__ import annotations

import torch
from torch import nn


class Permute(nn.Module):
    """``x.permute(*dims)`` as a module, so Sequential indices match the official state_dict keys."""

    def __init__(self, *dims: int) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)

    def extra_repr(self) -> str:
        return f"dims={self.dims}"


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a channels-first (B, C, H, W) tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class Mlp(nn.Module):
    """fc1 -> GELU (exact) -> fc2, on channels-last input."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def stem(in_chans: int, dim: int) -> nn.Sequential:
    """Two stride-2 3x3 convs to (B, H/4, W/4, C1); indices 0/2/5/7 match ``patch_embed.*``."""
    return nn.Sequential(
        nn.Conv2d(in_chans, dim // 2, 3, stride=2, padding=1),
        Permute(0, 2, 3, 1),
        nn.LayerNorm(dim // 2),
        Permute(0, 3, 1, 2),
        nn.GELU(),
        nn.Conv2d(dim // 2, dim, 3, stride=2, padding=1),
        Permute(0, 2, 3, 1),
        nn.LayerNorm(dim),
    )


def downsample(dim: int, out_dim: int) -> nn.Sequential:
    """Conv 3x3 stride 2 then LayerNorm, channels-last in and out; indices 1/3 match the keys."""
    return nn.Sequential(
        Permute(0, 3, 1, 2),
        nn.Conv2d(dim, out_dim, 3, stride=2, padding=1),
        Permute(0, 2, 3, 1),
        nn.LayerNorm(out_dim),
    )
