"""The baselines of the 2D / 2.5D / 3D comparison, one registry entry per family.

Each entry declares what it reads (`inputs`): `volume` (the fixed volume store, `(B, C, D, S, S)`),
`embeddings` (frozen Stage-1 slice embeddings, `(B, L, F)` with a mask) or `slices` (k adjacent
slices, trained like Stage 1). Embedding models return study logits `(B, classes)`. Every volume
family is an encoder and a `ct25d.models.volume.VolumeHead` and takes the same options: `pooling`
(avg | max | attention), `supervision` (study: logits `(B, classes)`; slice: `(B, D, classes)`),
`norm` (batch | group | instance) and `drop_rate`; the dual-task U-Net also returns segmentation
logits.

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
from ct25d.models.volume import VolumeClassifier, VolumeHead, keep_depth, replace_batch_norm
from ct25d.training.checkpoint import stage1_payload, unwrap_state_dict

BASELINES = Registry("baseline")


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


class ResNetFeatures(nn.Module):
    """A MONAI 3D ResNet up to its last stage: `(B, C, D, H, W) -> (B, F, d, h, w)`.

    MONAI's own `ResNetFeatures` fixes `conv1_t_stride=2` and refuses MedicalNet weights for more than
    one channel; this runs the `ResNet` that was built (any stride, our stem spreading) without its
    pooling and classifier."""

    def __init__(self, net: monai_nets.ResNet) -> None:
        super().__init__()
        self.net = net
        net.avgpool, net.fc = nn.Identity(), None
        self.num_features = int(net.in_planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net
        x = net.act(net.bn1(net.conv1(x)))
        if not net.no_max_pool:
            x = net.maxpool(x)
        return net.layer4(net.layer3(net.layer2(net.layer1(x))))


def _head_options(
    pooling: str = "avg",
    supervision: str = "study",
    norm: str = "batch",
    drop_rate: float = 0.0,
    keep_z: bool | None = None,
) -> dict[str, Any]:
    """The options every encoder family takes (see `ct25d.models.volume`); `keep_z` None: on with
    slice supervision."""
    keep = supervision == "slice" if keep_z is None else bool(keep_z)
    return {"pooling": pooling, "supervision": supervision, "norm": norm, "drop_rate": drop_rate,
            "keep_z": keep}  # fmt: skip


def _classifier(
    encoder: nn.Module,
    num_features: int,
    num_classes: int,
    options: dict[str, Any],
    classifier: nn.Linear | None = None,
) -> VolumeClassifier:
    replace_batch_norm(encoder, options["norm"])
    if options["keep_z"]:
        keep_depth(encoder)
    pooling, supervision, drop_rate = options["pooling"], options["supervision"], options["drop_rate"]
    head = VolumeHead(num_features, num_classes, pooling, supervision, drop_rate, classifier)
    return VolumeClassifier(encoder, head)


def _monai_resnet(depth: int) -> Callable[..., nn.Module]:
    def build(
        in_channels: int,
        num_classes: int,
        pretrained: str | None = None,
        conv1_t_stride: int = 1,
        pooling: str = "avg",
        supervision: str = "study",
        norm: str = "batch",
        drop_rate: float = 0.0,
        keep_z: bool | None = None,
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
        encoder = ResNetFeatures(model)
        options = _head_options(pooling, supervision, norm, drop_rate, keep_z)
        return _classifier(encoder, encoder.num_features, num_classes, options)

    return build


for _depth in (10, 18, 34, 50):
    BASELINES.register(f"resnet{_depth}")(_monai_resnet(_depth))


@BASELINES.register("densenet121")
def densenet121(
    in_channels: int,
    num_classes: int,
    pooling: str = "avg",
    supervision: str = "study",
    norm: str = "batch",
    drop_rate: float = 0.0,
    keep_z: bool | None = None,
    **kwargs: Any,
) -> nn.Module:
    """MONAI's 3D DenseNet-121 (non-deterministic on CUDA, `anchors.md`): its dense blocks and the
    final norm and activation, then our pooling."""
    net = monai_nets.DenseNet121(spatial_dims=3, in_channels=in_channels, out_channels=num_classes, **kwargs)
    encoder = nn.Sequential(net.features, net.class_layers.relu)
    features = net.class_layers.out.in_features
    options = _head_options(pooling, supervision, norm, drop_rate, keep_z)
    return _classifier(encoder, features, num_classes, options)


@BASELINES.register("unet_dual")
class DualTaskUNet(monai_nets.BasicUNet):
    """BasicUNet whose bottleneck also feeds a classifier: `forward -> (logits, lesion logits)`, the
    logits per study or per slice (`supervision`). Built with batch norm, then `norm`: MONAI's default
    instance norm gives every channel of every volume the same spatial mean, so an average-pooled
    head on it sees nearly the same vector for every study and cannot learn (it sat at chance)."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        features: tuple[int, ...] = (16, 16, 32, 64, 128, 16),
        dropout: float = 0.0,
        pooling: str = "avg",
        supervision: str = "study",
        norm: str = "batch",
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__(
            spatial_dims=3,
            in_channels=in_channels,
            out_channels=1,
            features=features,
            norm="batch",
            dropout=dropout,
        )
        replace_batch_norm(self, norm)
        # Per-slice logits read the decoder's full-resolution map: the bottleneck keeps 1/16 of z.
        width = features[5] if supervision == "slice" else features[4]
        self.head = VolumeHead(width, num_classes, pooling, supervision, drop_rate)

    @property
    def supervision(self) -> str:
        return self.head.supervision

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        x0 = self.conv_0(x)
        x1 = self.down_1(x0)
        x2 = self.down_2(x1)
        x3 = self.down_3(x2)
        x4 = self.down_4(x3)
        u = self.upcat_1(self.upcat_2(self.upcat_3(self.upcat_4(x4, x3), x2), x1), x0)
        logits = self.head(u if self.supervision == "slice" else x4, x.shape[2])
        return logits, self.final_conv(u)


@BASELINES.register("acs")
def acs(
    in_channels: int,
    num_classes: int,
    backbone: str = "resnet10t",
    mode: str = "acs",
    init: str | None = None,
    stage1_checkpoint: str | None = None,
    drop_rate: float = 0.0,
    pooling: str = "avg",
    supervision: str = "study",
    norm: str = "batch",
    keep_z: bool | None = None,
) -> nn.Module:
    """A timm 2D classifier converted to 3D. `init`: None (scratch), `stage1` (our Stage-1 `best.pt`
    of the same fold, given as `stage1_checkpoint`: encoder and head), or a local ImageNet weights
    file. In `2.5d` mode with `avg` pooling and `slice` supervision, the converted Stage-1 network
    gives Stage 1's own logits on every slice."""
    if mode not in MODES:
        raise ConfigError(f"acs mode {mode!r}: expected one of {MODES}")
    if in_channels != 3:
        raise ConfigError(
            f"acs: the 2D network takes 3 channels (windows); the volume store has {in_channels}"
        )
    pretrained: bool | str = init if init not in (None, "stage1") else False
    model2d = SliceClassifier(backbone, num_classes, pretrained=pretrained)
    if model2d.num_features != model2d.encoder.num_features:
        raise ConfigError(f"acs: {backbone} has a pre-logits layer after its feature map; not supported")
    if init == "stage1":
        model2d.load_state_dict(stage1_payload(stage1_checkpoint, backbone, "acs")["model"])
    encoder = _FeatureMap(convert_to_3d(model2d.encoder, mode))
    options = _head_options(pooling, supervision, norm, drop_rate, keep_z)
    return _classifier(encoder, model2d.num_features, num_classes, options, model2d.head)


class _FeatureMap(nn.Module):
    """A timm model's feature map (`forward_features`), before its global pooling."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(x)


@BASELINES.register("cnn25")
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


BASELINES.register("thick2d")(ThickSliceClassifier)


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
