"""Thickened 2D input (seed 003): k adjacent slices as the channels of a 2D network.

Plain: the k slices' 3 windows are 3k input channels; timm spreads the pretrained RGB stem over
them (repeated, scaled by 3 / 3k), so the widened network starts with the 2D response to the mean
slice. Past 5-6 slices the seed finds that mixing every slice in the first convolution loses which
slice is which; its two remedies are options here:
- `multiplex` (early-stage multiplexing): the stem and first stage run on each slice alone with
  shared weights; a 1x1 convolution (initialised to the mean over slices) fuses them before the
  later stages.
- `slice_attention` (slice-sensitive attention): the final feature map's channels attend to the
  per-slice pre-fusion channels (a non-local block over channels, not positions), added through a
  gate that starts at zero.
Predicts the centre slice's labels, so its slice predictions are scored like Stage 1's.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from ct25d.errors import ConfigError
from ct25d.models.stage1 import create_backbone

CHANNELS = 3
_RESNET_STEM = ("conv1", "bn1", "act1", "maxpool", "layer1")
_RESNET_REST = ("layer2", "layer3", "layer4")


class SliceSensitiveAttention(nn.Module):
    """y_p = x_p + gamma * sum_q softmax_q(<x_p, k_q>) v_q over channels p of the final map and
    channels q projected from the pre-fusion map (seed 003, Figure 4)."""

    def __init__(self, pre_channels: int, channels: int) -> None:
        super().__init__()
        self.key = nn.Conv2d(pre_channels, channels, 1)
        self.value = nn.Conv2d(pre_channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
        pre = F.adaptive_avg_pool2d(pre, x.shape[-2:])
        q, k, v = x.flatten(2), self.key(pre).flatten(2), self.value(pre).flatten(2)
        attn = torch.softmax(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5, dim=-1)  # (B, C, C)
        return x + self.gamma * (attn @ v).view_as(x)


class ThickSliceClassifier(nn.Module):
    """`forward(x (B, 3k, H, W)) -> (logits, embedding)` for the centre of k slices."""

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        k: int = 5,
        multiplex: bool = False,
        slice_attention: bool = False,
        pretrained: bool | str | os.PathLike[str] = False,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if k < 1 or k % 2 == 0:
            raise ConfigError(f"thick2d k: an odd number of slices (the centre one is predicted), got {k}")
        if slice_attention and not multiplex:
            raise ConfigError(
                "thick2d slice_attention needs multiplex: true (it attends to per-slice features)"
            )
        self.k, self.multiplex = k, multiplex
        self.encoder = create_backbone(
            backbone, pretrained, **({} if multiplex else {"in_chans": CHANNELS * k})
        )
        if multiplex:
            missing = [n for n in (*_RESNET_STEM, *_RESNET_REST) if not hasattr(self.encoder, n)]
            if missing:
                raise ConfigError(
                    f"thick2d multiplex: backbone {backbone!r} is not a timm ResNet "
                    f"(no {missing[0]}); use a resnet/resnext or multiplex: false"
                )
            stage1 = int(self.encoder.feature_info[1]["num_chs"])
            self.fuse = nn.Conv2d(k * stage1, stage1, 1, bias=False)
            with torch.no_grad():  # start as the mean over slices
                self.fuse.weight.copy_(torch.eye(stage1).repeat(1, k)[:, :, None, None] / k)
            final = int(self.encoder.num_features)
            self.attention = SliceSensitiveAttention(k * stage1, final) if slice_attention else None
        self.num_features = int(self.encoder.num_features)
        self.dropout = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes)

    def _stem(self, slices: torch.Tensor) -> torch.Tensor:
        """Stem and first stage of each slice alone: (N, 3, H, W) -> (N, C, h, w)."""
        for name in _RESNET_STEM:
            slices = getattr(self.encoder, name)(slices)
        return slices

    def _fused(self, pre: torch.Tensor) -> torch.Tensor:
        """Embedding from the k slices' stem features concatenated on channels: (B, k*C, h, w)."""
        fused = self.fuse(pre)
        for name in _RESNET_REST:
            fused = getattr(self.encoder, name)(fused)
        if self.attention is not None:
            fused = self.attention(fused, pre)
        return self.encoder.global_pool(fused)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if not self.multiplex:
            return self.encoder(x)
        b, _, h, w = x.shape
        pre = self._stem(x.reshape(b * self.k, CHANNELS, h, w))
        return self._fused(pre.reshape(b, -1, *pre.shape[-2:]))

    def predict_study(self, slices: torch.Tensor, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, embedding) of every slice of one study, from its (Z, 3, H, W) slices in z order.

        With multiplexing each slice's stem runs once and is shared by the k windows that contain it
        (k times less stem work than `forward` on each window); windows repeat the end slices, as
        the thickened dataset does. Same outputs as `forward` on each k-slice window (eval mode)."""
        if not self.multiplex or slices.shape[1] != CHANNELS:
            shape = tuple(slices.shape)
            raise ValueError(f"predict_study needs multiplex and (Z, {CHANNELS}, H, W) slices, got {shape}")
        z = slices.shape[0]
        pre = self._stem(slices)
        half = self.k // 2
        windows = (torch.arange(z)[:, None] + torch.arange(-half, half + 1)[None]).clamp_(0, z - 1)
        embeddings = []
        for start in range(0, z, chunk):
            part = pre[windows[start : start + chunk].to(pre.device)]  # (b, k, C, h, w)
            embeddings.append(self._fused(part.flatten(1, 2)))
        embedding = torch.cat(embeddings)
        return self.head(self.dropout(embedding)), embedding

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.embed(x)
        return self.head(self.dropout(embedding)), embedding
