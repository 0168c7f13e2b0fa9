"""`ct25d export`: one folder per chosen approach in the MONAI bundle layout, holding all that
predicting needs and nothing of the training data:

    configs/metadata.json   versions, inputs and outputs, labels, per fold the temperatures and
                            thresholds, the training data summary, the comparison's metrics
    configs/inference.json  the preprocessing settings, the archive form and the networks per fold
    models/fold<k>/*.ts     TorchScript: the Stage-1 encoder and the Stage-2 model (or the 3D net)
    docs/README.md          the model card

The networks are traced, not scripted: the Stage-2 models validate their inputs in Python
(`check_inputs`), which TorchScript's compiler rejects; a trace records the tensor program. A trace
can silently freeze a shape, so each is checked against the eager network on inputs of other sizes
and the export stops where they differ.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ct25d.atomic import atomic_path, write_json
from ct25d.bundle.layout import CARD, INFERENCE, METADATA, choice_record, network_path
from ct25d.errors import Ct25dError
from ct25d.predict.ensemble import Chosen
from ct25d.provenance import stamp, versions
from ct25d.report.compare import Run, inner_choices
from ct25d.training.checkpoint import load_checkpoint

log = logging.getLogger(__name__)
TOLERANCE = 1e-5  # largest difference a traced network may show against the eager one
# Keys of config `ingest` and `preprocess` that preprocessing reads (what the workflow's rules pass).
INGEST_KEYS = (
    "preferred_thickness_mm", "exclude_series", "accept_series", "spacing_tolerance", "max_tilt_deg",
    "tilt", "min_label_match", "chunk_slices", "compressor", "compression_level",
)  # fmt: skip
PREPROCESS_KEYS = (
    "in_plane_mm", "slice_mm", "interpolator", "crop", "threshold_hu", "opening_mm", "margin_mm", "size",
    "windows",
)  # fmt: skip


def _checked_trace(
    model: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    others: list[tuple[torch.Tensor, ...]],
    what: str,
) -> torch.jit.ScriptModule:
    """`torch.jit.trace` of `model` (eval mode), refused where it differs from the eager model on `others`."""
    model = model.eval()
    with torch.no_grad():
        traced = torch.jit.trace(model, example, check_trace=False)
        for inputs in others:
            eager, script = model(*inputs), traced(*inputs)
            eager = eager if isinstance(eager, tuple) else (eager,)
            script = script if isinstance(script, tuple) else (script,)
            gap = max(float((a - b).abs().max()) for a, b in zip(eager, script, strict=True))
            if not gap <= TOLERANCE:
                shape = tuple(inputs[0].shape)
                raise Ct25dError(
                    f"{what}: its TorchScript trace differs from the network by {gap:.2g} on input {shape}; "
                    "this model cannot be bundled"
                )
    return traced


def _stage1(checkpoint: Path) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """The traced Stage-1 network (`images -> (logits, embedding)`) and its settings."""
    from ct25d.training.stage1 import Stage1Settings, build_model

    payload = load_checkpoint(checkpoint)
    s = Stage1Settings.from_dict(payload["settings"])
    model = build_model(s, payload["num_classes"], pretrained=False)
    model.load_state_dict(payload["model"])
    size = s.image_size
    generator = torch.Generator().manual_seed(0)
    images = [torch.randn(n, 3 * s.thickness, size, size, generator=generator) for n in (2, 5)]
    traced = _checked_trace(model, (images[0],), [(images[1],)], f"{checkpoint} (Stage 1)")
    return traced, {
        "settings": payload["settings"], "width": int(model.num_features),
        "num_classes": int(payload["num_classes"]), "class_names": list(payload["class_names"]),
    }  # fmt: skip


def _stage2(checkpoint: Path) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """The traced Stage-2 model (one study: `(x (1, L, D), mask (1, L)) -> logits (1, L, C)`) and its
    settings; checked at several study lengths."""
    from ct25d.models.stage2.base import STAGE2

    payload = load_checkpoint(checkpoint)
    settings = {k: v for k, v in payload["meta"]["settings"].items() if k != "model"}
    in_dim = int(payload["in_dim"])
    model = STAGE2.from_config(payload["config"], in_dim=in_dim, num_classes=len(settings["labels"]))
    model.load_state_dict(payload["model"])
    generator = torch.Generator().manual_seed(0)

    def study(length: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(1, length, in_dim, generator=generator), torch.ones(1, length, dtype=torch.bool)

    traced = _checked_trace(model, study(12), [study(n) for n in (1, 5, 31, 80)], f"{checkpoint} (Stage 2)")
    return traced, {"settings": settings, "config": payload["config"], "in_dim": in_dim}


def _kind(approach: str, runs: list[Run]) -> str:
    """`stage2` (a Stage-1 encoder and a sequence model per fold) or `volume` (a 3D network per fold):
    what a bundle can hold; other families stop the export with their name."""
    if all(r.stage == "stage2" for r in runs):
        return "stage2"
    if all(r.stage == "baseline" and "volume_shape" in r.extra for r in runs):
        return "volume"
    raise Ct25dError(
        f"export: {approach!r} reads neither slice sequences (Stage 2) nor volumes (3D); bundles hold those "
        "two families so far (the Stage-1 head, 2.5CNN and thickened 2D are not bundled)"
    )


def _stage2_networks(run: Run) -> dict[str, tuple[torch.jit.ScriptModule, dict[str, Any]]]:
    """A Stage-2 run's two networks: the Stage-1 encoder its embeddings came from (the checkpoint
    the embeddings record) and the sequence model."""
    embedded = run.embedded()
    stage1, stage1_meta = _stage1(Path(embedded["checkpoint"]))
    return {
        "stage1": (stage1, {**stage1_meta, "tta_flip": bool(embedded["tta_flip"])}),
        "stage2": _stage2(run.folder / "best.pt"),
    }


def _volume(run: Run) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """A 3D run's traced network (`volume (B, C, D, S, S) -> logits`, per study or per slice position)
    at the shape it trained on, and its settings."""
    from ct25d.evaluation.saliency import load_model

    checkpoint = run.folder / "best.pt"
    shape = [int(n) for n in run.extra["volume_shape"]]
    payload = load_checkpoint(checkpoint)
    model = load_model(checkpoint, in_channels=shape[0]).model
    generator = torch.Generator().manual_seed(0)
    volumes = [torch.randn(n, *shape, generator=generator) for n in (1, 2)]
    traced = _checked_trace(model, (volumes[0],), [(volumes[1],)], f"{checkpoint} (3D)")
    settings = {k: v for k, v in payload["meta"]["settings"].items() if k != "model"}
    return traced, {"settings": settings, "supervision": payload["config"].get("supervision", "study"),
                    "volume_shape": shape}  # fmt: skip


def _training_summary(run: Run, labels: list[str]) -> dict[str, Any]:
    """Per split of one fold's studies (train, inner, validation, external): studies and positives."""
    studies = run.studies
    out: dict[str, Any] = {}
    for (split, dataset), part in studies.groupby(["split", "dataset"]):
        if split == "predict":
            continue
        out.setdefault(str(split), {})[str(dataset)] = {
            "studies": len(part),
            **{f"positive_{n}": int((part[n] == 1).sum()) for n in labels if n in part},
        }
    return out


def _metrics(comparison: dict[str, Any] | None, approach: str) -> list[dict[str, Any]]:
    """The comparison's rows of `approach`: metric, set, value and its interval."""
    if comparison is None:
        return []
    return [r for r in comparison.get("intervals", []) if r["approach"] == approach]


def export_approach(
    out: Path, chosen: Chosen, runs: list[Run], settings: dict[str, Any], comparison: dict[str, Any] | None,
    labels: list[str], min_positives: int,
) -> dict[str, Any]:  # fmt: skip
    """One approach's bundle in `out` (created); returns its metadata."""
    mine = sorted((r for r in runs if r.approach == chosen.approach), key=lambda r: r.fold)
    if not mine:
        raise Ct25dError(f"export: no run of {chosen.approach!r}")
    kind = _kind(chosen.approach, mine)
    folds = []
    for run in mine:
        networks = _stage2_networks(run) if kind == "stage2" else {"volume": _volume(run)}
        records = {}
        for part, (module, meta) in networks.items():
            path = out / network_path(run.fold, part)
            path.parent.mkdir(parents=True, exist_ok=True)
            module.save(str(path))
            records[part] = {"file": str(network_path(run.fold, part)), **meta}
        present = [n for n in labels if n in run.studies]
        choices = inner_choices(run.studies, present, min_positives)
        folds.append({
            "fold": run.fold,
            **records,
            "choices": {name: choice_record(c) for name, c in choices.items()},
            "training_data": _training_summary(run, present),
        })  # fmt: skip
    size = int(settings["preprocess"]["size"])
    inference = {
        "kind": kind,
        "approach": chosen.approach,
        "labels": labels,
        "archive": settings.get("archive") or {"layout": "dicom_tree"},
        "ingest": {k: settings["ingest"][k] for k in INGEST_KEYS},
        "preprocess": {k: settings["preprocess"][k] for k in PREPROCESS_KEYS},
        "volume": settings.get("volume"),
        "top_slices": int(settings.get("top_slices", 4)),
        "folds": folds,
    }
    windows = settings["preprocess"]["windows"]
    metadata = {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json",
        "version": "0.1.0",
        "changelog": {"0.1.0": "exported by ct25d from a workflow run"},
        **_versions(),
        "name": chosen.folder,
        "task": "intracranial hemorrhage classification of head CT, per study and per slice",
        "description": f"{chosen.approach}: {len(folds)} fold models combined by the mean of their "
        f"calibrated logits (chosen as: {chosen.why}). Research use only; not a medical device.",
        "authors": "ct25d workflow run",
        "copyright": "the owner of the training data and of this run",
        "data_type": "dicom",
        "image_classes": f"head CT in Hounsfield units, resampled and windowed into 3 channels "
        f"({', '.join(w['name'] for w in windows)}), {size} x {size} px slices"
        + (" stacked into volumes" if kind == "volume" else ""),
        "label_classes": ", ".join(labels),
        "pred_classes": f"per label a calibrated probability per study and per slice ({', '.join(labels)})",
        "intended_use": "research: rank and triage head CT for review; every call needs a radiologist",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": "CT",
                    "num_channels": 3,
                    "spatial_shape": [size, size],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": False,
                    "channel_def": {
                        str(i): f"{w['name']} window {w['center']}/{w['width']} HU"
                        for i, w in enumerate(windows)
                    },
                }
            },
            "outputs": {
                "pred": {
                    "type": "probabilities",
                    "format": "classes",
                    "num_channels": len(labels),
                    "spatial_shape": [1],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": False,
                    "channel_def": {str(i): n for i, n in enumerate(labels)},
                }
            },
        },
        "ct25d": {
            "approach": chosen.approach,
            "why": chosen.why,
            "labels": labels,
            "folds": [{k: f[k] for k in ("fold", "choices", "training_data")} for f in folds],
            "metrics": _metrics(comparison, chosen.approach),
            "provenance": stamp("export", {"runs": [str(r.folder) for r in mine]}),
        },
    }
    write_json(out / METADATA, metadata)
    write_json(out / INFERENCE, inference)
    (out / CARD).parent.mkdir(parents=True, exist_ok=True)
    (out / CARD).write_text(model_card(metadata, inference))
    log.info("%s: bundle of %d folds in %s", chosen.approach, len(folds), out)
    return metadata


def _versions() -> dict[str, Any]:
    """The versions MONAI's metadata names, from the provenance record every artifact carries."""
    found = versions()
    return {
        "monai_version": found.get("monai", "unknown"),
        "pytorch_version": found.get("torch", torch.__version__),
        "numpy_version": found.get("numpy", np.__version__),
        "required_packages_version": {k: v for k, v in found.items() if k not in ("monai", "torch", "numpy")},
    }


def model_card(metadata: dict[str, Any], inference: dict[str, Any]) -> str:
    """docs/README.md: what the model is, how it was chosen and scored, how to run it, its limits."""
    info = metadata["ct25d"]
    rows = pd.DataFrame(info["metrics"])
    table = "(no comparison scores recorded)"
    if len(rows):
        rows = rows[rows["metric"].isin(["auc", "f1", "sensitivity", "specificity", "brier"])]

        def cell(r: pd.Series) -> str:
            if r["value"] is None or pd.isna(r["value"]):
                return r.get("note") or "n/a"
            return f"{r['value']:.3f} [{r['low']:.3f}, {r['high']:.3f}]"

        rows = rows.assign(cell=rows.apply(cell, axis=1))
        wide = rows.pivot_table(index="metric", columns="set", values="cell", aggfunc="first")
        table = wide.to_markdown()

    def choices(f: dict[str, Any]) -> str:
        parts = []
        for name, c in f["choices"].items():
            flag = f" ({c['temperature_flag']})" if c["temperature_flag"] else ""
            parts.append(f"{name}: T {c['temperature']:.3g}{flag}, threshold {c['threshold_f1']:.3g}")
        return "; ".join(parts)

    folds = "\n".join(f"| {f['fold']} | {choices(f)} |" for f in info["folds"])
    return f"""# {metadata["name"]}: {info["approach"]}

{metadata["description"]}

## Use
```
ct25d predict-bundle {metadata["name"]} DICOM_DIR OUT
```
reads every study under `DICOM_DIR` (archive form `{inference["archive"].get("layout")}`; `--layout`
changes it), converts, resamples and windows it as the training run did, and writes `OUT/studies.csv`
(per study each label's probability and the call at the inner-split threshold), `OUT/slices.parquet`
(per slice) and one PNG per study. Needs only the `ct25d` package; no training data travels with it.

## Inputs and outputs
- input: {metadata["image_classes"]}
- output: {metadata["pred_classes"]}
- labels: {metadata["label_classes"]}

## How it was chosen and scored
Each fold model's temperature and thresholds were fitted on its own inner split; the scores below
come from the outer folds (internal, out of fold) and external sets the run never trained or chose on
(value [95% interval], patient bootstrap):

{table}

| fold | inner-split choices (raw logit scale) |
|---|---|
{folds}

## Limits
{metadata["intended_use"]}. Scores hold for archives like the training and external sets; a new
scanner, protocol or population needs its own check before any use.

## Versions
torch {metadata["pytorch_version"]}, MONAI {metadata["monai_version"]}, numpy {metadata["numpy_version"]}.
"""


def export_bundles(
    out_dir: str | Path, runs: list[Run], chosen: list[Chosen], settings: dict[str, Any],
    comparison: dict[str, Any] | None, labels: list[str], min_positives: int,
) -> list[dict[str, Any]]:  # fmt: skip
    """Every chosen approach's bundle under `out_dir` (replaced as a whole: a killed job leaves the old)."""
    exported = []
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for one in chosen:
            exported.append(export_approach(tmp / one.folder, one, runs, settings, comparison, labels,
                                            min_positives))  # fmt: skip
    return exported
