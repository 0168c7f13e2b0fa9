"""Train one baseline of the comparison on one fold and write the artifacts Stage 2 writes.

Volume and embedding families (`ct25d.models.baselines`) train here with the recipe Stage 2 uses:
AdamW, a linear warm-up then a cosine decay over `epochs`, and early stopping after `patience` epochs
without a better inner-split `monitor`. The loss is the weighted BCE on the study labels
(`supervision: study`) or Stage 1's weighted slice loss on the slice labels, the study score being
the max over slices (`supervision: slice`), plus the lesion loss of the dual-task U-Net on studies
with a mask. The epoch is chosen on the fold's inner-validation studies, and every study of every
dataset is predicted. Before the first step the network is evaluated once (epoch -1 of the history:
what a network converted from Stage 1 knows before any 3D training), after re-estimating its batch
norm statistics on `bn_refresh` training volumes when asked. Each epoch also records the training
AUC, so an arm that learned nothing shows it. `last.pt` is written atomically after every epoch and
a killed job resumes from it. The thickened 2D family is a slice model: it trains
with Stage 1's trainer (same sampler, resume and selection) and its slice predictions become
study predictions by the max over slices.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ct25d.datasets.sequences import StudySequences, pad_batch
from ct25d.datasets.slice_dataset import Augment, multilabel_targets
from ct25d.datasets.splits import held_out_features, splits_by_study, study_splits
from ct25d.datasets.volume_dataset import VolumeDataset
from ct25d.errors import ConfigError
from ct25d.evaluation.metrics import auc_or_nan, f1_or_nan, volume_max
from ct25d.evaluation.predictions import empty_slices, prediction_frame, write_outputs
from ct25d.models.baselines import BASELINES, enable_checkpointing
from ct25d.models.families import inputs_of
from ct25d.models.stage2 import masked_slice_loss, volume_logits
from ct25d.models.thick import ThickSliceClassifier
from ct25d.models.volume import SUPERVISIONS, check_choice
from ct25d.provenance import stamp
from ct25d.training.checkpoint import load_checkpoint, save_checkpoint, stage1_payload
from ct25d.training.history import improved, patience_spent, write_history
from ct25d.training.schedule import make_schedule
from ct25d.training.seed import (
    derive_seed,
    deterministic_kernels,
    numerics,
    rng_state,
    seed_everything,
    set_rng_state,
)
from ct25d.training.stage1 import (
    Stage1Settings,
    build_model,
    fingerprint,
    iter_predictions,
    prediction_loader,
    train_stage1,
)
from ct25d.training.stage2 import Stage2Settings
from ct25d.volumes.fixed_store import read_fixed_attrs

log = logging.getLogger(__name__)

# Settings that change how a job runs, never what it learns: a resumed run may change them.
RUNTIME_KEYS = frozenset({"device", "num_workers", "mem_mb"})


@dataclass(frozen=True)
class BaselineSettings(Stage2Settings):
    """Config block `baselines` without `volume` and `models`; a model entry may override any key."""

    section = "baselines"
    epochs: int = 8
    batch_size: int = 4
    augment: dict[str, float] | bool = True
    seg_weight: float = 1.0  # dual-task U-Net: weight of the lesion loss (Dice + BCE)
    # Training volumes whose forward passes re-estimate batch norm statistics before training (0: off):
    # a network converted from 2D keeps 2D statistics while its coronal and sagittal kernels see others.
    bn_refresh: int = 0
    amp: bool = True  # bf16 autocast on CUDA
    gradient_checkpointing: bool = False
    # Slice-supervised volume families: train on a random run of this many consecutive real slices
    # of each study (redrawn every epoch; the slice labels come along) and predict whole studies
    # unpadded, in batches of equal depth. None: whole studies padded with air to the store's depth.
    crop_depth: int | None = None
    deterministic: bool = True
    num_workers: int = 0
    mem_mb: int | None = None  # the rule's declared memory: a configuration that cannot fit stops early

    def learning_settings(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in RUNTIME_KEYS}


def split_entry(entry: dict[str, Any], base: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model config, settings) of one `baselines.models` entry: keys that are settings override
    the block's; the rest are the model's arguments."""
    fields = {f.name for f in dataclasses.fields(BaselineSettings)}
    model = {k: v for k, v in entry.items() if k not in fields}
    return model, {**base, **{k: v for k, v in entry.items() if k in fields}}


def estimate_training_mb(
    model: nn.Module, sample: tuple[int, ...], batch_size: int, bytes_per_value: int = 4
) -> float:
    """Memory one training step needs, from one forward pass on PyTorch's `meta` device (shapes only,
    no compute): weights, gradients and two Adam moments, plus every layer's output kept for the
    backward pass times the batch size. An upper bound: in-place layers and checkpointing keep less."""
    probe = copy.deepcopy(model).to("meta").eval()  # eval: batch norm takes the batch of one
    outputs = 0

    def count(_: nn.Module, __: Any, out: Any) -> None:
        nonlocal outputs
        for t in out if isinstance(out, tuple) else (out,):
            if isinstance(t, torch.Tensor):
                outputs += t.numel()

    hooks = [m.register_forward_hook(count) for m in probe.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            probe(torch.empty((1, *sample), device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    parameters = sum(p.numel() for p in model.parameters())
    return (4 * parameters * 4 + batch_size * (outputs + math.prod(sample)) * bytes_per_value) / 2**20


def _epoch_batches(subset: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[list[tuple[int, int]]]:
    """The epoch's batches of `(epoch, item)` keys, a function of (seed, epoch) only; a lone last item
    joins the batch before it (batch norm cannot train on one)."""
    order = subset[np.random.default_rng(derive_seed(seed, epoch, 0x3D)).permutation(len(subset))]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2:] = [np.concatenate(batches[-2:])]
    return [[(epoch, int(i)) for i in b] for b in batches]


def slice_label_arrays(index: pd.DataFrame, keys: pd.DataFrame, labels: tuple[str, ...]) -> list[np.ndarray]:
    """Per study of `keys` (dataset, study_id), its labels per slice-store slice `(n, classes)`,
    NaN where unknown (a study without slice labels: all NaN)."""
    targets = multilabel_targets(index, labels)
    z = index["z"].to_numpy()
    groups = index.groupby(["dataset", "study_id"], sort=False).indices
    out = []
    for key in keys.itertuples(index=False, name=None):
        rows = groups.get(tuple(key))
        if rows is None:
            out.append(np.full((0, len(labels)), np.nan, dtype=np.float32))
            continue
        study = np.full((int(z[rows].max()) + 1, len(labels)), np.nan, dtype=np.float32)
        study[z[rows]] = targets[rows]
        out.append(study)
    return out


class _Inputs:
    """The studies a volume or embedding baseline reads, in one order, with their targets and splits."""

    def __init__(
        self,
        kind: str,
        studies: pd.DataFrame,
        fold: int,
        s: BaselineSettings,
        volumes: pd.DataFrame | None,
        embeddings: str | None,
        supervision: str = "study",
        index: pd.DataFrame | None = None,
    ) -> None:
        keyed = studies.set_index(["dataset", "study_id"])
        self.kind, self.supervision = kind, check_choice(supervision, SUPERVISIONS, "supervision")
        self.slice_index = None
        if kind == "volume":
            if volumes is None:
                raise ConfigError("a volume baseline needs the volume index (ct25d volume-index)")
            table = volumes.merge(studies[["dataset", "study_id", "role"]], on=["dataset", "study_id"])
            # Predict studies last: a study's position keys its augmentation draws, so adding or
            # removing an unlabelled dataset must not move any other study (nor change the weights).
            table = table.assign(last=table["role"] == "predict").sort_values(["last", "dataset", "study_id"])
            table = table.drop(columns=["last", "role"]).reset_index(drop=True)
            self.keys = table[["dataset", "study_id"]]
            self.targets = multilabel_targets(
                keyed.loc[pd.MultiIndex.from_frame(self.keys)].reset_index(), s.labels
            )
            slice_targets = None
            if supervision == "slice":
                if index is None:
                    raise ConfigError("supervision: slice needs the slice index (ct25d index --slices)")
                if not table["from_slices"].all():
                    raise ConfigError(
                        "supervision: slice needs the volumes' own slices (baselines.volume.depth: "
                        "from_slices); a fixed depth resizes z and loses the slice labels"
                    )
                self.slice_index = index.merge(self.keys, on=["dataset", "study_id"])
                slice_targets = slice_label_arrays(self.slice_index, self.keys, s.labels)
            depth = self.pad_depth = int(table["pad_to"].max())
            self.from_slices = bool(table["from_slices"].all())
            crop = s.crop_depth
            if crop is not None and (supervision != "slice" or crop < 4):
                raise ConfigError(
                    f"crop_depth {crop}: needs supervision: slice (a run of slices keeps their labels, "
                    f"not the study's) and at least 4 slices"
                )
            augment = Augment.from_settings(s.augment)
            self.train_data: Any = VolumeDataset(
                table, self.targets, augment, s.seed, crop or depth, slice_targets, crop=crop
            )
            eval_depth = None if crop else depth
            self.eval_data: Any = VolumeDataset(table, self.targets, None, 0, eval_depth, slice_targets)
            # Unpadded studies batch only with studies of their own depth.
            self.depths = table["depth"].to_numpy() if crop else None
            self.collate: Callable[..., Any] | None = None
        else:
            if supervision != "study":
                raise ConfigError("supervision: slice applies to the volume families, not embedding models")
            self.depths = None
            if embeddings is None:
                raise ConfigError("an embedding baseline needs the Stage-1 embeddings folder")
            rows = pd.read_parquet(Path(embeddings) / "rows.parquet")
            data = StudySequences(embeddings, rows, studies, s.labels)
            self.keys, self.targets = data.spans[["dataset", "study_id"]], data.study_targets
            self.train_data = self.eval_data = _Keyed(data)
            self.collate = pad_batch
        index_keys = pd.MultiIndex.from_frame(self.keys)
        self.split = splits_by_study(studies, fold).reindex(index_keys).to_numpy()
        if s.train_features == "held_out":
            if kind != "embeddings":
                raise ConfigError(
                    "baselines.train_features: held_out applies to embedding models (cnn25) only"
                )
            self.split = held_out_features(self.split, keyed["patient_id"].reindex(index_keys).to_numpy())
        self.missing = len(keyed.index.difference(index_keys))
        self.n_slices = keyed["n_slices"].reindex(index_keys).to_numpy() if "n_slices" in keyed else None

    def fingerprint(self) -> str:
        """Hash of which studies train and which validate (the fold's split, after
        `splits.train_fraction`) and their labels, per study and per slice."""
        frames = [self.keys.assign(split=self.split), pd.DataFrame(self.targets)]
        if self.slice_index is not None:
            frames.append(self.slice_index)
        return fingerprint(*frames)

    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one training input (a crop where `crop_depth` is set)."""
        return tuple(self.train_data[0]["x"].shape) if self.kind == "volume" else ()

    def store_shape(self) -> tuple[int, ...]:
        """`(C, D, S, S)` of the store's volumes, D the depth they are padded or cropped to."""
        shape = self.sample_shape()
        return (shape[0], self.pad_depth, *shape[2:])

    def eval_batches(self, subset: np.ndarray, batch_size: int) -> list[list[int]]:
        """`subset` in batches, in its order; unpadded volumes grouped by depth first."""
        groups = [subset] if self.depths is None else [subset[self.depths[subset] == d]
                                                      for d in np.unique(self.depths[subset])]  # fmt: skip
        return [g[i : i + batch_size].tolist() for g in groups for i in range(0, len(g), batch_size)]


class _Keyed(torch.utils.data.Dataset):
    """StudySequences under `(epoch, i)` keys (embeddings are not augmented)."""

    def __init__(self, data: StudySequences) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        return self.data[key[1] if isinstance(key, tuple) else key]


@dataclass
class _Outputs:
    """One batch through a baseline: study logits, and per-slice logits and lesion logits if any."""

    study: torch.Tensor
    targets: torch.Tensor
    slices: torch.Tensor | None = None
    seg: torch.Tensor | None = None


def _forward(model: nn.Module, batch: Any, kind: str, device: str) -> _Outputs:
    if kind != "volume":
        logits = model(batch["x"].to(device), batch["mask"].to(device))
        return _Outputs(logits, batch["study_y"].to(device))
    out = model(batch["x"].to(device, non_blocking=True))
    logits, seg = out if isinstance(out, tuple) else (out, None)
    targets = batch["y"].to(device)
    if logits.dim() == 3:  # per-slice logits: the study is its max over the real slices (Stage 2's rule)
        return _Outputs(volume_logits(logits, batch["valid"].to(device)), targets, logits, seg)
    return _Outputs(logits, targets, None, seg)


class StudyLoss:
    """Weighted BCE on known study labels, or on known slice labels (studies with none fall back to
    their study labels on the max slice); plus the lesion loss on studies that have a mask."""

    def __init__(self, s: BaselineSettings) -> None:
        self.weights, self.seg_weight = s.weights, s.seg_weight
        self.dice = DiceLoss(sigmoid=True)

    def _bce(self, logits: torch.Tensor, targets: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        return masked_slice_loss(
            logits.float(), torch.nan_to_num(targets), known, class_weights=self.weights.to(logits.device)
        )

    def __call__(self, out: _Outputs, batch: Any = None) -> torch.Tensor:
        known_study = ~torch.isnan(out.targets).any(-1)
        if out.slices is None:
            loss = self._bce(out.study[:, None], out.targets[:, None], known_study[:, None])
        else:
            slice_y = batch["slice_y"].to(out.slices.device)
            known = batch["valid"].to(out.slices.device) & ~torch.isnan(slice_y).any(-1)
            fallback = known_study & ~known.any(1)
            parts, weights = [], []
            if bool(known.any()):
                parts.append(self._bce(out.slices, slice_y, known))
                weights.append(int(known.sum()))
            if bool(fallback.any()):
                parts.append(self._bce(out.study[:, None], out.targets[:, None], fallback[:, None]))
                weights.append(int(fallback.sum()))
            if not parts:
                raise ValueError("a training batch has no known slice or study label")
            loss = sum(w * p for w, p in zip(weights, parts, strict=True)) / sum(weights)
        seg = out.seg
        if seg is not None and self.seg_weight and bool(batch["has_mask"].any()):
            with_mask = batch["has_mask"].to(seg.device)
            seg, truth = seg.float()[with_mask], batch["mask"].to(seg.device)[with_mask]
            loss = loss + self.seg_weight * (
                self.dice(seg, truth) + F.binary_cross_entropy_with_logits(seg, truth)
            )
        return loss


def _autocast(device: str, s: BaselineSettings) -> Any:
    cuda = device.startswith("cuda")
    return torch.autocast(device_type="cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=cuda and s.amp)


@dataclass
class _Predictions:
    """Study probabilities (NaN outside the subset), per-slice probabilities of slice models, loss."""

    study: np.ndarray
    slices: dict[int, np.ndarray]
    loss: float


@torch.no_grad()
def _predict(
    model: nn.Module,
    inputs: _Inputs,
    subset: np.ndarray,
    s: BaselineSettings,
    loss_fn: StudyLoss,
    device: str,
) -> _Predictions:
    """Predict `subset`; the loss is the mean training loss over its studies with known labels."""
    model.eval()
    prob = np.full((len(inputs.keys), len(s.labels)), np.nan, dtype=np.float32)
    slices: dict[int, np.ndarray] = {}
    total, count = 0.0, 0
    loader = DataLoader(
        inputs.eval_data,
        batch_sampler=inputs.eval_batches(subset, s.batch_size),
        collate_fn=inputs.collate,
        num_workers=s.num_workers,
    )
    for batch in loader:
        with _autocast(device, s):
            out = _forward(model, batch, inputs.kind, device)
        rows = batch["index"].numpy()
        prob[rows] = torch.sigmoid(out.study.float()).cpu().numpy()
        if out.slices is not None:
            per_slice = torch.sigmoid(out.slices.float()).cpu().numpy()
            for b, i in enumerate(rows):
                slices[int(i)] = per_slice[b, batch["valid"][b].numpy()]
        known = ~torch.isnan(out.targets).any(-1)
        if out.slices is not None:
            known = known | (~torch.isnan(batch["slice_y"]).any(-1) & batch["valid"]).any(1).to(known.device)
        if bool(known.any()):
            total += float(loss_fn(out, batch)) * len(rows)
            count += len(rows)
    model.train()
    return _Predictions(prob, slices, total / count if count else float("nan"))


def _auc_any(prob: np.ndarray, truth: np.ndarray, labels: tuple[str, ...]) -> float:
    """AUC of `any` (of the mean over labels when there is no `any`)."""
    if "any" in labels:
        k = labels.index("any")
        return auc_or_nan(truth[:, k], prob[:, k])
    aucs = [auc_or_nan(truth[:, k], prob[:, k]) for k in range(len(labels))]
    return math.nan if np.all(np.isnan(aucs)) else float(np.nanmean(aucs))


def _selection_metrics(
    prob: np.ndarray, truth: np.ndarray, labels: tuple[str, ...], threshold: float
) -> dict[str, float]:
    aucs = [auc_or_nan(truth[:, k], prob[:, k]) for k in range(len(labels))]
    out = {f"val_auc_{name}": auc for name, auc in zip(labels, aucs, strict=True)}
    out["val_auc_mean"] = float(np.nanmean(aucs)) if not np.all(np.isnan(aucs)) else math.nan
    if "any" in labels:
        k = labels.index("any")
        out["val_f1_any"] = f1_or_nan(truth[:, k], prob[:, k] > threshold)
    return out


def _slice_frame(inputs: _Inputs, slices: dict[int, np.ndarray], labels: tuple[str, ...]) -> pd.DataFrame:
    """Slice predictions of a slice-supervised volume model on the slice store's rows: each stored
    slice's probability goes to its `source_z` (the max where interpolated slices share one)."""
    if inputs.slice_index is None or not slices:
        return empty_slices(labels)
    frames = []
    data = inputs.eval_data
    groups = inputs.slice_index.groupby(["dataset", "study_id"], sort=False).indices
    for i, per_slice in sorted(slices.items()):
        source_z = np.asarray(read_fixed_attrs(data.stores[i], data.study_ids[i])["source_z"])
        best = pd.DataFrame(per_slice, index=source_z[: len(per_slice)]).groupby(level=0).max()
        rows = inputs.slice_index.iloc[groups[tuple(inputs.keys.iloc[i])]]
        rows = rows[rows["z"].isin(best.index)]
        frames.append((rows, best.loc[rows["z"]].to_numpy(dtype=np.float32)))
    keys = pd.concat([r for r, _ in frames], ignore_index=True)
    prob = np.concatenate([p for _, p in frames])
    return prediction_frame(
        keys[["dataset", "study_id", "z", "slice_id"]], prob, multilabel_targets(keys, labels), labels
    )


def prediction_frames(
    model: nn.Module, inputs: _Inputs, s: BaselineSettings, device: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(study predictions with their split, slice predictions) of every study of `inputs`, in the
    shared artifact format; `model` may be a bundle's TorchScript of the trained network."""
    predicted = _predict(model, inputs, np.arange(len(inputs.keys)), s, StudyLoss(s), device)
    keys = inputs.keys.assign(split=inputs.split)
    if inputs.n_slices is not None:
        keys = keys.assign(n_slices=inputs.n_slices)
    studies = prediction_frame(keys, predicted.study, inputs.targets, s.labels)
    return studies, _slice_frame(inputs, predicted.slices, s.labels)


def volume_inputs(
    studies: pd.DataFrame, s: BaselineSettings, volumes: pd.DataFrame, supervision: str, index: pd.DataFrame
) -> _Inputs:
    """The volume-store view a volume baseline predicts from (unlabelled studies: split `predict`)."""
    return _Inputs("volume", studies, -1, s, volumes, None, supervision, index)


def train_baseline(
    studies: pd.DataFrame,
    fold: int,
    model_config: dict[str, Any],
    settings: dict[str, Any] | BaselineSettings,
    out_dir: str | os.PathLike[str],
    device: str = "cpu",
    volumes: pd.DataFrame | None = None,
    embeddings: str | None = None,
    stage1_checkpoint: str | None = None,
    method: str | None = None,
    index: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Train a volume or embedding baseline on fold `fold`; returns the `metrics.json` summary.

    `method` names the model in the metrics (the config entry's name; default the registry name);
    `index` (the slice index) gives the slice labels of `supervision: slice`."""
    s = settings if isinstance(settings, BaselineSettings) else BaselineSettings.from_dict(settings)
    name = model_config["name"]
    kind = inputs_of(name)
    if kind == "slices":
        raise ConfigError(f"baseline {name!r} is a slice model: train it with train_thickened")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        **stamp("train-baseline", {"model": model_config, **s.learning_settings()}),
        "fold": fold,
        "numerics": numerics(),
    }
    supervision = model_config.get("supervision", "study")
    inputs = _Inputs(kind, studies, fold, s, volumes, embeddings, supervision, index)
    train_idx, val_idx = np.flatnonzero(inputs.split == "train"), np.flatnonzero(inputs.split == "inner")
    if len(train_idx) < 2 or not len(val_idx):
        raise ConfigError(
            f"fold {fold}: {len(train_idx)} training and {len(val_idx)} inner-validation studies "
            f"(a baseline needs at least 2 to train: batch norm cannot learn from one)"
        )

    with deterministic_kernels(s.deterministic):
        seed_everything(s.seed)
        extra: dict[str, Any] = {}
        if kind == "volume":
            extra["in_channels"] = inputs.sample_shape()[0]
            if model_config.get("init") == "stage1":
                extra["stage1_checkpoint"] = stage1_checkpoint
        else:
            extra["in_dim"] = int(inputs.eval_data[0][0].shape[1])
        # An embedding model's backbone names the Stage-1 run it reads, not one of its arguments.
        build = {k: v for k, v in model_config.items() if not (kind == "embeddings" and k == "backbone")}
        model = BASELINES.from_config(build, num_classes=len(s.labels), **extra)
        if kind == "volume" and s.mem_mb:
            need = estimate_training_mb(
                model, inputs.sample_shape(), s.batch_size, 2 if device.startswith("cuda") and s.amp else 4
            )
            log.info("estimated training memory %.0f MB (declared %d MB)", need, s.mem_mb)
            if need > s.mem_mb and not s.gradient_checkpointing:
                raise ConfigError(
                    f"baselines.mem_mb: {name} on volumes {inputs.sample_shape()} with batch_size "
                    f"{s.batch_size} needs about {need:.0f} MB, more than the declared {s.mem_mb} MB; lower "
                    f"baselines.batch_size or baselines.volume.max_depth/size, turn on "
                    f"baselines.gradient_checkpointing, or raise baselines.mem_mb"
                )
        if s.gradient_checkpointing:
            log.info("gradient checkpointing on %d stages", enable_checkpointing(model))
        model = model.to(device)
        summary = _fit(model, inputs, train_idx, val_idx, s, out, device, meta, model_config)

    model.load_state_dict(load_checkpoint(out / "best.pt")["model"])
    studies_out, slices_out = prediction_frames(model, inputs, s, device)
    extra_summary = {
        **summary,
        "parameters": sum(p.numel() for p in model.parameters()),
        "missing_inputs": inputs.missing,
        "inputs": kind,
        "supervision": supervision,
    }
    if kind == "volume":
        extra_summary["volume_shape"] = list(inputs.store_shape())
        extra_summary["crop_depth"] = s.crop_depth
        extra_summary["volume_from_slices"] = inputs.from_slices
    return write_outputs(
        out,
        studies_out,
        slices_out,
        s.labels,
        method or name,
        fold,
        meta,
        s.threshold,
        extra_summary,
    )


def weights_key(model: nn.Module) -> str:
    """Hash of a network's weights before training: the seed's draw, or the Stage-1 run it was
    converted from (`init: stage1`), which a run at another training fraction or seed retrains."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _not_resumable(payload: dict[str, Any], identity: dict[str, Any], s: BaselineSettings) -> str:
    """Why `last.pt` must not be resumed ("" if it may). Only an interrupted run resumes: the same
    settings, the same training and inner studies with their labels and the same starting weights.
    A finished run (its epochs, or its patience, spent) is never resumed: Snakemake reruns a finished
    job only to redo it, and `sweep` reruns one at another fraction, where resuming would hand back
    the model trained on the other fraction's studies."""
    written = payload.get("identity") or {}
    if written != identity:
        changed = sorted(k for k in identity.keys() | written.keys() if written.get(k) != identity.get(k))
        return f"written by another run: {', '.join(changed)} differ"
    history = payload["state"]["history"]
    if payload["state"]["epoch"] >= s.epochs or patience_spent(history, s.monitor, s.patience):
        return "that run finished"
    return ""


def refresh_batch_norm(model: nn.Module, inputs: _Inputs, train_idx: np.ndarray, s: BaselineSettings,
                       device: str) -> int:  # fmt: skip
    """Re-estimate every batch norm's running statistics from `s.bn_refresh` training volumes (a fixed
    draw, no augmentation), as `torch.optim.swa_utils.update_bn` does; returns the volumes used."""
    if not s.bn_refresh or not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return 0
    rng = np.random.default_rng(derive_seed(s.seed, 0, 0xB4))
    chosen = np.sort(rng.permutation(train_idx)[: s.bn_refresh])
    loader = DataLoader(inputs.eval_data, batch_sampler=inputs.eval_batches(chosen, s.batch_size),
                        collate_fn=inputs.collate, num_workers=s.num_workers)  # fmt: skip
    with _autocast(device, s):
        torch.optim.swa_utils.update_bn((batch["x"] for batch in loader), model, torch.device(device))
    return len(chosen)


def _evaluate(model: nn.Module, inputs: _Inputs, val_idx: np.ndarray, s: BaselineSettings,
              loss_fn: StudyLoss, device: str) -> dict[str, float]:  # fmt: skip
    predicted = _predict(model, inputs, val_idx, s, loss_fn, device)
    truth = inputs.targets[val_idx]
    selection = _selection_metrics(predicted.study[val_idx], truth, s.labels, s.threshold)
    return {"val_loss": predicted.loss, **selection}


def _fit(
    model: nn.Module,
    inputs: _Inputs,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    s: BaselineSettings,
    out: Path,
    device: str,
    meta: dict[str, Any],
    model_config: dict[str, Any],
) -> dict[str, Any]:
    """The epoch loop with per-epoch `last.pt` and resume; returns timing, the best epoch, the
    evaluation before training and the last epoch's training AUC."""
    last_path, best_so_far = out / "last.pt", out / "best-so-far.pt"
    optimizer = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    batches = len(_epoch_batches(train_idx, s.batch_size, s.seed, 0))
    schedule = make_schedule(s.scheduler, optimizer, s.epochs * batches, s.warmup_fraction, s.section)
    loss_fn = StudyLoss(s)
    state: dict[str, Any] = {"epoch": 0, "history": [], "best": None, "seconds": [], "bn_refresh": 0}
    identity = {
        "settings": s.learning_settings(),
        "model_config": model_config,
        "data": inputs.fingerprint(),  # the studies in order, their split and labels
        "start": weights_key(model),
    }
    if last_path.exists():
        payload = load_checkpoint(last_path)
        stale = _not_resumable(payload, identity, s)
        if stale:
            log.warning("not resuming from %s (%s): training from scratch", last_path, stale)
        else:
            model.load_state_dict(payload["model"])
            optimizer.load_state_dict(payload["optimizer"])
            schedule.load_state_dict(payload["schedule"])
            set_rng_state(payload["rng"], device)
            state = payload["state"]
            log.info("resuming from %s at epoch %d", last_path, state["epoch"])

    def keep(row: dict[str, float], epoch: int) -> None:
        state["history"].append(row)
        if improved(row[s.monitor], state["best"], s.monitor):
            state["best"] = row[s.monitor]
            save_checkpoint(best_so_far, {"model": model.state_dict(), "epoch": epoch, "config": model_config,
                                          "meta": meta, "metrics": row})  # fmt: skip

    if not state["history"]:  # a fresh run: what the network knows before any step (epoch -1)
        state["bn_refresh"] = refresh_batch_norm(model, inputs, train_idx, s, device)
        keep({"epoch": -1, "train_loss": math.nan, "train_auc_any": math.nan,
              **_evaluate(model, inputs, val_idx, s, loss_fn, device), "seconds": 0.0}, -1)  # fmt: skip
        log.info("before training: %s", {k: round(v, 4) for k, v in state["history"][-1].items()})
    while state["epoch"] < s.epochs and not patience_spent(state["history"], s.monitor, s.patience):
        epoch, started, total, count = state["epoch"], time.perf_counter(), 0.0, 0
        seen_prob, seen_truth = [], []
        loader = DataLoader(
            inputs.train_data,
            batch_sampler=_epoch_batches(train_idx, s.batch_size, s.seed, epoch),
            collate_fn=inputs.collate,
            num_workers=s.num_workers,
        )
        for batch in tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=None):
            with _autocast(device, s):
                outputs = _forward(model, batch, inputs.kind, device)
            loss = loss_fn(outputs, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            n = len(outputs.targets)
            total, count = total + float(loss.detach()) * n, count + n
            seen_prob.append(torch.sigmoid(outputs.study.detach().float()).cpu().numpy())
            seen_truth.append(outputs.targets.cpu().numpy())
        seconds = time.perf_counter() - started
        row = {
            "epoch": epoch,
            "train_loss": total / count,
            "train_auc_any": _auc_any(np.concatenate(seen_prob), np.concatenate(seen_truth), s.labels),
            **_evaluate(model, inputs, val_idx, s, loss_fn, device),
            "seconds": seconds,
        }
        keep(row, epoch)
        state["seconds"].append(seconds)
        state["epoch"] = epoch + 1
        save_checkpoint(
            last_path,
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "rng": rng_state(device),
                "state": state,
                "identity": identity,
            },
        )
        write_history(out, state["history"], s.monitor, f"Baseline {model_config['name']}")
        log.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in row.items()})
    if state["epoch"] < s.epochs:
        log.info("no better %s for %d epochs: stopped before epoch %d", s.monitor, s.patience, state["epoch"])
    write_history(out, state["history"], s.monitor, f"Baseline {model_config['name']}")
    best = load_checkpoint(best_so_far)
    save_checkpoint(out / "best.pt", best)
    trained = [row for row in state["history"] if row["epoch"] >= 0]
    return {
        "best_epoch": int(best["epoch"]),
        "epochs_run": len(trained),
        "seconds_per_epoch": float(np.mean(state["seconds"])) if state["seconds"] else 0.0,
        "before_training": {k: v for k, v in state["history"][0].items() if k.startswith("val_")},
        "bn_refresh_volumes": state["bn_refresh"],
        "train_auc_any_last": trained[-1]["train_auc_any"] if trained else math.nan,
        "train_loss_last": trained[-1]["train_loss"] if trained else math.nan,
    }


def stage1_encoder(
    checkpoint: str | os.PathLike[str] | None, backbone: str, out_dir: str | os.PathLike[str]
) -> Path:
    """The encoder of a Stage-1 `best.pt` as a timm state dict (`<out_dir>/stage1_encoder.pth`), so
    that timm loads it as it loads pretrained weights (adapting the stem to the input channels)."""
    payload = stage1_payload(checkpoint, backbone, "thick2d")
    encoder = {k.removeprefix("encoder."): v for k, v in payload["model"].items() if k.startswith("encoder.")}
    path = Path(out_dir) / "stage1_encoder.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, encoder)
    return path


def thick_settings(model_config: dict[str, Any], stage1: dict[str, Any]) -> Stage1Settings:
    """Stage-1 settings of a `thick2d` entry: the `stage1` block, then the entry's keys (`k` is the
    thickness; any Stage-1 key, e.g. `image_size` or `epochs`, may be overridden)."""
    renamed = {"k": "thickness"}
    entry = {renamed.get(k, k): v for k, v in model_config.items() if k not in ("name", "init")}
    if model_config.get("init") not in (None, "stage1"):
        raise ConfigError(
            f"thick2d init: 'stage1' or absent (a weights file goes in `pretrained`), "
            f"got {model_config['init']!r}"
        )
    skip = {"backbones", "folds", "gpus"}  # the run lists; the thick2d job leases one device
    s = Stage1Settings.from_dict({**{k: v for k, v in stage1.items() if k not in skip}, **entry})
    with torch.device("meta"):  # checks k, multiplex and the backbone without allocating weights
        ThickSliceClassifier(
            s.backbone, 1, k=s.thickness, multiplex=s.multiplex, slice_attention=s.slice_attention
        )
    return s


def train_thickened(
    index: pd.DataFrame,
    studies: pd.DataFrame,
    fold: int,
    model_config: dict[str, Any],
    stage1: dict[str, Any],
    threshold: float,
    out_dir: str | os.PathLike[str],
    device: str = "cpu",
    method: str | None = None,
    stage1_checkpoint: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Thickened 2D: Stage 1's trainer on k-slice inputs, then every slice of every dataset predicted
    and each study scored by its max slice. `init: stage1` starts the encoder from the fold's Stage-1
    `best.pt` (`stage1_checkpoint`), spread over the k slices as pretrained weights are."""
    s = thick_settings(model_config, stage1)
    if model_config.get("init") == "stage1":
        s = dataclasses.replace(s, pretrained=str(stage1_encoder(stage1_checkpoint, s.backbone, out_dir)))
    started = time.perf_counter()
    result = train_stage1(index, fold, s, out_dir, device)
    seconds = (time.perf_counter() - started) / max(len(result.history), 1)
    payload = load_checkpoint(result.best)
    model = build_model(s, payload["num_classes"], pretrained=False)
    model.load_state_dict(payload["model"])
    model = model.to(device)
    # Every scored or predicted study (inner, outer fold, external, predict); not the training slices.
    frame = index.reset_index(drop=True)
    kept = study_splits(frame, fold).isin(["inner", "validation", "external", "predict"])
    frame = frame[kept].reset_index(drop=True)
    logits = np.zeros((len(frame), payload["num_classes"]), dtype=np.float32)
    loader = prediction_loader(frame, None, s, device)
    amp_dtype = torch.bfloat16 if device.startswith("cuda") and s.amp else None
    predictions = iter_predictions(model, loader, device, amp_dtype, s.tta_flip)
    for rows, batch_logits, _ in tqdm(
        predictions, total=len(loader), desc="predict", leave=False, disable=None
    ):
        logits[rows] = batch_logits.numpy()
    prob = 1 / (1 + np.exp(-logits))
    labels = tuple(payload["class_names"])
    slices = prediction_frame(
        frame[["dataset", "study_id", "z", "slice_id"]], prob, multilabel_targets(frame, labels), labels
    )
    per_study = volume_max(frame["dataset"].astype(str) + "/" + frame["study_id"].astype(str), prob)
    keyed = studies.set_index(["dataset", "study_id"])
    order = pd.MultiIndex.from_tuples(
        [tuple(k.split("/", 1)) for k in per_study.index], names=["dataset", "study_id"]
    )
    split = splits_by_study(studies, fold)
    keys = order.to_frame(index=False).assign(split=split.reindex(order).to_numpy())
    keys = keys.assign(n_slices=frame.groupby(["dataset", "study_id"]).size().reindex(order).to_numpy())
    studies_out = prediction_frame(
        keys, per_study.to_numpy(), multilabel_targets(keyed.loc[order].reset_index(), labels), labels
    )
    meta = {
        **stamp("train-baseline", {"model": model_config, **s.learning_settings()}),
        "fold": fold,
        "numerics": numerics(),
    }
    extra = {
        "best_epoch": int(payload["epoch"]),
        "seconds_per_epoch": seconds,
        "inputs": "slices",
        "parameters": sum(p.numel() for p in model.parameters()),
        "missing_inputs": 0,
    }
    return write_outputs(
        Path(out_dir),
        studies_out,
        slices,
        labels,
        method or model_config["name"],
        fold,
        meta,
        threshold,
        extra,
    )
