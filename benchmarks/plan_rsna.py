"""Time to result on RSNA: the wall time and disk of the real config, stage by stage, from per-stage
throughputs and the machine (GPUs, CPU cores).

Work per stage comes from the config (`config/datasets/real.yaml`: folds, epochs, models, image
and volume sizes) and the archive sizes (RSNA 2019: ~25,000 studies, ~750,000 slices; CQ500: 491
studies, one ~32-slice series each converted). Throughputs come from `benchmarks/throughputs.yaml`,
each marked `measured` (with the command that measured it) or `assumed`; the table says which
stage rests on an assumed figure. GPU stages run one job per GPU (folds and models in parallel),
CPU stages one job per core.

    .venv/bin/python benchmarks/plan_rsna.py --gpus 2 --cores 16
    .venv/bin/python benchmarks/plan_rsna.py --measure-slices   # measure slice writing here first
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))


def measure_slices(size: int = 256, studies: int = 4, slices: int = 32) -> float:
    """Slices/s of `build_slice_shard` on one core: 512x512 HU -> head crop -> `size` px, 3 windows."""
    import os

    from slice_io import synthetic_hu

    from ct25d.slices.build import build_slice_shard
    from ct25d.slices.window import Window
    from ct25d.volumes.crop import CropSettings
    from ct25d.volumes.store import hu_store_writer

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        hu_store = Path(tmp) / "hu.zarr"
        with hu_store_writer(hu_store, {"benchmark": True}) as writer:
            for k in range(studies):
                writer.write(f"s{k}", synthetic_hu(rng, slices, 512),
                             {"spacing_zyx": [5.0, 0.45, 0.45], "shape_zyx": [slices, 512, 512]})  # fmt: skip
        windows = [Window("brain", 40, 80), Window("subdural", 75, 215), Window("wide", 150, 500)]
        start = time.perf_counter()
        crop = CropSettings(-200, 3.0, 5.0)
        build_slice_shard(hu_store, Path(tmp) / "slices.zarr", crop, size, windows, {}, progress=False)
        return studies * slices / (time.perf_counter() - start)


def plan(config: dict[str, Any], rates: dict[str, dict[str, Any]], gpus: int, cores: int,
         rsna: tuple[int, int], cq500: tuple[int, int]) -> list[dict[str, Any]]:  # fmt: skip
    """One row per stage: jobs, wall hours, the throughput it used (and whether assumed), disk GB."""
    s1, s2, bl = config["stage1"], config["stage2"], config.get("baselines", {})
    folds = len(s1.get("folds", [0]))
    train_share = 1 - 1 / config["splits"]["folds"]  # a fold trains on the other folds
    (rsna_studies, rsna_slices), (cq_studies, cq_slices) = rsna, cq500
    all_slices, all_studies = rsna_slices + cq_slices, rsna_studies + cq_studies
    size = config["preprocess"]["size"]
    tta = 2 if s1.get("tta_flip", True) else 1
    volume = bl.get("volume", {})
    voxels = 3 * volume.get("depth", 64) * volume.get("size", 256) ** 2

    def rate(key: str) -> tuple[float, str]:
        entry = rates[key]
        if entry["value"] is None:
            raise SystemExit(f"throughputs: {key} has no value ({entry['how']})")
        return float(entry["value"]), entry["source"]

    def waves(jobs: int, slots: int) -> int:  # jobs in parallel on `slots` GPUs or cores
        return math.ceil(jobs / max(slots, 1))

    rows = []

    def row(stage: str, jobs: int, slots: int, seconds_per_job: float, key: str, disk_gb: float) -> None:
        value, source = rate(key)
        hours = waves(jobs, slots) * seconds_per_job / 3600
        rows.append({"stage": stage, "jobs": jobs, "hours": hours, "rate": f"{value:,.0f} {key}",
                     "source": source, "disk GB": disk_gb})  # fmt: skip

    ingest, _ = rate("ingest_slices_s_per_core")
    shards = sum(d.get("shards", 1) for d in config["datasets"].values())
    # Decoding is per core; reading the archive is one disk for all: whichever takes longer.
    read_s = all_slices * 0.524 / rate("archive_read_mb_s")[0]
    decode_s, disk_s = all_slices / shards / ingest, read_s / waves(shards, cores)
    row("scan + ingest (HU stores)", shards, cores, max(decode_s, disk_s),
        "ingest_slices_s_per_core" if decode_s >= disk_s else "archive_read_mb_s",
        all_slices * rate("hu_bytes_per_slice")[0] / 1e9)  # fmt: skip
    same = config["preprocess"].get("in_plane_mm") is None and config["preprocess"].get("slice_mm") is None
    row("resample" + (" (unchanged: aliases, no copy)" if same else ""), shards, cores,
        0.0 if same else all_slices / shards / ingest, "ingest_slices_s_per_core",
        0.0 if same else all_slices * rate("hu_bytes_per_slice")[0] / 1e9)  # fmt: skip
    slices_rate, _ = rate("slices_slices_s_per_core")
    slice_gb = all_slices * rate("slice_bytes_per_slice")[0] * (size / 256) ** 2 / 1e9
    row(f"windowed slices ({size} px)", shards, cores, all_slices / shards / slices_rate,
        "slices_slices_s_per_core", slice_gb)  # fmt: skip
    train_rate, _ = rate("stage1_train_slices_s_per_gpu")
    epochs = s1.get("epochs", 4)
    row(f"Stage 1 training ({len(s1['backbones'])} backbone x {folds} folds x {epochs} epochs)",
        folds * len(s1["backbones"]), gpus, epochs * rsna_slices * train_share / train_rate,
        "stage1_train_slices_s_per_gpu", 0.5 * folds)  # fmt: skip
    embed_rate, _ = rate("stage1_embed_slices_s_per_gpu")
    row(f"Stage 1 embeddings (every slice, {folds} folds{', flip TTA' if tta == 2 else ''})",
        folds * shards, gpus, tta * all_slices / shards / embed_rate, "stage1_embed_slices_s_per_gpu",
        folds * all_slices * 2048 * 2 / 1e9)  # fmt: skip
    stage2_rate, _ = rate("stage2_studies_s_per_gpu")
    models, epochs2 = len(s2.get("models", {})), s2.get("epochs", 30)
    row(f"Stage 2 ({models} models x {folds} folds x {epochs2} epochs)", models * folds, gpus,
        epochs2 * rsna_studies * train_share / stage2_rate, "stage2_studies_s_per_gpu", 0.1)  # fmt: skip
    vol_rate, _ = rate("volume_train_studies_s_per_gpu")
    n_bl = len(bl.get("models", {}))
    row(f"3D baselines ({n_bl} models x {folds} folds x {bl.get('epochs', 8)} epochs)", n_bl * folds, gpus,
        bl.get("epochs", 8) * rsna_studies * train_share / vol_rate, "volume_train_studies_s_per_gpu",
        all_studies * voxels * 0.5 / 1e9)  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=REPO / "config" / "datasets" / "real.yaml")
    parser.add_argument("--throughputs", type=Path, default=Path(__file__).with_name("throughputs.yaml"))
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--cores", type=int, default=16)
    parser.add_argument("--rsna", type=int, nargs=2, default=[25_000, 750_000], metavar=("STUDIES", "SLICES"))
    parser.add_argument("--cq500", type=int, nargs=2, default=[491, 491 * 32], metavar=("STUDIES", "SLICES"))
    parser.add_argument("--measure-slices", action="store_true", help="measure slice writing on this machine")
    args = parser.parse_args()

    from snakemake.utils import validate  # the workflow's own defaults for keys the config leaves out

    config = yaml.safe_load(args.config.read_text())
    validate(config, str(REPO / "config" / "schema.yaml"))
    rates = yaml.safe_load(args.throughputs.read_text())
    if args.measure_slices:
        measured = measure_slices(config["preprocess"]["size"])
        rates["slices_slices_s_per_core"]["value"] = round(measured)
        print(
            f"slice writing here: {measured:,.0f} slices/s on one core (keep it in {args.throughputs.name})"
        )
    rows = plan(config, rates, args.gpus, args.cores, tuple(args.rsna), tuple(args.cq500))
    (studies, slices), cq = args.rsna, args.cq500[0]
    print(f"{args.config.name}: RSNA {studies:,} studies / {slices:,} slices, CQ500 {cq:,} studies; "
          f"{args.gpus} GPUs, {args.cores} cores\n")  # fmt: skip
    print("| stage | jobs | wall hours | throughput used | source | disk GB |")
    print("|---|---:|---:|---|---|---:|")
    for r in rows:
        cells = [r["stage"], r["jobs"], f"{r['hours']:.2f}", r["rate"], r["source"], f"{r['disk GB']:.1f}"]
        print("| " + " | ".join(map(str, cells)) + " |")
    assumed = [r["stage"] for r in rows if r["source"] != "measured"]
    total, disk = sum(r["hours"] for r in rows), sum(r["disk GB"] for r in rows)
    print(f"\nEnd to end: {total:.1f} h wall if the stages ran one after another (the DAG overlaps them: "
          f"an upper bound), {disk:.0f} GB of artifacts.")  # fmt: skip
    if assumed:
        print(f"Rests on assumed throughputs (measure them on the target GPU): {', '.join(assumed)}.")


if __name__ == "__main__":
    main()
