"""Stage 2: train a sequence model over frozen Stage-1 embeddings of whole studies.

Slice-level loss on every valid slice; a study's prediction is the max over its slices (the main
seed's rule). The model is selected on the fold's held-out patients; external datasets are only
predicted. Studies are streamed from the embedding store, a batch at a time.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ct25d.datasets.sequences import StudySequences, pad_batch
from ct25d.datasets.splits import held_out_features, splits_by_study
from ct25d.errors import ConfigError
from ct25d.evaluation.predictions import metric_table, prediction_frame, write_outputs
from ct25d.labels import RSNA_LABELS
from ct25d.models.stage2 import STAGE2, masked_slice_loss, volume_logits
from ct25d.provenance import stamp
from ct25d.training.checkpoint import load_checkpoint, save_checkpoint
from ct25d.training.history import improved, patience_spent, write_history
from ct25d.training.schedule import make_schedule
from ct25d.training.seed import derived_generator, numerics, seed_everything

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage2Settings:
    """Config block `stage2` minus the model table (defaults = the CPU demo)."""

    section: ClassVar[str] = "stage2"  # the config block named in errors
    labels: tuple[str, ...] = RSNA_LABELS
    class_weights: tuple[float, ...] | None = None  # None: RSNA weights (any = 2)
    epochs: int = 30
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    scheduler: str = "cosine"  # cosine (linear warm-up, then cosine decay over `epochs`) | constant
    warmup_fraction: float = 0.05
    patience: int | None = None  # stop after this many epochs without a better `monitor` (None: never)
    monitor: str = "val_loss"
    threshold: float = 0.5
    seed: int = 0
    device: str = "auto"
    # in_fold: learn from the embeddings of Stage 1's own training studies (select on the inner split);
    # held_out: learn only from studies Stage 1 never trained on (half the inner split; select on the other)
    train_features: str = "in_fold"

    @classmethod
    def from_dict(cls, settings: dict[str, Any]) -> Self:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ConfigError(f"unknown {cls.section} setting(s) {unknown}; known: {sorted(known)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()}
        return cls(**values)

    @property
    def weights(self) -> torch.Tensor:
        weights = self.class_weights or tuple(2.0 if n == "any" else 1.0 for n in self.labels)
        if len(weights) != len(self.labels):
            raise ConfigError(
                f"{self.section}.class_weights: {len(weights)} weights for {len(self.labels)} labels"
            )
        return torch.tensor(weights, dtype=torch.float32)


def _loader(
    data: StudySequences, subset: np.ndarray, s: Stage2Settings, shuffle: bool, epoch: int
) -> DataLoader:
    sampler = (
        torch.utils.data.SubsetRandomSampler(subset, generator=derived_generator(s.seed, epoch))
        if shuffle
        else subset
    )
    return DataLoader(data, batch_size=s.batch_size, sampler=sampler, collate_fn=pad_batch)


def _run(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], device: str
) -> tuple[torch.Tensor, torch.Tensor]:
    x, mask = batch["x"].to(device), batch["mask"].to(device)
    return model(x, mask), mask


def _loss(
    logits: torch.Tensor, batch: dict[str, torch.Tensor], mask: torch.Tensor, s: Stage2Settings
) -> torch.Tensor:
    y = batch["y"].to(logits.device)
    known = mask & ~torch.isnan(y).any(-1)  # slices without labels never enter the loss
    return masked_slice_loss(logits, torch.nan_to_num(y), known, class_weights=s.weights)


@torch.no_grad()
def predict(model: torch.nn.Module, data: StudySequences, subset: np.ndarray, s: Stage2Settings,
            device: str) -> tuple[np.ndarray, np.ndarray, float]:  # fmt: skip
    """(slice probabilities in `data.rows` order with NaN elsewhere, study probabilities, loss)."""
    model.eval()
    slice_prob = np.full((len(data.rows), len(s.labels)), np.nan, dtype=np.float32)
    study_prob = np.full((len(data), len(s.labels)), np.nan, dtype=np.float32)
    total, count = 0.0, 0
    for batch in _loader(data, subset, s, shuffle=False, epoch=0):
        logits, mask = _run(model, batch, device)
        if not torch.isnan(batch["y"]).all():
            known = int((mask & ~torch.isnan(batch["y"].to(device)).any(-1)).sum())
            if known:
                total += float(_loss(logits, batch, mask, s)) * known
                count += known
        probs = torch.sigmoid(logits).cpu().numpy()
        study_prob[batch["index"].numpy()] = torch.sigmoid(volume_logits(logits, mask)).cpu().numpy()
        for b, i in enumerate(batch["index"].tolist()):
            rows = data.rows_of(i)
            slice_prob[rows] = probs[b, : rows.stop - rows.start]
    model.train()
    return slice_prob, study_prob, total / count if count else float("nan")


def prediction_frames(data: StudySequences, split: np.ndarray, slice_prob: np.ndarray, study_prob: np.ndarray,
                      labels: tuple[str, ...]) -> tuple[pd.DataFrame, pd.DataFrame]:  # fmt: skip
    """(study predictions with their split, slice predictions) in the shared artifact format."""
    keys = data.spans[["dataset", "study_id"]].assign(split=split, n_slices=data.spans["length"])
    studies = prediction_frame(keys, study_prob, data.study_targets, labels)
    slices = prediction_frame(data.rows[["dataset", "study_id", "z", "slice_id"]], slice_prob,
                              data.slice_targets, labels)  # fmt: skip
    return studies, slices


def validate(model: torch.nn.Module, data: StudySequences, split: np.ndarray, val_idx: np.ndarray,
             s: Stage2Settings, device: str) -> dict[str, float]:  # fmt: skip
    """Inner-split loss and volume-level F1/AUC, for model selection."""
    slice_prob, study_prob, loss = predict(model, data, val_idx, s, device)
    table = metric_table(*prediction_frames(data, split, slice_prob, study_prob, s.labels), s.labels, "model",
                         s.threshold)  # fmt: skip
    volume = table[(table["split"] == "inner") & (table["level"] == "volume")]
    any_row = volume[volume["label"] == "any"]
    return {
        "val_loss": loss,
        "val_f1_any": float(any_row["f1"].iloc[0]) if len(any_row) else float("nan"),
        "val_auc_any": float(any_row["auc"].iloc[0]) if len(any_row) else float("nan"),
        "val_auc_mean": float(volume["auc"].mean()),
    }


def train_stage2(
    embeddings_dir: str | os.PathLike[str],
    studies: pd.DataFrame,
    fold: int,
    model_config: dict[str, Any],
    settings: dict[str, Any] | Stage2Settings,
    out_dir: str | os.PathLike[str],
    device: str = "cpu",
) -> dict[str, Any]:
    """Train, select on the fold's inner split, predict every study; returns the metrics summary."""
    s = settings if isinstance(settings, Stage2Settings) else Stage2Settings.from_dict(settings)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        **stamp("train-sequence", {"model": model_config, **dataclasses.asdict(s)}),
        "fold": fold,
        "numerics": numerics(),
    }
    rows = pd.read_parquet(Path(embeddings_dir) / "rows.parquet")
    data = StudySequences(embeddings_dir, rows, studies, s.labels)
    keyed = studies.set_index(["dataset", "study_id"])
    split = splits_by_study(studies, fold).reindex(
        pd.MultiIndex.from_frame(data.spans[["dataset", "study_id"]])
    )
    split = split.to_numpy()
    if s.train_features == "held_out":
        split = held_out_features(
            split, keyed["patient_id"].reindex(data.spans.set_index(["dataset", "study_id"]).index).to_numpy()
        )
    elif s.train_features != "in_fold":
        raise ConfigError(f"stage2.train_features: expected in_fold or held_out, got {s.train_features!r}")
    train_idx, val_idx = np.flatnonzero(split == "train"), np.flatnonzero(split == "inner")
    if not len(train_idx) or not len(val_idx):
        raise ConfigError(
            f"fold {fold}: {len(train_idx)} training and {len(val_idx)} inner-validation studies"
        )

    seed_everything(s.seed)
    in_dim = int(data[0][0].shape[1])
    model = STAGE2.from_config(model_config, in_dim=in_dim, num_classes=len(s.labels)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    steps = s.epochs * math.ceil(len(train_idx) / s.batch_size)
    schedule = make_schedule(s.scheduler, optimizer, steps, s.warmup_fraction, s.section)
    history: list[dict[str, float]] = []
    best: float | None = None
    for epoch in range(s.epochs):
        if patience_spent(history, s.monitor, s.patience):
            log.info("no better %s for %d epochs: stopping at epoch %d", s.monitor, s.patience, epoch)
            break
        total, count = 0.0, 0
        for batch in tqdm(
            _loader(data, train_idx, s, True, epoch), desc=f"epoch {epoch}", leave=False, disable=None
        ):
            logits, mask = _run(model, batch, device)
            loss = _loss(logits, batch, mask, s)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total, count = total + float(loss.detach()) * len(batch["x"]), count + len(batch["x"])
        row = {
            "epoch": epoch,
            "train_loss": total / count,
            **validate(model, data, split, val_idx, s, device),
        }
        history.append(row)
        if improved(row[s.monitor], best, s.monitor):
            best = row[s.monitor]
            weights = {"model": model.state_dict(), "epoch": epoch, "config": model_config, "in_dim": in_dim}
            save_checkpoint(out / "best.pt", {**weights, "meta": meta, "metrics": row})
    write_history(out, history, s.monitor, f"Stage 2 ({model_config['name']})")

    best_payload = load_checkpoint(out / "best.pt")
    model.load_state_dict(best_payload["model"])
    everything = np.arange(len(data))
    slice_prob, study_prob, _ = predict(model, data, everything, s, device)
    studies_out, slices_out = prediction_frames(data, split, slice_prob, study_prob, s.labels)
    best_epoch = int(best_payload["epoch"])
    summary = write_outputs(out, studies_out, slices_out, s.labels, model_config["name"], fold, meta,
                            s.threshold, {"best_epoch": best_epoch})  # fmt: skip
    return summary
