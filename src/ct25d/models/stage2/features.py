"""Per-slice input features for Stage 2."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def neighbour_deltas(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`[x, x - x_prev, x - x_next]` per slice: (B, L, D) -> (B, L, 3D).

    Why: the seed design and the RSNA 2nd-place solution feed these differences so the sequence
    model sees inter-slice change directly.

    Edge rule: when a neighbour is missing (sequence start/end, or the neighbour is padding) its
    delta is 0. This equals replicate-padding the study at its ends ("no change"), so an edge slice
    looks like a slice in a locally uniform region rather than one next to an empty (all-zero) slice.
    Padded positions are never read (they are zeroed before any arithmetic, so NaN/inf there cannot
    leak) and every output channel is 0 at padded positions. Works for any boolean mask, not only
    "valid slices first".
    """
    if x.ndim != 3 or mask.shape != x.shape[:2]:
        raise ValueError(
            f"expected x (B, L, D) and mask (B, L); got {tuple(x.shape)} and {tuple(mask.shape)}"
        )
    mask = mask.bool()
    valid = mask.unsqueeze(-1)
    xv = torch.where(valid, x, torch.zeros((), dtype=x.dtype, device=x.device))
    prev = F.pad(xv, (0, 0, 1, 0))[:, :-1]
    nxt = F.pad(xv, (0, 0, 0, 1))[:, 1:]
    has_prev = (F.pad(mask, (1, 0))[:, :-1] & mask).unsqueeze(-1)
    has_next = (F.pad(mask, (0, 1))[:, 1:] & mask).unsqueeze(-1)
    d_prev = torch.where(has_prev, xv - prev, torch.zeros_like(xv))
    d_next = torch.where(has_next, xv - nxt, torch.zeros_like(xv))
    return torch.cat([xv, d_prev, d_next], dim=-1)
