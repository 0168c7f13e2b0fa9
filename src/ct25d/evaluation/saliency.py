"""Where a model looked: Grad-CAM on the last convolutional stage of the slice and volume models.

MONAI's `GradCAM` does the work (hooks on a layer named by its path, gradient-weighted activations,
ReLU). Two things it cannot do for our models are written here:
- it expects `model(x)` to return `(B, classes)` scores, while our slice models return `(logits,
  embedding)`, the dual-task U-Net `(logits, lesion logits)` and slice-supervised 3D nets `(B, D,
  classes)`; `ClassScores` turns each into the score it is scored by (a slice-supervised study: the
  max over its real slices, as the comparison scores it);
- its maps come normalised per item, which hides that one slice's map is weaker than another's;
  `SaliencyMaps.raw` keeps the raw maps on the feature grid, where the pointing game compares them
  (`ct25d.evaluation.pointing`), and `upsampled` gives the display maps at the input's size.

Runs on the CPU (a few slices or one volume at a time); no weights are downloaded: the models are
rebuilt from their own checkpoints (`load_model`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from monai.visualize import GradCAM
from torch import nn

from ct25d.datasets.volume_dataset import VolumeDataset
from ct25d.errors import ConfigError
from ct25d.models.baselines import BASELINES, DualTaskUNet
from ct25d.models.families import inputs_of
from ct25d.models.stage1 import SliceClassifier
from ct25d.models.thick import ThickSliceClassifier
from ct25d.models.volume import VolumeClassifier
from ct25d.training.checkpoint import load_checkpoint

SLICE_MODELS = (SliceClassifier, ThickSliceClassifier)


class ClassScores(nn.Module):
    """`(B, classes)` scores from any of our image models, for MONAI's hooks.

    `valid` (B, D) marks a padded volume's real slices: a per-slice output is reduced to the max
    over them (padding never scores)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        out = self.model(x)
        if isinstance(out, tuple):  # (logits, embedding) or the U-Net's (logits, lesion logits)
            out = out[0]
        if out.dim() == 3:  # per-slice logits (B, D, classes): the study is its max real slice
            if valid is not None:
                out = out.masked_fill(~valid.to(out.device)[..., None], float("-inf"))
            out = out.amax(1)
        return out


def target_layer(model: nn.Module) -> str:
    """The path (inside `ClassScores`) of the layer whose output is the last convolutional stage's
    feature map, the one the classifier pools."""
    if isinstance(model, SLICE_MODELS):
        return f"model.encoder.{model.encoder.feature_info[-1]['module']}"
    if isinstance(model, VolumeClassifier):  # every volume encoder ends at its last stage's map
        return "model.encoder"
    if isinstance(model, DualTaskUNet):  # the map its head reads: decoder (slice) or bottleneck
        return "model.upcat_1" if model.supervision == "slice" else "model.down_4"
    raise ConfigError(f"no Grad-CAM layer known for {type(model).__name__}")


class SaliencyMaps:
    """Grad-CAM of one class of one model: `raw(x)` on the feature grid, `upsampled(x)` at the
    input's size. Hooks are registered once per model (build one of these per model, not per call).

    `layer` overrides `target_layer` (a path inside `ClassScores`, e.g. `model.features`)."""

    def __init__(self, model: nn.Module, class_index: int, layer: str | None = None) -> None:
        self.scores = ClassScores(model).eval()
        self.class_index = class_index
        self.layer = layer or target_layer(model)
        self.cam = GradCAM(self.scores, target_layers=self.layer)

    def raw(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> np.ndarray:
        """`(B, *grid)` float32 Grad-CAM (ReLU of the gradient-weighted channels), not normalised."""
        extra: dict[str, Any] = {} if valid is None else {"valid": valid}
        # Grad-CAM reads activation gradients only: the weights' gradients (about half of a backward
        # pass) are skipped by freezing them for the call and letting the input carry the graph.
        params = [p for p in self.scores.parameters() if p.requires_grad]
        try:
            for p in params:
                p.requires_grad_(False)
            with torch.enable_grad():
                x = x.detach().requires_grad_(True)
                maps = self.cam.compute_map(x, class_idx=self.class_index, **extra)
        finally:
            for p in params:
                p.requires_grad_(True)
        return maps[:, 0].detach().float().cpu().numpy()

    def upsampled(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> np.ndarray:
        """`(B, *x.shape[2:])` maps in [0, 1] per item (each item's max is 1; an all-zero map stays 0),
        interpolated as MONAI's default upsampler does: for overlays on the input."""
        return upsample(self.raw(x, valid), tuple(x.shape[2:]))


def upsample(raw: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """`(B, *grid)` maps to `(B, *size)` (bi/trilinear), each scaled to a max of 1."""
    maps = torch.from_numpy(raw)[:, None]
    mode = "bilinear" if len(size) == 2 else "trilinear"
    out = F.interpolate(maps, size=size, mode=mode, align_corners=False)[:, 0].numpy()
    peak = out.reshape(len(out), -1).max(1).reshape(-1, *[1] * len(size))
    return np.divide(out, peak, out=np.zeros_like(out), where=peak > 0)


@dataclass
class LoadedModel:
    """A trained image model rebuilt from its checkpoint, with what feeding it needs."""

    model: nn.Module
    kind: str  # slices (Stage 1, thickened 2D) | volume (3D families)
    labels: tuple[str, ...]
    image_size: int | None = None  # slices: the side the slices are resized to
    thickness: int = 1  # slices: k adjacent slices as channels
    # volume: whether its trainer padded whole studies to the store's depth; a net trained on runs of
    # slices (`crop_depth`) was scored on whole studies unpadded, and is looked at the same way.
    padded: bool = True

    def volume_depth(self, pad_to: int) -> int | None:
        """The depth a study of the store padded to `pad_to` is fed at (None: its own depth)."""
        return pad_to if self.padded else None

    def volume_input(self, store: str, study_id: str, pad_to: int) -> dict[str, Any]:
        """One study's `VolumeDataset` item (`x`, `valid`, ...) as this 3D net's trainer fed it."""
        frame = pd.DataFrame({"store": [store], "study_id": [study_id]})
        no_targets = np.zeros((1, 1), np.float32)
        return VolumeDataset(frame, no_targets, depth=self.volume_depth(pad_to))[0]

    def class_index(self, label: str = "any") -> int:
        if label not in self.labels:
            raise ConfigError(f"the model predicts {list(self.labels)}, not {label!r}")
        return self.labels.index(label)


def load_model(checkpoint: str | os.PathLike[str], in_channels: int = 3) -> LoadedModel:
    """A Stage-1, thickened-2D or 3D model from its `best.pt`, in eval mode on the CPU.

    Stage-1 checkpoints (and the thickened 2D's, trained by Stage 1's trainer) carry their settings;
    a 3D baseline's carries its config entry, built again without its initial weights (`init`,
    `pretrained`: the checkpoint holds the trained ones)."""
    from ct25d.training.stage1 import Stage1Settings, build_model

    payload = load_checkpoint(checkpoint)
    if "settings" in payload:
        s = Stage1Settings.from_dict(payload["settings"])
        model: nn.Module = build_model(s, payload["num_classes"], pretrained=False)
        model.load_state_dict(payload["model"])
        labels = tuple(payload["class_names"])
        return LoadedModel(model.eval(), "slices", labels, s.image_size, s.thickness)
    entry = {k: v for k, v in payload["config"].items() if k not in ("init", "pretrained")}
    if inputs_of(entry["name"]) != "volume":
        raise ConfigError(f"{checkpoint}: a {entry['name']} model reads no image; it has no saliency map")
    settings = payload["meta"]["settings"]
    labels = tuple(settings["labels"])
    model = BASELINES.from_config(entry, num_classes=len(labels), in_channels=in_channels)
    model.load_state_dict(payload["model"])
    return LoadedModel(model.eval(), "volume", labels, padded=settings.get("crop_depth") is None)
