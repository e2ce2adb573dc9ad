"""DefMamba: Deformable Visual State Space Model (CVPR 2025, arXiv 2504.05794).

A faithful inference re-implementation of what docs/model.md describes (the authors' code is
the ground truth; this file reproduces its outputs and its state_dict names one for one).
Training-only parts (drop-path, weight init schemes beyond a sane default) are left out:
drop-path is the identity at inference.

Layout: the backbone works channels-last, (B, H, W, C). The three custom ops (selective scan,
deformable gather, token sort) come from :mod:`defmamba_deploy.ops`, so that exporting the model
only needs to swap those three functions.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import apply_permutation, deform_gather, selective_scan, token_sort
from .config import MIN_INPUT_SIZE, DefMambaConfig, check_input_size
from .layers import LayerNorm2d, Mlp, downsample, stem

__all__ = ["DefMambaConfig", "DefMamba", "DefMambaBackbone", "MIN_INPUT_SIZE"]


class OffsetNet(nn.Module):
    """The offset network ``DS.conv_offset``: (B, D, H, W) -> (B, 3, H, W) = (dy, dx, token offset)."""

    def __init__(self, dim: int, kernel: int) -> None:
        super().__init__()
        hidden = dim // 16
        self.conv1 = nn.Conv2d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.ca = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim), nn.Sigmoid())
        self.ln = LayerNorm2d(dim)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(dim, 3, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = self.ca(x.mean(dim=(2, 3)))[:, :, None, None]
        return self.conv2(self.act(self.ln(self.conv1(x) * attn)))


class DeformableSampler(nn.Module):
    """``op.DS``: the offset network and the relative-position bias table."""

    def __init__(self, dim: int, kernel: int, table_size: int = 7) -> None:
        super().__init__()
        self.rpe_table = nn.Parameter(torch.zeros(dim, table_size, table_size))
        self.conv_offset = OffsetNet(dim, kernel)
        nn.init.trunc_normal_(self.rpe_table, std=0.01)


class DSSM(nn.Module):
    """The deformable selective-scan mixer (``op``): three scans (raster, reversed, deformable)."""

    SCAN_REVERSE = (0, 1, 0)  # per branch: the selective scan runs backwards in time for branch 1

    def __init__(self, dim: int, d_state: int, offset_kernel: int, k_branches: int = 3) -> None:
        super().__init__()
        d_inner = dim  # ssm ratio 1
        self.d_inner, self.d_state, self.k = d_inner, d_state, k_branches
        self.dt_rank = math.ceil(dim / 16)
        r, n = self.dt_rank, d_state
        # own parameters first: this is the official key order
        self.x_proj_weight = nn.Parameter(torch.empty(k_branches, r + 2 * n, d_inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(k_branches, d_inner, r))
        self.dt_projs_bias = nn.Parameter(torch.empty(k_branches, d_inner))
        self.A_logs = nn.Parameter(torch.empty(k_branches * d_inner, n))
        self.Ds = nn.Parameter(torch.ones(k_branches * d_inner))
        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=False)
        self.conv2d = nn.Conv2d(d_inner, d_inner, 3, padding=1, groups=d_inner)
        self.out_proj = nn.Linear(d_inner, dim, bias=False)
        self.DS = DeformableSampler(d_inner, offset_kernel)
        self._reset_ssm_parameters()

    @torch.no_grad()
    def _reset_ssm_parameters(self) -> None:
        """Mamba's initialisation (S4D-real A, dt in [1e-3, 0.1]); irrelevant once weights load."""
        nn.init.uniform_(self.x_proj_weight, -self.d_inner**-0.5, self.d_inner**-0.5)
        nn.init.uniform_(self.dt_projs_weight, -self.dt_rank**-0.5, self.dt_rank**-0.5)
        dt = torch.exp(torch.rand_like(self.dt_projs_bias) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt.clamp(min=1e-4))))
        self.A_logs.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).expand_as(self.A_logs))
        self.Ds.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        length = h * w
        d, n, r, k = self.d_inner, self.d_state, self.dt_rank, self.k
        # in_proj as two half-width products (rows [:D] -> x, [D:] -> z): the same dot products as
        # Linear-then-chunk, without slicing a (B, H, W, 2D) activation in the exported graph
        w_in = self.in_proj.weight
        x, z = F.linear(x, w_in[:d]), F.silu(F.linear(x, w_in[d:]))
        x = F.silu(self.conv2d(x.permute(0, 3, 1, 2)))  # (B, D, H, W)

        offset = self.DS.conv_offset(x)  # (B, 3, H, W)
        feat = deform_gather(x, offset, self.DS.rpe_table).flatten(2)
        perm, inv_perm = token_sort(offset[:, 2].reshape(b, length))
        s0 = x.flatten(2)
        # branch 1 is the reversed raster order: its tokens are s0's, and the scan runs that group
        # backwards (reverse flag), which is exactly flip -> scan -> flip without the two copies
        xs = torch.stack((s0, s0, apply_permutation(feat, perm)), dim=1)  # (B, K, D, L)

        # per-branch projections as broadcast matmuls ((K, C', D) @ (B, K, D, L)): the same sums as the
        # authors' einsums, and they export to ONNX MatMul, which ORT runs far faster than Einsum
        w_x = self.x_proj_weight  # (K, R + 2N, D), split by rows: no slicing of activations
        dts = torch.matmul(self.dt_projs_weight, torch.matmul(w_x[:, :r], xs))  # (B, K, D, L)
        bs = torch.matmul(w_x[:, r : r + n], xs)  # (B, K, N, L)
        cs = torch.matmul(w_x[:, r + n :], xs)
        y = selective_scan(
            xs.reshape(b, k * d, length),
            dts.reshape(b, k * d, length),
            -torch.exp(self.A_logs),
            bs,
            cs,
            self.Ds,
            self.dt_projs_bias.flatten(),
            delta_softplus=True,
            reverse=self.SCAN_REVERSE,
        ).view(b, k, d, length)
        y = (y[:, 0] + y[:, 1] + apply_permutation(y[:, 2], inv_perm)) / 3
        y = y.view(b, d, h, w).permute(0, 2, 3, 1)
        return self.out_proj(y * z)


class Block(nn.Module):
    """x + DSSM(LN(x)), then x + MLP(LN(x)); channels-last."""

    def __init__(self, dim: int, d_state: int, offset_kernel: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.op = DSSM(dim, d_state, offset_kernel)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.op(self.norm(x))
        return x + self.mlp(self.norm2(x))


class Stage(nn.Module):
    def __init__(self, dim: int, out_dim: int | None, depth: int, cfg: DefMambaConfig, kernel: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[Block(dim, cfg.d_state, kernel, cfg.mlp_ratio) for _ in range(depth)])
        self.downsample = downsample(dim, out_dim) if out_dim else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(self.blocks(x))


class Classifier(nn.Module):
    """LayerNorm -> global average pool -> Linear (``classifier.norm`` / ``classifier.head``)."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.norm(x).mean(dim=(1, 2))
        return x if pre_logits else self.head(x)


class DefMamba(nn.Module):
    """DefMamba image classifier. Input (B, 3, H, W) normalised RGB, output (B, num_classes) logits."""

    def __init__(self, cfg: DefMambaConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dims = cfg.dims
        self.num_classes = cfg.num_classes
        self.num_features = dims[-1]
        self.patch_embed = stem(cfg.in_chans, dims[0])
        self.layers = nn.ModuleList(
            Stage(dims[i], dims[i + 1] if i + 1 < len(dims) else None, depth, cfg, cfg.offset_kernels[i])
            for i, depth in enumerate(cfg.depths)
        )
        self._init_extra()
        self.apply(_init_linear)

    def _init_extra(self) -> None:
        self.classifier = Classifier(self.num_features, self.cfg.num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> last-stage features (B, H/32, W/32, C4), channels-last."""
        check_input_size(x.shape[-2], x.shape[-1])
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.classifier(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class DefMambaBackbone(DefMamba):
    """Dense-prediction backbone: four feature maps (B, C_i, H/s, W/s), strides 4, 8, 16, 32.

    No classifier; after each stage a LayerNorm ``outnorm{i}`` is applied to the stage output (before
    the downsampling), and the maps are returned channels-first, as detection/segmentation necks expect.
    """

    def _init_extra(self) -> None:
        for i, dim in enumerate(self.cfg.dims):
            self.add_module(f"outnorm{i}", nn.LayerNorm(dim))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        check_input_size(x.shape[-2], x.shape[-1])
        x = self.patch_embed(x)
        outs = []
        for i, layer in enumerate(self.layers):
            o = layer.blocks(x)
            outs.append(getattr(self, f"outnorm{i}")(o).permute(0, 3, 1, 2).contiguous())
            x = layer.downsample(o)
        return outs


def _init_linear(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
