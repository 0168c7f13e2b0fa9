"""Transformer-family Stage-2 models from the seed design: standard, hierarchical, enhanced."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ct25d.models.stage2.attention import TransformerStack, attention_mask, sinusoidal_positions
from ct25d.models.stage2.base import STAGE2, Stage2Model


def _with_sinusoids(h: torch.Tensor) -> torch.Tensor:
    return h + sinusoidal_positions(h.shape[1], h.shape[2], h.device, h.dtype)


@STAGE2.register("transformer")
class Transformer(Stage2Model):
    """Standard transformer encoder over slices: sinusoidal absolute positions, padded slices
    masked out as keys."""

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        d_model: int = 128,
        n_heads: int = 4,
        n_layers: int = 2,
        ff_mult: int = 2,
        dropout: float = 0.1,
        use_deltas: bool = True,
    ) -> None:
        super().__init__(
            in_dim, num_classes, feature_dim=d_model, d_model=d_model, dropout=dropout, use_deltas=use_deltas
        )
        self.encoder = TransformerStack(d_model, n_heads, n_layers, ff_mult, dropout)

    def encode(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(_with_sinusoids(h), attention_mask(mask))


@STAGE2.register("hierarchical_transformer")
class HierarchicalTransformer(Stage2Model):
    """Local attention within groups of `group_size` consecutive slices, then global attention over
    the groups' masked-mean summaries, broadcast back and added to each slice.

    Groups are counted from each study's first slice, so they do not depend on batch padding; the
    last group may be partial (L need not be divisible by the group size) and groups holding only
    padding are masked out of the global attention.
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        group_size: int = 4,
        d_model: int = 128,
        n_heads: int = 4,
        local_layers: int = 1,
        global_layers: int = 1,
        ff_mult: int = 2,
        dropout: float = 0.1,
        use_deltas: bool = True,
    ) -> None:
        super().__init__(
            in_dim, num_classes, feature_dim=d_model, d_model=d_model, dropout=dropout, use_deltas=use_deltas
        )
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1; got {group_size}")
        self.group_size = group_size
        self.local = TransformerStack(d_model, n_heads, local_layers, ff_mult, dropout)
        self.global_ = TransformerStack(d_model, n_heads, global_layers, ff_mult, dropout)
        self.fuse = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model)

    def encode(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, L, d = h.shape
        G = self.group_size
        group = torch.arange(L, device=h.device) // G
        local = self.local(_with_sinusoids(h), attention_mask(mask, group[:, None] == group[None, :]))

        n_groups = math.ceil(L / G)
        pad = n_groups * G - L
        summed = (
            F.pad(torch.where(mask.unsqueeze(-1), local, 0.0), (0, 0, 0, pad)).view(B, n_groups, G, d).sum(2)
        )
        counts = F.pad(mask, (0, pad)).view(B, n_groups, G).sum(2)
        summaries = summed / counts.clamp(min=1).unsqueeze(-1).to(h.dtype)
        context = self.global_(_with_sinusoids(summaries), attention_mask(counts > 0))

        per_slice = context.repeat_interleave(G, dim=1)[:, :L]
        return self.norm(local + self.fuse(per_slice))


@STAGE2.register("enhanced_transformer")
class EnhancedTransformer(Stage2Model):
    """Multi-scale attention: in every layer `n_local_heads` heads see only slices with
    |i - j| <= `window`, the `n_global_heads` others see the whole study; positions are a learnt
    table of `max_len` rows (so they can adapt to CT slice statistics)."""

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        window: int = 2,
        n_local_heads: int = 2,
        n_global_heads: int = 2,
        max_len: int = 512,
        d_model: int = 128,
        n_layers: int = 2,
        ff_mult: int = 2,
        dropout: float = 0.1,
        use_deltas: bool = True,
    ) -> None:
        super().__init__(
            in_dim, num_classes, feature_dim=d_model, d_model=d_model, dropout=dropout, use_deltas=use_deltas
        )
        self.window = window
        self.n_local_heads = n_local_heads
        self.n_global_heads = n_global_heads
        self.max_len = max_len
        self.pos_embedding = nn.Parameter(torch.zeros(max_len, d_model))
        nn.init.trunc_normal_(self.pos_embedding, std=0.02)
        self.encoder = TransformerStack(d_model, n_local_heads + n_global_heads, n_layers, ff_mult, dropout)

    def encode(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        length = h.shape[1]
        if length > self.max_len:
            raise ValueError(
                f"enhanced_transformer got {length} slices but was built with max_len={self.max_len}; "
                "raise max_len in the model config (or resample/crop the study)"
            )
        idx = torch.arange(length, device=h.device)
        local = (idx[:, None] - idx[None, :]).abs() <= self.window
        full = torch.ones_like(local)
        heads = torch.stack([local] * self.n_local_heads + [full] * self.n_global_heads)
        return self.encoder(h + self.pos_embedding[:length], attention_mask(mask, heads))
