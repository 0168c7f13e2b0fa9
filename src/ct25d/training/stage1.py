"""Stage 1 training: a slice classifier on one cross-validation fold, resumable to the bit.

A job may be killed at any step (pre-emption, time limits). `last.pt` is rewritten atomically after
every epoch and every `checkpoint_every_steps` steps with everything the remaining run depends on:
weights, optimizer, scheduler, scaler, all RNG states, epoch, position inside the epoch and the
epoch's running loss. The data order and augmentation are pure functions of (seed, epoch, row), so
a restarted job ends with the same weights as an uninterrupted one (CPU, fixed seed, any number of
loader workers).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from ct25d.atomic import atomic_path, write_json
from ct25d.datasets.slice_dataset import (
    Augment,
    EpochBatchSampler,
    SliceDataset,
    balancing_weights,
    multiclass_targets,
    multilabel_targets,
    worker_init,
)
from ct25d.datasets.splits import study_splits
from ct25d.errors import ConfigError
from ct25d.evaluation.metrics import auc_or_nan, f1_or_nan
from ct25d.labels import RSNA_LABELS
from ct25d.models.stage1 import SliceClassifier
from ct25d.models.thick import ThickSliceClassifier
from ct25d.provenance import stamp
from ct25d.training.checkpoint import load_checkpoint, save_checkpoint
from ct25d.training.distributed import SINGLE, RankBatchSampler, Ranks, sync_batch_norm
from ct25d.training.history import improved, write_history
from ct25d.training.schedule import warmup_cosine
from ct25d.training.seed import (
    derive_seed,
    deterministic_kernels,
    numerics,
    rng_state,
    seed_everything,
    set_rng_state,
)

log = logging.getLogger(__name__)

# Settings that do not change what is learned: a resumed run may change them.
RUNTIME_KEYS = frozenset(
    {"device", "num_workers", "checkpoint_every_steps", "eval_batch_size", "tta_flip", "embed_batch_size",
     "augment_on", "compile"}
)  # fmt: skip
AUGMENT_ON = ("auto", "loader", "device")


@dataclass(frozen=True)
class Stage1Settings:
    """Config block `stage1` (defaults = the CPU demo). Unknown keys are an error."""

    backbone: str = "resnet10t"
    pretrained: bool | str = False  # or a local weights file
    image_size: int = 128
    drop_rate: float = 0.2
    task: str = "multilabel"  # multilabel: the label columns; multiclass: `label_column`
    labels: tuple[str, ...] = RSNA_LABELS
    label_column: str = "label"
    num_classes: int | None = None  # multiclass: default max(label) + 1
    class_weights: tuple[float, ...] | None = None  # None: RSNA weights / inverse frequency
    epochs: int = 4
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    scheduler: str = "cosine"  # cosine (linear warm-up) | onecycle
    warmup_fraction: float = 0.05
    augment: dict[str, float] | bool = True
    # Where augmentation runs: in the loader workers, or on whole batches on the training device
    # (`Augment.batch`: the same numbers, bit-identical on the CPU); auto: the device when it is a GPU.
    augment_on: str = "auto"
    compile: bool = False  # torch.compile the training step's model (weights and checkpoints unchanged)
    balanced_sampling: bool = False
    samples_per_epoch: int | None = None  # None: one pass over the training rows
    monitor: str = "val_loss"  # val_loss | val_auc_mean | val_f1_any | val_f1_macro
    threshold: float = 0.5
    seed: int = 0
    deterministic: bool = True
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    channels_last: bool = True  # on CUDA
    num_workers: int = 2
    checkpoint_every_steps: int = 200
    eval_batch_size: int = 64
    device: str = "auto"
    tta_flip: bool = True
    embed_batch_size: int = 64
    # Thickened 2D (seed 003; the `thick2d` baseline): k adjacent slices in, the centre one predicted.
    thickness: int = 1
    multiplex: bool = False
    slice_attention: bool = False
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_dict(cls, settings: dict[str, Any]) -> Stage1Settings:
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ConfigError(f"unknown stage1 setting(s) {unknown}; known: {sorted(known)}")
        values = dict(settings)
        for key in ("labels", "class_weights"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        s = cls(**values)
        if s.task not in ("multilabel", "multiclass"):
            raise ConfigError(f"stage1.task: expected multilabel or multiclass, got {s.task!r}")
        if s.scheduler not in ("cosine", "onecycle"):
            raise ConfigError(f"stage1.scheduler: expected cosine or onecycle, got {s.scheduler!r}")
        return s

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("extra")
        return out

    def learning_settings(self) -> dict[str, Any]:
        """The settings a resumed run must share with the run that wrote `last.pt`."""
        return {k: v for k, v in self.to_dict().items() if k not in RUNTIME_KEYS}


@dataclass
class TrainResult:
    best: Path
    last: Path
    history: list[dict[str, float]]


class Task:
    """Targets, loss and validation metrics of one task; one object so train and eval agree."""

    def __init__(self, s: Stage1Settings, train: pd.DataFrame) -> None:
        self.s = s
        if s.task == "multilabel":
            self.names = list(s.labels)
            weights = s.class_weights or [2.0 if name == "any" else 1.0 for name in self.names]
        else:
            classes = multiclass_targets(train, s.label_column)
            n = s.num_classes or int(classes.max()) + 1
            self.names = [f"class_{k}" for k in range(n)]
            if s.class_weights is not None:
                weights = s.class_weights
            else:
                counts = np.bincount(classes[classes >= 0], minlength=n).astype(np.float64)
                weights = counts.sum() / np.maximum(counts, 1) / n
        if len(weights) != len(self.names):
            raise ConfigError(f"stage1.class_weights: {len(weights)} weights for {len(self.names)} outputs")
        self.weights = torch.tensor(list(weights), dtype=torch.float32)

    @property
    def metric_names(self) -> set[str]:
        """Columns `metrics` (plus `val_loss`) produces, i.e. what `monitor` may name."""
        names = {"val_loss", "val_auc_mean", *(f"val_auc_{name}" for name in self.names)}
        if self.s.task == "multiclass":
            names.add("val_f1_macro")
        elif "any" in self.names:
            names.add("val_f1_any")
        return names

    @property
    def num_outputs(self) -> int:
        return len(self.names)

    def targets(self, frame: pd.DataFrame) -> np.ndarray:
        if self.s.task == "multilabel":
            return multilabel_targets(frame, self.names)
        return multiclass_targets(frame, self.s.label_column)

    def sampling_classes(self, targets: np.ndarray) -> np.ndarray:
        """What class-balanced sampling balances: `any` (or the last label) / the class id."""
        if self.s.task == "multiclass":
            return targets
        column = self.names.index("any") if "any" in self.names else -1
        return np.nan_to_num(targets[:, column], nan=-1.0)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Weighted BCE over known labels (RSNA metric weighting) / weighted CE."""
        total, weight = self.loss_terms(logits, targets)
        return total / weight.clamp_min(1e-12)

    def loss_terms(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weighted loss sum, weight sum): the loss is their ratio, and across ranks the ratio of
        their totals (what a single process computes on the global batch)."""
        logits = logits.float()
        weights = self.weights.to(logits.device)
        if self.s.task == "multiclass":
            known = targets != -100
            total = F.cross_entropy(logits, targets, weight=weights, ignore_index=-100, reduction="sum")
            return total, weights[targets[known]].sum()
        known = ~torch.isnan(targets)
        bce = F.binary_cross_entropy_with_logits(logits, targets.nan_to_num(0.0), reduction="none")
        w = weights * known
        return (bce * w).sum(), w.sum()

    def metrics(self, logits: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        """Validation metrics: per-output AUC, their mean, and F1 of `any` / macro F1."""
        out: dict[str, float] = {}
        if self.s.task == "multilabel":
            prob = 1 / (1 + np.exp(-logits))
            truth = targets
        else:
            prob = np.exp(logits - logits.max(1, keepdims=True))
            prob /= prob.sum(1, keepdims=True)
            truth = np.where(targets[:, None] >= 0, np.eye(self.num_outputs)[targets], np.nan)
        aucs = [auc_or_nan(truth[:, k], prob[:, k]) for k in range(self.num_outputs)]
        out.update({f"val_auc_{name}": auc for name, auc in zip(self.names, aucs, strict=True)})
        out["val_auc_mean"] = float(np.nanmean(aucs)) if not np.all(np.isnan(aucs)) else math.nan
        if self.s.task == "multilabel":
            if "any" in self.names:
                k = self.names.index("any")
                out["val_f1_any"] = f1_or_nan(truth[:, k], prob[:, k] > self.s.threshold)
        else:
            pred = np.eye(self.num_outputs)[prob.argmax(1)]
            f1s = [f1_or_nan(truth[:, k], pred[:, k]) for k in range(self.num_outputs)]
            out["val_f1_macro"] = float(np.nanmean(f1s))
        return out


def split_fold(index: pd.DataFrame, fold: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, inner) rows for outer fold `fold`: the epoch is chosen on the inner split; the outer
    fold itself is never seen here (`ct25d.datasets.splits`). Patient-level, like the folds."""
    split = study_splits(index, fold)
    train = index[split == "train"].reset_index(drop=True)
    inner = index[split == "inner"].reset_index(drop=True)
    if inner.empty or train.empty:
        raise ConfigError(
            f"fold {fold}: {len(train)} training and {len(inner)} inner-validation slices; need both"
        )
    return train, inner


def build_model(
    s: Stage1Settings, num_classes: int, pretrained: bool = True
) -> SliceClassifier | ThickSliceClassifier:
    """The configured classifier; `pretrained=False` skips weight loading (checkpoint restore)."""
    weights: bool | str = s.pretrained if pretrained else False
    if s.thickness > 1 or s.multiplex:
        return ThickSliceClassifier(s.backbone, num_classes, k=s.thickness, multiplex=s.multiplex,
                                    slice_attention=s.slice_attention, pretrained=weights,
                                    drop_rate=s.drop_rate)  # fmt: skip
    return SliceClassifier(s.backbone, num_classes, pretrained=weights, drop_rate=s.drop_rate)


def make_scheduler(s: Stage1Settings, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
    """Per-step LR schedule: cosine decay after a linear warm-up, or one-cycle."""
    if s.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=s.lr, total_steps=max(total_steps, 1))
    return warmup_cosine(optimizer, total_steps, s.warmup_fraction)


def make_loader(dataset: SliceDataset, s: Stage1Settings, device: str, **kwargs: Any) -> DataLoader:
    """DataLoader with the GPU conveniences (pinned memory, persistent workers) where they apply.

    The loader's own generator is fixed so creating an iterator never draws from the global RNG
    (which dropout uses): otherwise a resumed run would shift every later dropout mask.
    """
    workers = s.num_workers
    return DataLoader(
        dataset,
        num_workers=workers,
        pin_memory=device.startswith("cuda"),
        persistent_workers=workers > 0,
        worker_init_fn=worker_init if workers > 0 else None,
        prefetch_factor=4 if workers > 0 else None,
        generator=torch.Generator().manual_seed(s.seed),
        **kwargs,
    )


def study_batches(frame: pd.DataFrame) -> list[np.ndarray]:
    """Row positions of each study of `frame`, in z order: one batch per study."""
    zs = frame["z"].to_numpy()
    batches = []
    for (_, study), rows in frame.groupby(["store", "study_id"], sort=False).indices.items():
        order = rows[np.argsort(zs[rows], kind="stable")]
        if not np.array_equal(zs[order], np.arange(len(order))):
            raise ValueError(f"study {study}: slices z are not 0..{len(order) - 1}")
        batches.append(order)
    return batches


def prediction_loader(
    frame: pd.DataFrame, targets: np.ndarray | None, s: Stage1Settings, device: str
) -> DataLoader:
    """Loader that predicts every row of `frame`: batches of k-slice windows, or, for a multiplexed
    thickened model, whole studies of single slices (`ThickSliceClassifier.predict_study` shares
    each slice's stem between the k windows that hold it)."""
    if s.multiplex and s.thickness > 1:
        dataset = SliceDataset(frame, targets, s.image_size)
        return make_loader(dataset, s, device, batch_sampler=study_batches(frame))
    dataset = SliceDataset(frame, targets, s.image_size, thickness=s.thickness)
    return make_loader(dataset, s, device, batch_size=s.eval_batch_size, shuffle=False)


def iter_predictions(
    model: SliceClassifier,
    loader: DataLoader,
    device: str,
    amp_dtype: torch.dtype | None,
    tta_flip: bool,
) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
    """Yield `(rows, logits, embeddings)` per batch, on the CPU, in float32.

    With `tta_flip` the horizontally flipped slice is run too and both outputs are averaged (the
    head is linear, so averaged logits are the head of the averaged embedding). A multiplexed
    thickened model reads one whole study per batch (`prediction_loader`).
    """
    model.eval()
    cuda = device.startswith("cuda")
    forward = model.predict_study if getattr(model, "multiplex", False) else model
    with torch.inference_mode():
        for images, _, rows in loader:
            images = images.to(device, non_blocking=True)
            if cuda:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type="cuda" if cuda else "cpu", dtype=amp_dtype,
                                enabled=amp_dtype is not None):  # fmt: skip
                logits, embedding = forward(images)
                if tta_flip:
                    flip_logits, flip_embedding = forward(torch.flip(images, dims=[-1]))
                    logits, embedding = (logits + flip_logits) / 2, (embedding + flip_embedding) / 2
            yield rows.numpy(), logits.float().cpu(), embedding.float().cpu()


def train_stage1(
    index: pd.DataFrame,
    fold: int,
    settings: dict[str, Any] | Stage1Settings,
    out_dir: str | os.PathLike[str],
    device: str = "cpu",
    on_step: Callable[[int], None] | None = None,
    ranks: Ranks = SINGLE,
) -> TrainResult:
    """Train (or resume training) on fold `fold`; writes `last.pt`, `best.pt`, `metrics.csv`,
    `learning_curve.png` and `settings.json` under `out_dir`.

    `on_step(global_step)` is called after each optimisation step (and after any checkpoint it
    triggered); raising from it simulates a killed job. With `ranks` of a DDP process group, this
    process trains its share of each global batch (`ct25d.training.distributed`) and rank 0 writes.
    """
    s = settings if isinstance(settings, Stage1Settings) else Stage1Settings.from_dict(settings)
    if s.batch_size < ranks.world:
        raise ConfigError(f"stage1.batch_size: {s.batch_size} is smaller than the {ranks.world} processes")
    with deterministic_kernels(s.deterministic):
        return _train(index, fold, s, Path(out_dir), device, on_step, ranks)


def _train(
    index: pd.DataFrame,
    fold: int,
    s: Stage1Settings,
    out: Path,
    device: str,
    on_step: Callable[[int], None] | None,
    ranks: Ranks,
) -> TrainResult:
    out.mkdir(parents=True, exist_ok=True)
    last_path, best_path = out / "last.pt", out / "best.pt"
    # The best weights so far live beside last.pt, outside the rule's declared outputs: Snakemake
    # deletes the outputs of a killed job, and a resumed run must still deliver the best epoch.
    best_so_far = out / "best-so-far.pt"
    cuda = device.startswith("cuda")
    meta = {
        **stamp("train-slices", s.learning_settings()),
        "fold": fold,
        "processes": ranks.world,
        "numerics": numerics(),
    }
    if ranks.main:
        write_json(out / "settings.json", meta)

    train, val = split_fold(index.reset_index(drop=True), fold)
    task = Task(s, train)
    if s.monitor not in task.metric_names:
        raise ConfigError(f"stage1.monitor: {s.monitor!r} is not one of {sorted(task.metric_names)}")
    train_targets = task.targets(train)
    seed_everything(s.seed)
    model = build_model(s, task.num_outputs)
    if ranks.world > 1:
        model = sync_batch_norm(model, device)
        torch.manual_seed(derive_seed(s.seed, ranks.rank, 0xDD9))  # a dropout stream per rank
    model = model.to(device)
    if cuda and s.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    weights = balancing_weights(task.sampling_classes(train_targets)) if s.balanced_sampling else None
    sampler = EpochBatchSampler(len(train), s.batch_size, s.seed, weights, s.samples_per_epoch,
                                min_last=max(2, ranks.world))  # fmt: skip
    steps_per_epoch = len(sampler)
    scheduler = make_scheduler(s, optimizer, s.epochs * steps_per_epoch)
    amp_dtype = torch.bfloat16 if cuda and s.amp else None
    # bf16 needs no loss scaling; the scaler is kept (disabled) so fp16 is a one-line change.
    scaler = torch.amp.GradScaler("cuda", enabled=False)

    state: dict[str, Any] = {"epoch": 0, "step": 0, "global_step": 0, "history": [], "best": None,
                             "loss_sum": 0.0, "count": 0}  # fmt: skip
    data_key = fingerprint(train, val)
    payload = load_checkpoint(last_path) if last_path.exists() else None
    stale = payload and _not_resumable(payload, s, fold, data_key)
    if stale:
        log.warning("not resuming from %s (%s): training from scratch", last_path, stale)
    elif payload:
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        scaler.load_state_dict(payload["scaler"])
        set_rng_state(_rank_rng(payload["rng"], ranks), device)
        state = payload["state"]
        log.info("resuming from %s at epoch %d step %d", last_path, state["epoch"], state["step"])

    def checkpoint() -> None:
        states = ranks.gather(rng_state(device))  # every rank's dropout stream, so each resumes its own
        if ranks.main:
            save_checkpoint(last_path, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "rng": states[0] if ranks.world == 1 else states,
                "state": state, "settings": s.learning_settings(), "fold": fold, "meta": meta,
                "num_classes": task.num_outputs, "class_names": task.names, "data_key": data_key,
            })  # fmt: skip

    augment = Augment.from_settings(s.augment)
    if s.augment_on not in AUGMENT_ON:
        raise ConfigError(f"stage1.augment_on: expected one of {AUGMENT_ON}, got {s.augment_on!r}")
    on_device = augment is not None and (s.augment_on == "device" or (s.augment_on == "auto" and cuda))
    train_set = SliceDataset(train, train_targets, s.image_size, None if on_device else augment, s.seed,
                             thickness=s.thickness, normalize=not on_device)  # fmt: skip
    batches = sampler if ranks.world == 1 else RankBatchSampler(sampler, ranks)
    train_loader = make_loader(train_set, s, device, batch_sampler=batches)
    validation = Validation(val, task, s, device, ranks)

    trained = model
    if ranks.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # Batch-norm buffers follow the global statistics on every rank: nothing to broadcast.
        trained = DistributedDataParallel(model, [device] if cuda else None, forward_sync_buffers=False)
    # Compiled for the training steps only: `model` keeps its parameter names for the checkpoints.
    forward = torch.compile(trained) if s.compile else trained
    while state["epoch"] < s.epochs:
        epoch = state["epoch"]
        batches.start(epoch, state["step"])
        model.train()
        started, seen = time.perf_counter(), 0
        bar = tqdm(train_loader, total=steps_per_epoch, initial=state["step"], desc=f"epoch {epoch}",
                   disable=None if ranks.main else True, leave=False)  # fmt: skip
        for images, targets, rows in bar:
            images = images.to(device, non_blocking=True)
            if on_device:  # the loader's own draws for these rows, applied to the whole batch here
                images = train_set.normalize(augment.batch(images, Augment.draws(s.seed, epoch, rows)))
            if cuda and s.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            targets = targets.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device_type="cuda" if cuda else "cpu", dtype=amp_dtype,
                                enabled=amp_dtype is not None):  # fmt: skip
                logits, _ = forward(images)
            total, weight = task.loss_terms(logits, targets)
            # Global (loss sum, weight, slices): DDP averages gradients over ranks, hence `* world`.
            sums = ranks.total(torch.stack([total.detach(), weight.detach(), weight.new_tensor(len(images))]))
            loss = total / sums[1].clamp_min(1e-12) * ranks.world
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            batch = int(sums[2])
            state["loss_sum"] += float(sums[0] / sums[1].clamp_min(1e-12)) * batch
            state["count"] += batch
            state["step"] += 1
            state["global_step"] += 1
            seen += batch
            bar.set_postfix(loss=f"{state['loss_sum'] / state['count']:.4f}")
            if s.checkpoint_every_steps and state["global_step"] % s.checkpoint_every_steps == 0:
                checkpoint()
            if on_step is not None:
                on_step(state["global_step"])
        elapsed = time.perf_counter() - started
        log.info("epoch %d: %d slices at %.1f slices/s", epoch, seen, seen / max(elapsed, 1e-9))

        row = {
            "epoch": epoch,
            "train_loss": state["loss_sum"] / max(state["count"], 1),
            "lr": scheduler.get_last_lr()[0],
            **validation.run(model, amp_dtype),
        }
        state["history"].append(row)
        state.update(epoch=epoch + 1, step=0, loss_sum=0.0, count=0)
        if improved(row[s.monitor], state["best"], s.monitor):
            state["best"] = row[s.monitor]
            if ranks.main:
                save_checkpoint(best_so_far, {
                    "model": model.state_dict(), "epoch": epoch, "settings": s.to_dict(), "fold": fold,
                    "meta": meta, "metrics": row, "num_classes": task.num_outputs,
                    "class_names": task.names,
                })  # fmt: skip
        checkpoint()
        if ranks.main:
            write_history(out, state["history"], s.monitor, "Stage 1")
        log.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in row.items()})

    if ranks.main:
        write_history(out, state["history"], s.monitor, "Stage 1")
        with atomic_path(best_path) as tmp:
            shutil.copyfile(best_so_far, tmp)
    ranks.barrier()  # every rank returns once best.pt exists
    return TrainResult(best=best_path, last=last_path, history=state["history"])


def _rank_rng(saved: dict[str, Any] | list[dict[str, Any]], ranks: Ranks) -> dict[str, Any]:
    """This rank's RNG snapshot from `last.pt` (one per rank when written by several)."""
    states = saved if isinstance(saved, list) else [saved]
    if len(states) != ranks.world:
        log.warning("last.pt was written by %d processes, resumed by %d: dropout draws differ from an "
                    "uninterrupted run", len(states), ranks.world)  # fmt: skip
    return states[ranks.rank % len(states)]


def fingerprint(*frames: pd.DataFrame) -> str:
    """Hash of the slices (and their labels) a run trains and validates on."""
    digest = hashlib.sha256()
    for frame in frames:
        digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]


def _not_resumable(payload: dict[str, Any], s: Stage1Settings, fold: int, data_key: str) -> str:
    """Why `last.pt` must not be resumed ("" if it may). Only an interrupted run of the same
    settings on the same data resumes: Snakemake reruns a finished job only to redo it."""
    if payload["settings"] != s.learning_settings() or payload["fold"] != fold:
        return "written with other settings or fold"
    if payload.get("data_key") != data_key:
        return "written for other training data"
    if payload["state"]["epoch"] >= s.epochs:
        return "that run finished"
    return ""


class Validation:
    """Slice-level validation loss and metrics (no augmentation, eval mode) on the inner split.

    Each rank predicts the slices of its share of the studies; the logits are gathered in the
    split's row order, so every rank computes the single process's metrics.
    """

    def __init__(self, val: pd.DataFrame, task: Task, s: Stage1Settings, device: str, ranks: Ranks) -> None:
        self.task, self.device, self.ranks = task, device, ranks
        self.targets = task.targets(val)
        studies = val["study_id"].unique()
        self.positions = np.flatnonzero(val["study_id"].isin(studies[ranks.share(len(studies))]).to_numpy())
        part = val.iloc[self.positions].reset_index(drop=True)
        self.loader = prediction_loader(part, self.targets[self.positions], s, device) if len(part) else None

    @torch.no_grad()
    def run(self, model: SliceClassifier, amp_dtype: torch.dtype | None) -> dict[str, float]:
        model.eval()
        positions, logits = [np.zeros(0, dtype=np.int64)], [np.zeros((0, self.task.num_outputs), np.float32)]
        if self.loader is not None:
            for rows, batch_logits, _ in iter_predictions(model, self.loader, self.device, amp_dtype,
                                                          tta_flip=False):  # fmt: skip
                positions.append(self.positions[rows])
                logits.append(batch_logits.numpy())
        model.train()
        shares = self.ranks.gather((np.concatenate(positions), np.concatenate(logits)))
        order = np.concatenate([p for p, _ in shares])
        all_logits = np.concatenate([x for _, x in shares])[np.argsort(order, kind="stable")]
        all_targets = self.targets[np.sort(order)]
        loss = float(self.task.loss(torch.from_numpy(all_logits), torch.from_numpy(all_targets)))
        return {"val_loss": loss, **self.task.metrics(all_logits, all_targets)}
