"""Train one baseline of the comparison on one fold and write the artifacts Stage 2 writes.

Volume and embedding families (`ct25d.models.baselines`) train here: study-level weighted BCE (plus
the lesion loss of the dual-task U-Net on studies with a mask), the epoch chosen on the fold's
inner-validation studies, every study of every dataset predicted. `last.pt` is written atomically after
every epoch and a killed job resumes from it. The thickened 2D family is a slice model: it trains
with Stage 1's trainer (same sampler, resume and selection) and its slice predictions become
study predictions by the max over slices.
"""

from __future__ import annotations

import copy
import dataclasses
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
from ct25d.models.baselines import BASELINES, enable_checkpointing, inputs_of
from ct25d.models.stage2 import masked_slice_loss
from ct25d.models.thick import ThickSliceClassifier
from ct25d.provenance import stamp
from ct25d.training.checkpoint import load_checkpoint, save_checkpoint, stage1_payload
from ct25d.training.history import improved, write_history
from ct25d.training.seed import derive_seed, deterministic_kernels, rng_state, seed_everything, set_rng_state
from ct25d.training.stage1 import (
    Stage1Settings,
    build_model,
    iter_predictions,
    prediction_loader,
    train_stage1,
)
from ct25d.training.stage2 import Stage2Settings

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
    amp: bool = True  # bf16 autocast on CUDA
    gradient_checkpointing: bool = False
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
    ) -> None:
        keyed = studies.set_index(["dataset", "study_id"])
        self.kind = kind
        if kind == "volume":
            if volumes is None:
                raise ConfigError("a volume baseline needs the volume index (ct25d volume-index)")
            table = volumes.merge(studies[["dataset", "study_id"]], on=["dataset", "study_id"])
            table = table.sort_values(["dataset", "study_id"]).reset_index(drop=True)
            self.keys = table[["dataset", "study_id"]]
            self.targets = multilabel_targets(
                keyed.loc[pd.MultiIndex.from_frame(self.keys)].reset_index(), s.labels
            )
            self.train_data: Any = VolumeDataset(
                table, self.targets, Augment.from_settings(s.augment), s.seed
            )
            self.eval_data: Any = VolumeDataset(table, self.targets)
            self.collate: Callable[..., Any] | None = None
        else:
            if embeddings is None:
                raise ConfigError("an embedding baseline needs the Stage-1 embeddings folder")
            rows = pd.read_parquet(Path(embeddings) / "rows.parquet")
            data = StudySequences(embeddings, rows, studies, s.labels)
            self.keys, self.targets = data.spans[["dataset", "study_id"]], data.study_targets
            self.train_data = self.eval_data = _Keyed(data)
            self.collate = pad_batch
        index = pd.MultiIndex.from_frame(self.keys)
        self.split = splits_by_study(studies, fold).reindex(index).to_numpy()
        if s.train_features == "held_out":
            if kind != "embeddings":
                raise ConfigError(
                    "baselines.train_features: held_out applies to embedding models (cnn25) only"
                )
            self.split = held_out_features(self.split, keyed["patient_id"].reindex(index).to_numpy())
        self.missing = len(keyed.index.difference(index))
        self.n_slices = keyed["n_slices"].reindex(index).to_numpy() if "n_slices" in keyed else None

    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.eval_data[0]["x"].shape) if self.kind == "volume" else ()


class _Keyed(torch.utils.data.Dataset):
    """StudySequences under `(epoch, i)` keys (embeddings are not augmented)."""

    def __init__(self, data: StudySequences) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        return self.data[key[1] if isinstance(key, tuple) else key]


def _forward(
    model: nn.Module, batch: Any, kind: str, device: str
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(study logits, lesion logits or None, study targets) of one batch."""
    if kind == "volume":
        out = model(batch["x"].to(device, non_blocking=True))
        logits, seg = out if isinstance(out, tuple) else (out, None)
        return logits, seg, batch["y"].to(device)
    return model(batch["x"].to(device), batch["mask"].to(device)), None, batch["study_y"].to(device)


class StudyLoss:
    """Weighted BCE on known study labels, plus the lesion loss on studies that have a mask."""

    def __init__(self, s: BaselineSettings) -> None:
        self.weights, self.seg_weight = s.weights, s.seg_weight
        self.dice = DiceLoss(sigmoid=True)

    def __call__(
        self, logits: torch.Tensor, targets: torch.Tensor, seg: torch.Tensor | None = None, batch: Any = None
    ) -> torch.Tensor:
        known = ~torch.isnan(targets).any(-1)
        loss = masked_slice_loss(
            logits.float()[:, None],
            torch.nan_to_num(targets)[:, None],
            known[:, None],
            class_weights=self.weights.to(logits.device),
        )
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


@torch.no_grad()
def _predict(
    model: nn.Module,
    inputs: _Inputs,
    subset: np.ndarray,
    s: BaselineSettings,
    loss_fn: StudyLoss,
    device: str,
) -> tuple[np.ndarray, float]:
    """(study probabilities, NaN outside `subset`; mean classification loss over `subset`)."""
    model.eval()
    prob = np.full((len(inputs.keys), len(s.labels)), np.nan, dtype=np.float32)
    total, count = 0.0, 0
    loader = DataLoader(
        inputs.eval_data,
        batch_size=s.batch_size,
        sampler=subset.tolist(),
        collate_fn=inputs.collate,
        num_workers=s.num_workers,
    )
    for batch in loader:
        with _autocast(device, s):
            logits, _, targets = _forward(model, batch, inputs.kind, device)
        prob[batch["index"].numpy()] = torch.sigmoid(logits.float()).cpu().numpy()
        if not torch.isnan(targets).any(-1).all():
            total += float(loss_fn(logits, targets)) * len(targets)
            count += len(targets)
    model.train()
    return prob, total / count if count else float("nan")


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
) -> dict[str, Any]:
    """Train a volume or embedding baseline on fold `fold`; returns the `metrics.json` summary.

    `method` names the model in the metrics (the config entry's name; default the registry name)."""
    s = settings if isinstance(settings, BaselineSettings) else BaselineSettings.from_dict(settings)
    name = model_config["name"]
    kind = inputs_of(name)
    if kind == "slices":
        raise ConfigError(f"baseline {name!r} is a slice model: train it with train_thickened")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {**stamp("train-baseline", {"model": model_config, **s.learning_settings()}), "fold": fold}
    inputs = _Inputs(kind, studies, fold, s, volumes, embeddings)
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
                    f"baselines.batch_size or baselines.volume.depth/size, turn on "
                    f"baselines.gradient_checkpointing, or raise baselines.mem_mb"
                )
        if s.gradient_checkpointing:
            log.info("gradient checkpointing on %d stages", enable_checkpointing(model))
        model = model.to(device)
        summary = _fit(model, inputs, train_idx, val_idx, s, out, device, meta, model_config)

    model.load_state_dict(load_checkpoint(out / "best.pt")["model"])
    prob, _ = _predict(model, inputs, np.arange(len(inputs.keys)), s, StudyLoss(s), device)
    keys = inputs.keys.assign(split=inputs.split)
    if inputs.n_slices is not None:
        keys = keys.assign(n_slices=inputs.n_slices)
    studies_out = prediction_frame(keys, prob, inputs.targets, s.labels)
    extra_summary = {
        **summary,
        "parameters": sum(p.numel() for p in model.parameters()),
        "missing_inputs": inputs.missing,
        "inputs": kind,
    }
    return write_outputs(
        out,
        studies_out,
        empty_slices(s.labels),
        s.labels,
        method or name,
        fold,
        meta,
        s.threshold,
        extra_summary,
    )


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
    """The epoch loop with per-epoch `last.pt` and resume; returns timing and the best epoch."""
    last_path, best_so_far = out / "last.pt", out / "best-so-far.pt"
    optimizer = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    loss_fn = StudyLoss(s)
    state: dict[str, Any] = {"epoch": 0, "history": [], "best": None, "seconds": []}
    identity = {
        "settings": s.learning_settings(),
        "model_config": model_config,
        "studies": inputs.keys.to_dict("list"),
    }
    if last_path.exists():
        payload = load_checkpoint(last_path)
        if payload["identity"] == identity and payload["state"]["epoch"] < s.epochs:
            model.load_state_dict(payload["model"])
            optimizer.load_state_dict(payload["optimizer"])
            set_rng_state(payload["rng"], device)
            state = payload["state"]
            log.info("resuming from %s at epoch %d", last_path, state["epoch"])
        else:
            log.warning(
                "not resuming from %s (another run or a finished one): training from scratch", last_path
            )
    truth = inputs.targets[val_idx]
    while state["epoch"] < s.epochs:
        epoch, started, total, count = state["epoch"], time.perf_counter(), 0.0, 0
        loader = DataLoader(
            inputs.train_data,
            batch_sampler=_epoch_batches(train_idx, s.batch_size, s.seed, epoch),
            collate_fn=inputs.collate,
            num_workers=s.num_workers,
        )
        for batch in tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=None):
            with _autocast(device, s):
                logits, seg, targets = _forward(model, batch, inputs.kind, device)
            loss = loss_fn(logits, targets, seg, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, count = total + float(loss.detach()) * len(targets), count + len(targets)
        seconds = time.perf_counter() - started
        prob, val_loss = _predict(model, inputs, val_idx, s, loss_fn, device)
        row = {
            "epoch": epoch,
            "train_loss": total / count,
            "val_loss": val_loss,
            **_selection_metrics(prob[val_idx], truth, s.labels, s.threshold),
            "seconds": seconds,
        }
        state["history"].append(row)
        state["seconds"].append(seconds)
        if improved(row[s.monitor], state["best"], s.monitor):
            state["best"] = row[s.monitor]
            save_checkpoint(
                best_so_far,
                {
                    "model": model.state_dict(),
                    "epoch": epoch,
                    "config": model_config,
                    "meta": meta,
                    "metrics": row,
                },
            )
        state["epoch"] = epoch + 1
        save_checkpoint(
            last_path,
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": rng_state(device),
                "state": state,
                "identity": identity,
            },
        )
        write_history(out, state["history"], s.monitor, f"Baseline {model_config['name']}")
        log.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in row.items()})
    best = load_checkpoint(best_so_far)
    save_checkpoint(out / "best.pt", best)
    return {"best_epoch": int(best["epoch"]), "seconds_per_epoch": float(np.mean(state["seconds"]))}


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
    # Every scored study (inner, outer fold, external); the training studies' slices are not needed.
    frame = index.reset_index(drop=True)
    frame = frame[study_splits(frame, fold).isin(["inner", "validation", "external"])].reset_index(drop=True)
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
    meta = {**stamp("train-baseline", {"model": model_config, **s.learning_settings()}), "fold": fold}
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
