"""The baselines of the 2D / 2.5D / 3D comparison, one registry entry per family.

Each entry declares what it reads (`inputs`): `volume` (the fixed volume store, `(B, C, D, S, S)`),
`embeddings` (frozen Stage-1 slice embeddings, `(B, L, F)` with a mask) or `slices` (k adjacent
slices, trained like Stage 1). Volume and embedding models return study logits `(B, classes)`; the
dual-task U-Net also returns segmentation logits.

- `resnet10/18/34/50`, `densenet121`: MONAI's 3D networks from scratch or from local MedicalNet
  weights (main seed: volume F1 0.418 from scratch, 0.813 MedicalNet-pretrained).
- `unet_dual`: MONAI's BasicUNet with a classification head on its bottleneck (the seed's first 3D
  attempt: classify and segment, joint loss).
- `acs`: a timm 2D network converted to 3D (`ct25d.models.acs`), from ImageNet weights, our Stage-1
  `best.pt`, or scratch; `mode` acs | 2.5d | i3d.
- `cnn25`: seed 001's 2.5CNN: frozen Stage-1 embeddings resampled to a fixed number of slices, into
  a light volumetric head.
- `thick2d`: seed 003's thickened 2D input (`ct25d.models.thick`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import monai.networks.nets as monai_nets
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ct25d.errors import ConfigError
from ct25d.models.acs import MODES, convert_to_3d
from ct25d.models.registry import Registry
from ct25d.models.stage1 import SliceClassifier
from ct25d.models.thick import ThickSliceClassifier
from ct25d.training.checkpoint import stage1_payload, unwrap_state_dict

BASELINES = Registry("baseline")


def inputs_of(name: str) -> str:
    """What the registered baseline reads: volume | embeddings | slices."""
    return BASELINES.get(name).inputs  # type: ignore[attr-defined]


def _reads(kind: str) -> Callable[[Any], Any]:
    def mark(builder: Any) -> Any:
        builder.inputs = kind
        return builder

    return mark


def load_medicalnet(model: nn.Module, path: str | os.PathLike[str], in_channels: int) -> None:
    """Load a local MedicalNet checkpoint into a MONAI ResNet (its classifier stays fresh).

    Written here because MONAI loads a local file with `strict=True`, which fails on every
    MedicalNet file (they carry no classifier). MedicalNet is single-channel: with more input
    channels its first kernel is repeated over them and divided by their number, as timm does for
    ImageNet stems, so a windowed volume starts from the same response.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    state = unwrap_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    state = {k.removeprefix("module."): v for k, v in state.get("state_dict", state).items()}
    stem = state.get("conv1.weight")
    if stem is not None and stem.shape[1] != in_channels:
        state["conv1.weight"] = (
            stem.repeat(1, in_channels, 1, 1, 1)[:, :in_channels] * stem.shape[1] / in_channels
        )
    missing, unexpected = model.load_state_dict(state, strict=False)
    if [k for k in missing if not k.startswith("fc.")] or unexpected:
        raise ConfigError(
            f"{path}: not a MedicalNet ResNet of this depth (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )


def _monai_resnet(depth: int) -> Callable[..., nn.Module]:
    @_reads("volume")
    def build(
        in_channels: int,
        num_classes: int,
        pretrained: str | None = None,
        conv1_t_stride: int = 1,
        **kwargs: Any,
    ) -> nn.Module:
        factory = getattr(monai_nets, f"resnet{depth}")
        if (
            pretrained
        ):  # MedicalNet's layout (monai.networks.nets.resnet.get_medicalnet_pretrained_resnet_args)
            kwargs = {
                "shortcut_type": "A" if depth in (18, 34) else "B",
                "bias_downsample": depth in (18, 34),
                **kwargs,
            }
        model = factory(
            spatial_dims=3,
            n_input_channels=in_channels,
            num_classes=num_classes,
            conv1_t_stride=conv1_t_stride,
            **kwargs,
        )
        if pretrained:
            load_medicalnet(model, pretrained, in_channels)
        return model

    return build


for _depth in (10, 18, 34, 50):
    BASELINES.register(f"resnet{_depth}")(_monai_resnet(_depth))


@BASELINES.register("densenet121")
@_reads("volume")
def densenet121(in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
    """MONAI's 3D DenseNet-121 (non-deterministic on CUDA, `anchors.md`)."""
    return monai_nets.DenseNet121(spatial_dims=3, in_channels=in_channels, out_channels=num_classes, **kwargs)


@BASELINES.register("unet_dual")
@_reads("volume")
class DualTaskUNet(monai_nets.BasicUNet):
    """BasicUNet whose bottleneck also feeds a classifier: `forward -> (study logits, lesion logits)`."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        features: tuple[int, ...] = (16, 16, 32, 64, 128, 16),
        dropout: float = 0.0,
    ) -> None:
        super().__init__(
            spatial_dims=3, in_channels=in_channels, out_channels=1, features=features, dropout=dropout
        )
        self.classifier = nn.Linear(features[4], num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        x0 = self.conv_0(x)
        x1 = self.down_1(x0)
        x2 = self.down_2(x1)
        x3 = self.down_3(x2)
        x4 = self.down_4(x3)
        logits = self.classifier(x4.mean((2, 3, 4)))
        u = self.upcat_1(self.upcat_2(self.upcat_3(self.upcat_4(x4, x3), x2), x1), x0)
        return logits, self.final_conv(u)


@BASELINES.register("acs")
@_reads("volume")
def acs(
    in_channels: int,
    num_classes: int,
    backbone: str = "resnet10t",
    mode: str = "acs",
    init: str | None = None,
    stage1_checkpoint: str | None = None,
    drop_rate: float = 0.0,
) -> nn.Module:
    """A timm 2D classifier converted to 3D. `init`: None (scratch), `stage1` (our Stage-1 `best.pt`
    of the same fold, given as `stage1_checkpoint`), or a local ImageNet weights file."""
    if mode not in MODES:
        raise ConfigError(f"acs mode {mode!r}: expected one of {MODES}")
    if in_channels != 3:
        raise ConfigError(
            f"acs: the 2D network takes 3 channels (windows); the volume store has {in_channels}"
        )
    pretrained: bool | str = init if init not in (None, "stage1") else False
    model2d = SliceClassifier(backbone, num_classes, pretrained=pretrained, drop_rate=drop_rate)
    if init == "stage1":
        model2d.load_state_dict(stage1_payload(stage1_checkpoint, backbone, "acs")["model"])
    return _FirstOutput(convert_to_3d(model2d, mode))


class _FirstOutput(nn.Module):
    """Keep the logits of a `(logits, embedding)` classifier; the wrapped model's names stay under `net.`."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[0]


@BASELINES.register("cnn25")
@_reads("embeddings")
class SliceStackHead(nn.Module):
    """2.5CNN (seed 001): a study's frozen slice embeddings, resampled to `slices` positions, through a
    light convolutional head over the slice axis (3D convolution on stacked vectors is 1D in z)."""

    def __init__(
        self, in_dim: int, num_classes: int, slices: int = 32, hidden: int = 128, dropout: float = 0.2
    ) -> None:
        super().__init__()
        self.slices = slices
        self.body = nn.Sequential(
            nn.Conv1d(in_dim, hidden, 3, padding=1),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv1d(hidden, hidden, 3, padding=2, dilation=2),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * hidden, num_classes))

    def resample(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, F, slices): each study's own slices (padding excluded) linearly resampled."""
        lengths = mask.sum(1).tolist()
        return torch.cat(
            [
                F.interpolate(x[b, :n].T[None], size=self.slices, mode="linear", align_corners=True)
                for b, n in enumerate(lengths)
            ]
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.body(self.resample(x, mask))
        return self.head(torch.cat([h.mean(2), h.amax(2)], 1))


BASELINES.register("thick2d")(_reads("slices")(ThickSliceClassifier))


def enable_checkpointing(model: nn.Module) -> int:
    """Recompute the activations of each top-level stage in the backward pass instead of storing
    them (less memory, ~30% more compute); returns how many stages were wrapped.

    The forward of each stage is replaced on the instance, so parameter names do not change."""
    wrapped = 0
    for module in model.modules():
        for child in module.children():
            if isinstance(child, nn.Sequential) and any(p.requires_grad for p in child.parameters()):
                child.forward = functools.partial(_checkpointed, child.forward)  # type: ignore[method-assign]
                wrapped += 1
        if wrapped:
            return wrapped
    return wrapped


def _checkpointed(forward: Callable[..., torch.Tensor], *args: Any) -> torch.Tensor:
    if torch.is_grad_enabled():
        return checkpoint(forward, *args, use_reentrant=False)
    return forward(*args)
