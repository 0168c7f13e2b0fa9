"""Volume pooling and the masked slice-level loss shared by every Stage-2 model."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F


def volume_logits(slice_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Study-level logits = max over valid slices: (B, L, C), (B, L) -> (B, C).

    Why max: a study is positive if any slice is; padded positions are set to -inf so they can
    never win (a study with no valid slice therefore gets -inf).
    """
    neg_inf = torch.tensor(float("-inf"), dtype=slice_logits.dtype, device=slice_logits.device)
    return torch.where(mask.bool().unsqueeze(-1), slice_logits, neg_inf).amax(dim=1)


def masked_slice_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    pos_weight: torch.Tensor | None = None,
    task: Literal["multilabel", "multiclass"] = "multilabel",
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean slice-level loss over valid positions only (padded logits and targets are never read).

    - `multilabel`: targets (B, L, C) in [0, 1]; BCE-with-logits with optional `pos_weight` (C,);
      `class_weights` (C,) give a per-slice weighted mean over classes (as in the RSNA weighted
      log-loss, where `any` has weight 2), then the mean over valid slices.
    - `multiclass`: targets (B, L) integer class ids; cross-entropy with optional `class_weights`
      (C,), normalised by the summed weights of the valid targets (PyTorch's convention).
    """
    mask = mask.bool()
    if not bool(mask.any()):
        raise ValueError("masked_slice_loss: the batch has no valid slice")
    logits_v = logits[mask]  # (N, C): boolean indexing drops padded positions before any arithmetic
    targets_v = targets[mask]
    if task == "multilabel":
        loss = F.binary_cross_entropy_with_logits(
            logits_v, targets_v.to(logits_v.dtype), pos_weight=pos_weight, reduction="none"
        )
        if class_weights is None:
            return loss.mean()
        w = class_weights.to(loss)
        return ((loss * w).sum(-1) / w.sum()).mean()
    if task == "multiclass":
        if pos_weight is not None:
            raise ValueError("pos_weight applies only to task='multilabel'")
        return F.cross_entropy(logits_v, targets_v.long(), weight=class_weights, reduction="mean")
    raise ValueError(f"unknown task {task!r}; expected 'multilabel' or 'multiclass'")
