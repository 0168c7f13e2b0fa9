"""The Stage-2 registry, the input contract and the shared base class.

Forward contract for every Stage-2 model: `forward(x (B, L, in_dim), mask (B, L) bool) ->
logits (B, L, num_classes)`. `mask` marks real slices; each study's slices come first, in slice
order, padding after them (what a padding collate produces), and every study has >= 1 slice.
Logits at padded positions are 0 and must be ignored (`volume_logits`, `masked_slice_loss`).
Valid positions never depend on padded positions' values or on how much padding there is.
"""

from __future__ import annotations

import torch
from torch import nn

from ct25d.models.registry import Registry
from ct25d.models.stage2.features import neighbour_deltas

STAGE2 = Registry("stage2")


def check_inputs(x: torch.Tensor, mask: torch.Tensor, in_dim: int) -> torch.Tensor:
    """Validate shapes and the "valid slices first" mask layout; returns the mask as bool."""
    if x.ndim != 3 or x.shape[-1] != in_dim:
        raise ValueError(f"expected x of shape (B, L, {in_dim}); got {tuple(x.shape)}")
    if mask.shape != x.shape[:2]:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match x's (B, L) = {tuple(x.shape[:2])}")
    mask = mask.bool()
    if not bool(mask[:, 0].all()):
        raise ValueError("every study needs at least one valid slice (mask[:, 0] must be True)")
    if bool((mask[:, 1:] & ~mask[:, :-1]).any()):
        raise ValueError("mask must be a prefix mask: each study's valid slices first, padding after")
    return mask


def lengths_of(mask: torch.Tensor) -> torch.Tensor:
    """Number of valid slices per study, (B,) int64."""
    return mask.sum(dim=1)


class Stage2Model(nn.Module):
    """Shared skeleton: [deltas] -> dropout -> Linear/LayerNorm/GELU to `d_model` -> `encode` ->
    dropout -> Linear head. Subclasses implement only `encode(h, mask) -> (B, L, feature_dim)`.

    Why one base: input handling (padding hygiene, deltas, projection) and the head are identical
    for every sequence model, so they live here once.
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        *,
        feature_dim: int,
        d_model: int,
        dropout: float,
        use_deltas: bool,
    ) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.num_classes = num_classes
        self.d_model = d_model
        self.use_deltas = use_deltas
        proj_in = 3 * in_dim if use_deltas else in_dim
        self.input_dropout = nn.Dropout(dropout)
        self.input_proj = nn.Sequential(nn.Linear(proj_in, d_model), nn.LayerNorm(d_model), nn.GELU())
        self.head_dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)

    def encode(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Sequence mixing: (B, L, d_model) -> (B, L, feature_dim). Must not read padded positions."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = check_inputs(x, mask, self.in_dim)
        valid = mask.unsqueeze(-1)
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        x = torch.where(valid, x, zero)  # garbage (even NaN) at padding stops here
        if self.use_deltas:
            x = neighbour_deltas(x, mask)
        h = torch.where(valid, self.input_proj(self.input_dropout(x)), zero)
        feats = torch.where(valid, self.encode(h, mask), zero)
        return torch.where(valid, self.head(self.head_dropout(feats)), zero)
