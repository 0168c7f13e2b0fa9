"""Stage 1: a timm 2D backbone that classifies single slices and yields their embeddings.

The backbone is built with `num_classes=0`, so it returns the global-pooled `num_features`-dim
vector; our own linear head sits on top. Why not timm's head: Stage 2 and the cosine-to-class-mean
evaluation need the penultimate embedding of every slice, and timm's `drop_rate` would also drop
out that embedding during training.

Demo setting: `resnet10t` at 128 px (trains at ~45 slices/s on 2 CPU cores). Real setting (the seed
and the RSNA 2nd place): `resnext101_32x8d.fb_wsl_ig1b_ft_in1k` (Instagram WSL weights) at 256-512
px, 2048-dim embeddings.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn


class SliceClassifier(nn.Module):
    """`forward(x (B, 3, H, W)) -> (logits (B, num_classes), embedding (B, num_features))`."""

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        pretrained: bool | str | os.PathLike[str] = False,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.encoder = create_backbone(backbone, pretrained)
        # Models with a pre-logits layer (MobileNetV3's conv_head) output `head_hidden_size`.
        self.num_features = int(getattr(self.encoder, "head_hidden_size", None) or self.encoder.num_features)
        self.dropout = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.encoder(x)
        return self.head(self.dropout(embedding)), embedding


def create_backbone(name: str, pretrained: bool | str | os.PathLike[str], **kwargs: Any) -> nn.Module:
    """A timm feature extractor (`num_classes=0`).

    `pretrained` is False, True (timm's default source: needs the hub) or a local weights file
    (.pth/.safetensors state dict of the timm model), loaded through timm's own
    `pretrained_cfg_overlay=dict(file=...)` so timm drops the classifier and adapts the stem
    exactly as it does for downloaded weights. `kwargs` go to timm (e.g. `in_chans`: timm then
    spreads the pretrained RGB stem over the channels, scaled by 3 / in_chans).
    """
    if isinstance(pretrained, bool):
        return timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs)
    path = Path(pretrained)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    return timm.create_model(
        name, pretrained=True, num_classes=0, pretrained_cfg_overlay=dict(file=str(path)), **kwargs
    )
