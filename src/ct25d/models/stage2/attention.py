"""Attention building blocks shared by the transformer-family Stage-2 models.

All variants are the same pre-norm block; they differ only in *which* slice pairs may attend,
expressed as one boolean "allowed" mask (True = may attend) broadcastable to (B, heads, L, L).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def attention_mask(valid: torch.Tensor, pattern: torch.Tensor | None = None) -> torch.Tensor:
    """Allowed-pairs mask (B, 1 or H, L, L) from key validity (B, L) and an optional structural
    `pattern` ((L, L) or (H, L, L), True = allowed).

    Padded keys are never allowed for any query. Each position may always attend to itself, so a
    padded query's row is never empty (an all-False row makes softmax NaN, and NaN * 0 in the next
    layer would leak into valid slices); padded outputs are discarded anyway.
    """
    L = valid.shape[1]
    allowed = valid[:, None, None, :]
    if pattern is not None:
        allowed = allowed & (pattern if pattern.ndim == 3 else pattern[None])[None]
    eye = torch.eye(L, dtype=torch.bool, device=valid.device)
    return allowed | eye


def sinusoidal_positions(length: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Fixed sine/cosine position table (length, dim) from "Attention is all you need"."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table.to(dtype)


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention with a boolean allowed-mask (may differ per head)."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by the number of heads ({n_heads})")
        self.n_heads = n_heads
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        B, L, d = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(y.transpose(1, 2).reshape(B, L, d))


class TransformerBlock(nn.Module):
    """Pre-norm transformer encoder block (attention + GELU MLP, both residual)."""

    def __init__(self, d_model: int, n_heads: int, ff_mult: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = MultiHeadAttention(d_model, n_heads, dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, ff_mult * d_model),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(ff_mult * d_model, d_model),
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.norm1(x), allowed))
        return x + self.dropout(self.mlp(self.norm2(x)))


class TransformerStack(nn.Module):
    """`n_layers` blocks sharing one allowed-mask, then a final LayerNorm (pre-norm convention)."""

    def __init__(self, d_model: int, n_heads: int, n_layers: int, ff_mult: int = 2, dropout: float = 0.1):
        super().__init__()
        self.blocks = nn.ModuleList(
            TransformerBlock(d_model, n_heads, ff_mult, dropout) for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, allowed)
        return self.norm(x)
