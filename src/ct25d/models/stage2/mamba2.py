"""Bidirectional Mamba2 (selective state-space, SSD) Stage-2 model in plain PyTorch.

The mixer keeps the parameter names and shapes of `mamba_ssm.Mamba2` (ngroups=1: `in_proj`
producing [z, x, B, C, dt], depthwise causal `conv1d`, `dt_bias`, `A_log`, `D`, gated RMS
`norm`, `out_proj`), so one checkpoint runs on both the plain path and the fused CUDA kernel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ct25d.models.stage2.base import STAGE2, Stage2Model, lengths_of

# ---- Optional fused CUDA kernel from the maintained `mamba_ssm` package. -------------------------
# Used only when importable AND the input is on CUDA; it is not installed in CI, so this path is
# untested here. It consumes this module's own parameters (same layout as mamba_ssm.Mamba2).
try:
    from mamba_ssm.ops.triton.ssd_combined import mamba_split_conv1d_scan_combined as _fused_scan
except (ImportError, OSError, RuntimeError):  # pragma: no cover - depends on the environment
    _fused_scan = None
# ---------------------------------------------------------------------------------------------------


def segsum(a: torch.Tensor) -> torch.Tensor:
    """(..., T) -> (..., T, T) with out[t, s] = a[s+1] + ... + a[t] for s <= t and -inf above the
    diagonal; summed directly (not as cumsum differences) to avoid cancellation."""
    T = a.shape[-1]
    strict = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device), diagonal=-1)
    out = torch.cumsum(a[..., :, None].expand(*a.shape, T).masked_fill(~strict, 0.0), dim=-2)
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device))
    return out.masked_fill(~causal, float("-inf"))


def ssd_sequential(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor
) -> torch.Tensor:
    """Reference recurrence (the definition): h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T,
    y_t = h_t C_t. Shapes: x (b, L, H, P), dt (b, L, H), A (H,), B/C (b, L, N) -> (b, L, H, P)."""
    b, L, H, P = x.shape
    state = x.new_zeros(b, H, P, B.shape[-1])
    ys = []
    for t in range(L):
        decay = torch.exp(dt[:, t] * A)[..., None, None]
        state = decay * state + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, None, None, :]
        ys.append(torch.einsum("bhpn,bn->bhp", state, C[:, t]))
    return torch.stack(ys, dim=1)


def ssd_chunked(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, chunk_size: int
) -> torch.Tensor:
    """Same result as `ssd_sequential`, computed as Mamba2's chunked SSD ("ssd_minimal"): exact
    quadratic (attention-like) form inside chunks, state passing between chunks. Memory is
    O(L * chunk_size) instead of O(L^2). The tail is zero-padded to whole chunks; the scan is
    causal, so that padding cannot affect earlier outputs."""
    b, L, H, P = x.shape
    pad = (-L) % chunk_size
    n = (L + pad) // chunk_size
    X = F.pad(x * dt[..., None], (0, 0, 0, 0, 0, pad)).view(b, n, chunk_size, H, P)
    a = F.pad(dt * A, (0, 0, 0, pad)).view(b, n, chunk_size, H).permute(0, 3, 1, 2)  # b h c l
    Bc = F.pad(B, (0, 0, 0, pad)).view(b, n, chunk_size, -1)
    Cc = F.pad(C, (0, 0, 0, pad)).view(b, n, chunk_size, -1)
    a_cum = torch.cumsum(a, dim=-1)

    within = torch.exp(segsum(a))  # b h c l s
    y_diag = torch.einsum("bcln,bcsn,bhcls,bcshp->bclhp", Cc, Bc, within, X)

    to_chunk_end = torch.exp(a_cum[..., -1:] - a_cum)
    states = torch.einsum("bcln,bhcl,bclhp->bchpn", Bc, to_chunk_end, X)
    states = torch.cat([torch.zeros_like(states[:, :1]), states], dim=1)
    across = torch.exp(segsum(F.pad(a_cum[..., -1], (1, 0))))  # b h (c+1) (c+1)
    states = torch.einsum("bhzc,bchpn->bzhpn", across, states)[:, :-1]
    y_off = torch.einsum("bcln,bchpn,bhcl->bclhp", Cc, states, torch.exp(a_cum))
    return (y_diag + y_off).reshape(b, n * chunk_size, H, P)[:, :L]


class GatedRMSNorm(nn.Module):
    """RMSNorm(x * silu(z)) as in Mamba2 (`norm_before_gate=False`)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        x = x * F.silu(z)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Mamba2Mixer(nn.Module):
    """One causal Mamba2 mixer: input-dependent dt/B/C, one scalar decay A per head (SSD), short
    depthwise causal conv, SiLU gate, gated RMSNorm. (b, L, d_model) -> (b, L, d_model)."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 32,
        chunk_size: int = 64,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        use_fused: bool = True,
    ) -> None:
        super().__init__()
        self.d_inner = expand * d_model
        if self.d_inner % headdim:
            raise ValueError(f"expand * d_model = {self.d_inner} must be divisible by headdim={headdim}")
        self.d_state, self.headdim, self.chunk_size = d_state, headdim, chunk_size
        self.nheads = self.d_inner // headdim
        self.conv_dim = self.d_inner + 2 * d_state
        self.use_fused = use_fused
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner + 2 * d_state + self.nheads, bias=False)
        self.conv1d = nn.Conv1d(
            self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim, padding=d_conv - 1
        )
        dt = torch.exp(torch.rand(self.nheads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.A_log = nn.Parameter(torch.log(torch.empty(self.nheads).uniform_(1.0, 16.0)))
        self.D = nn.Parameter(torch.ones(self.nheads))
        self.norm = GatedRMSNorm(self.d_inner)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        if self.use_fused and _fused_scan is not None and u.is_cuda:  # pragma: no cover
            return self._forward_fused(u)
        b, L, _ = u.shape
        z, xBC, dt = self.in_proj(u).split([self.d_inner, self.conv_dim, self.nheads], dim=-1)
        xBC = F.silu(self.conv1d(xBC.transpose(1, 2))[..., :L].transpose(1, 2))  # causal: drop the tail
        x, B, C = xBC.split([self.d_inner, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(dt + self.dt_bias)
        A = -torch.exp(self.A_log)
        x = x.reshape(b, L, self.nheads, self.headdim)
        y = ssd_chunked(x, dt, A, B, C, self.chunk_size) + x * self.D[:, None]
        return self.out_proj(self.norm(y.reshape(b, L, self.d_inner), z))

    def _forward_fused(self, u: torch.Tensor) -> torch.Tensor:  # pragma: no cover - needs mamba_ssm + CUDA
        """mamba_ssm's fused split/conv/scan/norm/out-proj kernel on this module's parameters."""
        return _fused_scan(
            self.in_proj(u),
            self.conv1d.weight.squeeze(1),
            self.conv1d.bias,
            self.dt_bias,
            -torch.exp(self.A_log.float()),
            self.D,
            self.chunk_size,
            activation="silu",
            rmsnorm_weight=self.norm.weight,
            rmsnorm_eps=self.norm.eps,
            outproj_weight=self.out_proj.weight,
            outproj_bias=self.out_proj.bias,
            headdim=self.headdim,
            ngroups=1,
            norm_before_gate=False,
        )


def reversal_index(mask: torch.Tensor) -> torch.Tensor:
    """(B, L) gather index that reverses each study's valid prefix and leaves padding in place, so
    the backward scan also starts at a real slice and padding stays behind every valid slice.
    The permutation is its own inverse."""
    t = torch.arange(mask.shape[1], device=mask.device)[None]
    n = lengths_of(mask)[:, None]
    return torch.where(t < n, n - 1 - t, t)


def _permute(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return x.gather(1, index.unsqueeze(-1).expand_as(x))


class BiMamba2Layer(nn.Module):
    """Pre-norm residual layer: forward mixer + (separately parametrised) mixer on the reversed
    valid part of each study."""

    def __init__(self, d_model: int, dropout: float, **mixer_kwargs: object) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.fwd = Mamba2Mixer(d_model, **mixer_kwargs)
        self.bwd = Mamba2Mixer(d_model, **mixer_kwargs)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, reverse: torch.Tensor) -> torch.Tensor:
        y = self.norm(h)
        both = self.fwd(y) + _permute(self.bwd(_permute(y, reverse)), reverse)
        return h + self.dropout(both)


@STAGE2.register("mamba2")
class Mamba2(Stage2Model):
    """Stack of bidirectional Mamba2 layers; linear in L, with data-dependent forgetting."""

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        d_model: int = 128,
        n_layers: int = 2,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 32,
        chunk_size: int = 64,
        dropout: float = 0.1,
        use_deltas: bool = True,
        use_fused: bool = True,
    ) -> None:
        super().__init__(
            in_dim, num_classes, feature_dim=d_model, d_model=d_model, dropout=dropout, use_deltas=use_deltas
        )
        mixer = dict(
            d_state=d_state,
            d_conv=d_conv,
            expand=expand,
            headdim=headdim,
            chunk_size=chunk_size,
            use_fused=use_fused,
        )
        self.layers = nn.ModuleList(BiMamba2Layer(d_model, dropout, **mixer) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)

    def encode(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        reverse = reversal_index(mask)
        for layer in self.layers:
            h = layer(h, reverse)
        return self.norm(h)
