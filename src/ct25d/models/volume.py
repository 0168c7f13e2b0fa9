"""What every 3D family shares after its encoder: pooling, the supervision it learns from, its norm.

An encoder maps a volume `(B, C, D, H, W)` to a feature map `(B, F, d, h, w)`; `VolumeHead` turns the
map into logits:
- `supervision: study`: pooled over (d, h, w), one logit per label for the study;
- `supervision: slice`: pooled over (h, w) only, so z is kept; each slice position gets its own
  logits, trained on the slice labels with Stage 1's weighted loss; the study score is the max over
  the real slices, as Stage 2 scores.

`keep_z` (default: on with slice supervision) sets every stride along z to 1 (`keep_depth`), as
nnU-Net does for anisotropic axes: the encoder's map keeps one position per input slice and only
x, y shrink. Without it a 3D ResNet strides z by 16-32, so a 32-slice study leaves the head one
or two z positions and "slice" logits are one value interpolated over every slice: slice labels
in name only (the study's 3D runs at commit a5bb8d5 were).

Why a choice of pooling: a global average spreads a lesion of a few voxels over every voxel of the
volume (a 3-voxel IPH is 3 of 55,296), while `max` keeps the strongest position and `attention`
(gated attention-MIL, Ilse et al. 2018) learns which positions to weigh. The attention's last layer
starts at zero, so before training it is exactly the average: a network converted from Stage 1
starts where Stage 1's average-pooled head ends.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ct25d.errors import ConfigError
from ct25d.models.acs import ConvFrom2d

POOLINGS = ("avg", "max", "attention")
SUPERVISIONS = ("study", "slice")
NORMS = ("batch", "group", "instance")


def check_choice(value: str, choices: tuple[str, ...], key: str) -> str:
    if value not in choices:
        raise ConfigError(f"{key}: expected one of {list(choices)}, got {value!r}")
    return value


class AttentionPool(nn.Module):
    """Gated attention pooling over the second-to-last axis: `(..., N, F) -> (..., F)`."""

    def __init__(self, num_features: int, hidden: int = 64) -> None:
        super().__init__()
        self.value = nn.Linear(num_features, hidden)
        self.gate = nn.Linear(num_features, hidden)
        self.score = nn.Linear(hidden, 1)
        nn.init.zeros_(self.score.weight)  # uniform weights at the start: the average
        nn.init.zeros_(self.score.bias)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax weights `(..., N)` of the positions."""
        scores = self.score(torch.tanh(self.value(x)) * torch.sigmoid(self.gate(x))).squeeze(-1)
        return torch.softmax(scores.float(), dim=-1).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.weights(x).unsqueeze(-1) * x).sum(-2)


class VolumeHead(nn.Module):
    """Feature map `(B, F, d, h, w)` -> study logits `(B, classes)` or slice logits `(B, D, classes)`."""

    def __init__(
        self,
        num_features: int,
        num_classes: int,
        pooling: str = "avg",
        supervision: str = "study",
        drop_rate: float = 0.0,
        classifier: nn.Linear | None = None,
    ) -> None:
        super().__init__()
        self.pooling = check_choice(pooling, POOLINGS, "pooling")
        self.supervision = check_choice(supervision, SUPERVISIONS, "supervision")
        self.attention = AttentionPool(num_features) if pooling == "attention" else None
        self.dropout = nn.Dropout(drop_rate)
        self.classifier = classifier if classifier is not None else nn.Linear(num_features, num_classes)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """`(..., N, F) -> (..., F)` by the configured pooling."""
        if self.attention is not None:
            return self.attention(x)
        return x.amax(-2) if self.pooling == "max" else x.mean(-2)

    def forward(self, features: torch.Tensor, depth: int) -> torch.Tensor:
        b, f, d = features.shape[:3]
        if self.supervision == "study":
            pooled = self.pool(features.reshape(b, f, -1).transpose(1, 2))
            return self.classifier(self.dropout(pooled))
        per_slice = self.pool(features.reshape(b, f, d, -1).permute(0, 2, 3, 1))  # (B, d, F)
        if d != depth:  # the encoder strided z (keep_z off): its profile back on the slice positions
            per_slice = F.interpolate(
                per_slice.transpose(1, 2), size=depth, mode="linear", align_corners=False
            ).transpose(1, 2)
        return self.classifier(self.dropout(per_slice))


class VolumeClassifier(nn.Module):
    """An encoder returning a feature map, then `VolumeHead`."""

    def __init__(self, encoder: nn.Module, head: VolumeHead) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    @property
    def supervision(self) -> str:
        return self.head.supervision

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x), x.shape[2])


def _same_like(kernel: int, padding: int) -> bool:
    return kernel - 1 == 2 * padding


def keep_depth(encoder: nn.Module) -> int:
    """Set every z stride of `encoder` to 1 (see the module docstring); returns the layers changed.

    Why by hand: neither MONAI's networks nor timm's take a per-axis stride. A layer whose kernel
    equals its stride along z (a non-overlapping pool) becomes 1 along z; a convolution or pool
    keeps its kernel when its padding keeps the size ('same'-like); anything else would change the
    depth differently in two branches of a block and is refused."""
    changed = 0
    for name, module in encoder.named_modules():
        if isinstance(module, ConvFrom2d):
            changed += int(max(module.stride) > 1 and not module.keep_z)
            module.keep_z = True
            continue
        if not isinstance(module, nn.Conv3d | nn.MaxPool3d | nn.AvgPool3d):
            continue
        stride = _triple(module.stride if module.stride is not None else module.kernel_size)
        if stride[0] == 1:
            continue
        kernel, padding = _triple(module.kernel_size), _triple(module.padding)
        if isinstance(module, nn.Conv3d):
            if not (kernel[0] == 1 or _same_like(kernel[0], padding[0])):
                raise ConfigError(f"keep_z: layer {name}: kernel {kernel}, padding {padding} would shrink z")
        elif kernel[0] == stride[0] and padding[0] == 0:
            module.kernel_size = (1, *kernel[1:])
        elif not _same_like(kernel[0], padding[0]):
            raise ConfigError(f"keep_z: pool {name}: kernel {kernel}, padding {padding} would shrink z")
        module.stride = (1, *stride[1:])
        changed += 1
    return changed


def _triple(value: int | tuple[int, ...]) -> tuple[int, int, int]:
    return (value,) * 3 if isinstance(value, int) else (int(value[0]), int(value[1]), int(value[2]))


class _NormAct(nn.Module):
    """A replacement norm followed by the replaced layer's own drop and activation (timm's BatchNormAct)."""

    def __init__(self, norm: nn.Module, drop: nn.Module, act: nn.Module) -> None:
        super().__init__()
        self.norm, self.drop, self.act = norm, drop, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(self.norm(x)))


def _group_norm(bn: nn.modules.batchnorm._BatchNorm, kind: str) -> nn.GroupNorm:
    channels = bn.num_features
    groups = channels if kind == "instance" else math.gcd(channels, 16)
    norm = nn.GroupNorm(groups, channels, eps=bn.eps, affine=bn.affine)
    if bn.affine:
        with torch.no_grad():
            norm.weight.copy_(bn.weight)
            norm.bias.copy_(bn.bias)
    return norm


def replace_batch_norm(model: nn.Module, kind: str) -> int:
    """Swap every batch norm for group norm (`group`: gcd(C, 16) groups) or instance norm (`instance`:
    one group per channel, with the affine of batch norm); returns how many were swapped.

    Why by hand: with a batch of 2-8 volumes, batch statistics are noise and the eval-mode running
    statistics differ from them, which makes the validation loss swing between epochs. MONAI's
    networks take a `norm` argument, but one group count must then divide every layer's channels,
    and the converted timm layers (`ct25d.models.acs`) are ours; one pass after building covers all.
    The affine weight and bias are kept; running statistics have no counterpart and are dropped.
    """
    check_choice(kind, NORMS, "norm")
    if kind == "batch":
        return 0
    swapped = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                norm = _group_norm(child, kind)
                act = getattr(child, "act", None)
                setattr(module, name, _NormAct(norm, child.drop, act) if act is not None else norm)
                swapped += 1
    return swapped
