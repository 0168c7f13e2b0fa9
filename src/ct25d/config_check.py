"""Checks of the workflow config that the JSON schema cannot express, run when the DAG is built.

The schema checks types and enums; these check what needs the libraries or the file system: timm
backbone names, Stage-2 model names and keyword arguments (by building each model once, small),
the Stage-1 monitor against the task's metrics, regular expressions, and the real archives' roots,
label files (with the columns their layout needs) and override files. A wrong value would otherwise
pass validation and fail only when its job starts, after all preprocessing, as a raw traceback.
Every problem is listed at once, each naming its key.
"""

from __future__ import annotations

import hashlib
import json
import re
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from ct25d.errors import ConfigError
from ct25d.labels import CQ500_COLUMNS, RSNA_COLUMNS, RSNA_LABELS

LABEL_COLUMNS = {
    "rsna": (RSNA_COLUMNS, "ID,Label"),
    "cq500": (CQ500_COLUMNS, "name and R1..R3 reads"),
    "dicom_tree": (("study",), "study plus label columns"),
}


def _regex(value: str, key: str, problems: list[str], group: bool = False) -> None:
    try:
        pattern = re.compile(value)
    except re.error as exc:
        problems.append(f"{key}: not a valid regular expression ({exc})")
        return
    if group and not pattern.groups:
        problems.append(f"{key}: {value!r} needs a group (e.g. (?P<study>...)) that captures the study key")


def _label_file(name: str, entry: dict[str, Any], problems: list[str]) -> None:
    path = Path(entry["labels"])
    if not path.is_file():
        problems.append(f"datasets.{name}.labels: {path} does not exist")
        return
    try:
        header = list(pd.read_csv(path, nrows=0).columns)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        problems.append(f"datasets.{name}.labels: cannot read {path} ({exc})")
        return
    needed, what = LABEL_COLUMNS[entry["layout"]]
    missing = [c for c in needed if c not in header]
    if missing:
        problems.append(
            f"datasets.{name}.labels: {path} lacks column(s) {missing[:4]} ({entry['layout']} needs {what})"
        )
    if entry["layout"] == "dicom_tree" and not set(header) & {*RSNA_LABELS, "stroke_type"}:
        problems.append(
            f"datasets.{name}.labels: {path} has no label column ({[*RSNA_LABELS, 'stroke_type']})"
        )
    if entry.get("stroke_type") == "from_labels" and "stroke_type" not in header:
        problems.append(f"datasets.{name}.stroke_type: from_labels, but {path} has no stroke_type column")


def _predict_dataset(name: str, entry: dict[str, Any]) -> list[str]:
    """An unlabelled dataset takes no label file and no stroke class: either would be a label."""
    problems = []
    if "labels" in entry:
        problems.append(
            f"datasets.{name}.labels: role predict reads no labels (it is never scored); remove the key, "
            "or make the dataset role external to score it"
        )
    if entry.get("stroke_type", "from_any") != "from_any":
        problems.append(
            f"datasets.{name}.stroke_type: {entry['stroke_type']} labels every study, but role predict has "
            "no labels (leave it at from_any)"
        )
    return problems


def check_datasets(config: dict[str, Any]) -> list[str]:
    """Roots, label files, override files and per-dataset options."""
    problems: list[str] = []
    datasets = config["datasets"]
    if not any(entry["role"] == "train" for entry in datasets.values()):
        problems.append("datasets: no dataset has role: train")
    for name, entry in datasets.items():
        layout = entry["layout"]
        if entry["role"] == "predict":
            problems += _predict_dataset(name, entry)
        if entry.get("stroke_type") == "from_labels" and layout != "dicom_tree":
            problems.append(
                f"datasets.{name}.stroke_type: from_labels needs layout dicom_tree (a labels CSV "
                f"with a stroke_type column), not {layout}"
            )
        if entry.get("label_key") == "folder":
            _regex(entry.get("folder_pattern", ""), f"datasets.{name}.folder_pattern", problems, group=True)
        override = entry.get("series_override")
        if override and not Path(override).is_file():
            problems.append(f"datasets.{name}.series_override: {override} does not exist")
        if "synthetic" in entry:
            site = entry["synthetic"]["site"]
            if site not in config.get("synthetic", {}).get("sites", {}):
                problems.append(f"datasets.{name}.synthetic.site: {site!r} is not in synthetic.sites")
            continue
        if not Path(entry["root"]).is_dir():
            problems.append(f"datasets.{name}.root: {entry['root']} is not a folder")
        if entry["role"] != "predict" and "labels" not in entry:
            problems.append(
                f"datasets.{name}.labels: role {entry['role']} needs a label file (role predict reads none)"
            )
        elif "labels" in entry:
            _label_file(name, entry, problems)
    return problems


def stage1_metrics(stage1: dict[str, Any]) -> set[str] | None:
    """What `stage1.monitor` may name (None: data-dependent names also allowed, multiclass)."""
    if stage1.get("task", "multilabel") == "multiclass":
        return None
    labels = list(stage1.get("labels") or RSNA_LABELS)
    names = {"val_loss", "val_auc_mean", *(f"val_auc_{label}" for label in labels)}
    return names | {"val_f1_any"} if "any" in labels else names


def check_stage1(stage1: dict[str, Any]) -> list[str]:
    """Backbone names (timm), pretrained file, monitor, labels and class weights."""
    import timm

    problems: list[str] = []
    for backbone in stage1.get("backbones", []):
        arch, _, tag = backbone.partition(".")
        if not timm.is_model(arch):
            close = timm.list_models(f"*{arch[:6]}*")[:5]
            problems.append(f"stage1.backbones: {backbone!r} is not a timm model (similar: {close})")
        elif tag and stage1.get("pretrained") is True and backbone not in timm.list_pretrained(f"{arch}.*"):
            problems.append(
                f"stage1.backbones: timm has no pretrained tag {tag!r} for {arch} "
                f"(known: {timm.list_pretrained(f'{arch}.*')[:5]})"
            )
    pretrained = stage1.get("pretrained", False)
    if isinstance(pretrained, str) and not Path(pretrained).is_file():
        problems.append(f"stage1.pretrained: weights file {pretrained} does not exist")
    monitor, allowed = stage1.get("monitor", "val_loss"), stage1_metrics(stage1)
    if allowed is not None and monitor not in allowed:
        problems.append(f"stage1.monitor: {monitor!r} is not one of {sorted(allowed)}")
    if allowed is None and not re.fullmatch(r"val_(loss|auc_mean|f1_macro|auc_class_\d+)", monitor):
        problems.append(
            f"stage1.monitor: {monitor!r} is not val_loss, val_auc_mean, val_f1_macro or val_auc_class_<k>"
        )
    if stage1.get("batch_size", 32) < stage1.get("gpus", 1):
        problems.append(f"stage1.batch_size: {stage1.get('batch_size', 32)} is less than stage1.gpus")
    labels = list(stage1.get("labels") or RSNA_LABELS)
    if stage1.get("task", "multilabel") == "multilabel":
        unknown = [label for label in labels if label not in RSNA_LABELS]
        if unknown:
            problems.append(
                f"stage1.labels: {unknown} are not label columns of the index ({list(RSNA_LABELS)})"
            )
        weights = stage1.get("class_weights")
        if weights is not None and len(weights) != len(labels):
            problems.append(f"stage1.class_weights: {len(weights)} weights for {len(labels)} labels")
    return problems


def check_stage2(stage2: dict[str, Any]) -> list[str]:
    """Each Stage-2 model is built once, small, with its config's keyword arguments."""
    from ct25d.models.stage2 import STAGE2

    problems: list[str] = []
    labels = list(stage2.get("labels") or RSNA_LABELS)
    for run, entry in stage2.get("models", {}).items():
        reserved = sorted({"in_dim", "num_classes"} & set(entry))
        if reserved:
            problems.append(f"stage2.models.{run}: {reserved} come from the data and cannot be set")
            continue
        try:
            STAGE2.from_config(entry, in_dim=24, num_classes=len(labels))
        except Exception as exc:  # the constructor's own message names the bad argument
            problems.append(f"stage2.models.{run}: {type(exc).__name__}: {exc}")
    weights = stage2.get("class_weights")
    if weights is not None and len(weights) != len(labels):
        problems.append(f"stage2.class_weights: {len(weights)} weights for {len(labels)} labels")
    return problems


def check_baselines(config: dict[str, Any]) -> list[str]:
    """Each baseline is built once with its entry's arguments: 3D models on the `meta` device (shapes
    only, no memory or compute), thickened 2D as Stage-1 settings."""
    import torch

    from ct25d.models.baselines import BASELINES
    from ct25d.models.families import inputs_of
    from ct25d.training.baseline import split_entry, thick_settings
    from ct25d.volumes.fixed_store import volume_geometry

    block = config.get("baselines", {})
    problems: list[str] = []
    windows = [w.get("name") for w in config.get("preprocess", {}).get("windows", [])]
    chosen = block.get("volume", {}).get("windows") or windows
    unknown = sorted(set(chosen) - set(windows))
    if unknown:
        problems.append(f"baselines.volume.windows: {unknown} not in preprocess.windows {windows}")
    labels = list(block.get("labels") or RSNA_LABELS)
    stage1 = config.get("stage1", {})
    backbones = stage1.get("backbones", [])
    try:
        fixed_depth, size, depth = volume_geometry(
            block.get("volume", {}), config.get("preprocess", {}).get("size", 64)
        )
    except ConfigError as exc:
        return [*problems, str(exc)]
    for run, entry in block.get("models", {}).items():
        where = f"baselines.models.{run}"
        model, _ = split_entry(entry, {})
        kind = inputs_of(model["name"])
        needs_stage1 = kind == "embeddings" or model.get("init") == "stage1"
        if needs_stage1 and model.get("backbone", backbones[0]) not in backbones:
            problems.append(
                f"{where}.backbone: {model['backbone']!r} has no Stage-1 run (stage1.backbones {backbones})"
            )
        volume_only = sorted({"pooling", "supervision", "norm", "keep_z", "crop_depth"} & set(entry))
        if kind != "volume" and volume_only:
            problems.append(f"{where}: {volume_only} apply to the volume families, not to {model['name']}")
        if kind == "volume" and model.get("init") == "stage1" and size != stage1.get("image_size", 128):
            problems.append(
                f"{where}.init: stage1 needs the volumes' in-plane size ({size} px, baselines.volume.size) "
                f"to be the Stage-1 image size (stage1.image_size {stage1.get('image_size', 128)}): the "
                f"converted network would see other pixels than it learned on"
            )
        crop = entry.get("crop_depth", block.get("crop_depth"))
        if kind == "volume" and crop and model.get("supervision") != "slice":
            problems.append(
                f"{where}.crop_depth: needs supervision: slice (a run of slices has no study label)"
            )
        if model.get("supervision") == "slice" and fixed_depth is not None:
            problems.append(
                f"{where}.supervision: slice needs baselines.volume.depth: from_slices (a fixed depth "
                f"of {fixed_depth} resizes z, so the slice labels no longer fit the slices)"
            )
        try:
            if kind == "slices":
                thick_settings(entry, stage1)
            elif kind == "volume":
                args = {k: v for k, v in model.items() if not (k == "init" and v == "stage1")}
                shape = (1, len(chosen), depth, size, size)
                with torch.device("meta"):  # shapes only: a volume too small for the strides fails here
                    net = BASELINES.from_config(args, in_channels=len(chosen), num_classes=len(labels)).eval()
                    net(torch.empty(shape))
        except Exception as exc:  # the constructor's (or the forward's) own message says what is wrong
            problems.append(f"{where}: {type(exc).__name__}: {exc}")
    return problems


def approach_names(config: dict[str, Any]) -> set[str]:
    """The names a config may give its approaches, as `ct25d compare` resolves them: a baseline entry,
    `<backbone>:<name>` of a Stage-2 model or `head` / `cosine`, and the name alone where one backbone
    runs."""
    backbones = config.get("stage1", {}).get("backbones", [])
    models = [*config.get("stage2", {}).get("models", {}), "head", "cosine"]
    return {
        *config.get("baselines", {}).get("models", {}),
        *(models if len(backbones) == 1 else ()),
        *(f"{b}:{name}" for b in backbones for name in models),
    }


def check_predict(config: dict[str, Any]) -> list[str]:
    """Each `predict.approaches` and `bundle.approaches` entry names an approach of this config, or
    `reference` / `best`; a bundle holds only a Stage-2 approach or a 3D net."""
    from ct25d.models.families import inputs_of
    from ct25d.predict.ensemble import CHOSEN

    known = approach_names(config)
    names = ", ".join(sorted(known))
    problems = []
    for section, default in (("predict", list(CHOSEN)), ("bundle", ["reference"])):
        for name in config.get(section, {}).get("approaches", default):
            if name not in known and name not in CHOSEN:
                problems.append(
                    f"{section}.approaches: {name!r} is not {' or '.join(CHOSEN)} nor an approach of this "
                    f"config ({names})"
                )
            elif section == "bundle" and name not in CHOSEN:
                entry = config.get("baselines", {}).get("models", {}).get(name)
                stage1_rule = name.rpartition(":")[2] in ("head", "cosine")
                if stage1_rule or (entry is not None and inputs_of(entry["name"]) != "volume"):
                    problems.append(
                        f"bundle.approaches: {name!r} cannot be bundled: bundles hold Stage-2 approaches "
                        "and 3D nets (not the Stage-1 head, 2.5CNN or thickened 2D)"
                    )
    return problems


def check_claims(config: dict[str, Any]) -> list[str]:
    """Each claim's `better` and `than` (and `compare.reference`) must name an approach this config runs,
    as `ct25d compare` resolves it: a Stage-2 model or `head` / `cosine` alone only where one backbone
    runs, else `<backbone>:<name>`. Each claim's kind needs its margin, and its primary set must be
    scored: the pooled outer folds or an external dataset."""
    from ct25d.report.compare import INTERNAL, Claim

    known = approach_names(config)
    names = ", ".join(sorted(known))
    compare = config.get("compare", {})
    problems = []
    if compare.get("reference") and compare["reference"] not in known:
        problems.append(
            f"compare.reference: {compare['reference']!r} is not an approach of this config ({names})"
        )
    sets = [INTERNAL, *(d for d, e in config.get("datasets", {}).items() if e.get("role") == "external")]
    for i, claim in enumerate(compare.get("claims", [])):
        where = f"compare.claims[{i}]"
        problems += [
            f"{where}.{side}: {claim[side]!r} is not an approach of this config ({names})"
            for side in ("better", "than")
            if claim[side] not in known
        ]
        if claim.get("primary", INTERNAL) not in sets:
            problems.append(f"{where}.primary: {claim['primary']!r} is not a scored set ({sets})")
        try:
            Claim(**claim)
        except ConfigError as exc:
            problems.append(f"{where}: {exc}")
    return problems


def library_key(config: dict[str, Any]) -> str:
    """What the library checks' verdict depends on: the settings they read, this package's source
    files (name, size, mtime) and the versions of the libraries that build the models."""
    package = Path(__file__).parent
    files = sorted(
        (str(p.relative_to(package)), p.stat().st_size, p.stat().st_mtime_ns) for p in package.rglob("*.py")
    )
    versions = {name: metadata.version(name) for name in ("torch", "timm", "monai")}
    read = {k: config.get(k) for k in ("stage1", "stage2", "baselines", "preprocess")}
    text = json.dumps({"config": read, "files": files, "versions": versions}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def check_config(config: dict[str, Any], cache: Path | None = None) -> list[str]:
    """Every problem found in a schema-valid config, each naming its key.

    The checks that import torch, timm and MONAI and build every model cost seconds; with `cache` (a
    folder) their passing verdict is remembered under `library_key`, so a planning run whose model
    settings and code did not change skips them. The file-system checks always run: files move."""
    problems = check_datasets(config)
    _regex(config.get("ingest", {}).get("exclude_series", ""), "ingest.exclude_series", problems)
    problems += check_claims(config)
    problems += check_predict(config)
    passed = cache / f"config-check-{library_key(config)}.ok" if cache is not None else None
    if passed is not None and passed.is_file():
        return problems
    library = check_stage1(config.get("stage1", {}))
    library += check_stage2(config.get("stage2", {}))
    library += check_baselines(config)
    if passed is not None and not library:
        from ct25d.atomic import atomic_path

        with atomic_path(passed) as tmp:
            tmp.write_text("the model settings under this key passed ct25d.config_check\n")
    return problems + library
