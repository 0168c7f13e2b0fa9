"""Ingest speed: `ct25d scan` + `ct25d ingest` (int16 HU into a Blosc zarr store) vs `dcm2niix -z n`.

Target: ingest, including writing the compressed store, is at least as fast as `dcm2niix -z n` on
the same series on the same cores. To keep the comparison fair, both tools see exactly the same
files (a CQ500-layout root holding only the benchmarked series, as hard links), on one pinned core
(`taskset -c CORE`), with a warm page cache, best of `--repeats`. dcm2niix runs once per series
folder, as it is normally driven; ct25d is timed in-process (scan, ingest, total; start-up excluded),
as the real CLI (two processes, start-up included), and its start-up/import cost is timed on its own,
because dcm2niix starts in milliseconds. The voxels of every series are compared between the two
outputs, and when ct25d is the slower one its path is profiled (cProfile) to show where time goes.

The synthetic cohort (512 x 512, uncompressed transfer syntax, no tilt, no broken studies) is cached
under `--dir` and reused on reruns.

    .venv/bin/python benchmarks/ingest.py [--studies 6 --repeats 3 --core 0 --thin --dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DIR = REPO / "benchmarks" / "out" / "ingest"

# config/config.yaml `synthetic.sites.B` (the CQ500 demo site) at a realistic matrix. The thin
# series is added only with --thin.
SITE_B: dict[str, float] = {"noise_hu": 9.0, "fov_mm": 250.0, "matrix": 512, "thickness_mm": 5.0,
                            "hu_offset": 4.0, "blur_mm": 0.3}  # fmt: skip
THIN_MM = 1.25
# config/config.yaml `synthetic`, with every input quirk switched off: plain uncompressed series only.
SYNTHETIC: dict[str, Any] = {
    "hemorrhage_fraction": 0.5,
    "ischemic_fraction": 0.15,
    "compressed_fraction": 0.0,
    "wrapped_fraction": 0.0,
    "tilt_fraction": 0.0,
    "broken_studies": 0,
}
# The workflow's own `ingest` settings, so the benchmark measures what `make demo` runs.
INGEST: dict[str, Any] = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["ingest"]

# Functions whose cumulative profile time says where the ct25d path spends its time.
BREAKDOWN: list[tuple[str, str, str]] = [
    ("scan: list_files", "ct25d/dicom/files.py", "list_files"),
    ("scan: file_headers (byte parse + values + pseudonyms)", "ct25d/dicom/headers.py", "file_headers"),
    ("scan: hu_problem (HU checks)", "ct25d/dicom/hu.py", "hu_problem"),
    ("scan:   parse_file (DICOM byte parser)", "ct25d/dicom/elements.py", "parse_file"),
    ("scan:   pydicom.dcmread (files the parser leaves to pydicom)", "pydicom/filereader.py", "dcmread"),
    ("scan: series_units", "ct25d/dicom/scan.py", "series_units"),
    ("scan: attach_labels", "ct25d/dicom/labelling.py", "attach_labels"),
    ("scan: series_table (classify + header geometry)", "ct25d/dicom/scan.py", "series_table"),
    ("scan: rank_series", "ct25d/dicom/choice.py", "rank_series"),
    ("scan+ingest: write_parquet", "ct25d/atomic.py", "write_parquet"),
    ("ingest: pandas.read_parquet", "pandas/io/parquet.py", "read_parquet"),
    ("ingest: study_jobs (tables -> headers)", "ct25d/volumes/ingest.py", "study_jobs"),
    ("ingest: sort_series", "ct25d/dicom/series.py", "sort_series"),
    ("ingest: load_volume", "ct25d/dicom/series.py", "load_volume"),
    ("ingest:   read_hu_native (read into the volume + HU)", "ct25d/dicom/pixels.py", "read_hu_native"),
    ("ingest:   read_hu (pydicom decoders: compressed files)", "ct25d/dicom/pixels.py", "read_hu"),
    ("ingest: HUStoreWriter.write (zarr create + Blosc + write)", "ct25d/volumes/store.py", "write"),
    ("ingest: SliceRows.table (slice table)", "ct25d/volumes/ingest.py", "table"),
]


# ------------------------------------------------------------------------------------------ helpers


def log(msg: str) -> None:
    print(f"[ingest-bench] {msg}", file=sys.stderr, flush=True)


def pinned(cores: int | str, cmd: list[str]) -> list[str]:
    """`cmd` pinned to a core (or a `taskset -c` list of cores), so both tools get the same CPU."""
    return ["taskset", "-c", str(cores), *cmd]


def ct25d_cli() -> list[str]:
    """The installed `ct25d` console script of this interpreter's environment."""
    script = Path(sys.executable).parent / "ct25d"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from ct25d.cli import main; sys.exit(main())"]


def tree_bytes(root: Path, suffix: str = "") -> int:
    return sum(p.stat().st_size for p in root.rglob(f"*{suffix}") if p.is_file())


def clear(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def best_of(repeats: int, run: Callable[[int], float]) -> tuple[float, list[float]]:
    """(best, all) seconds of `repeats` calls; the best is the least disturbed by other load."""
    times = [run(i) for i in range(repeats)]
    return min(times), times


def machine() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    d2n = subprocess.run(["dcm2niix", "--version"], capture_output=True, text=True)
    d2n_version = (d2n.stdout + d2n.stderr).strip().splitlines()[-1] if d2n.stdout or d2n.stderr else "?"
    import pydicom
    import zarr

    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "python": platform.python_version(),
        "dcm2niix": d2n_version,
        "pydicom": pydicom.__version__,
        "zarr": zarr.__version__,
    }


# ------------------------------------------------------------------------------------------- inputs


@dataclass
class Inputs:
    cohort: Path
    root: Path  # only the benchmarked series, hard-linked in the CQ500 layout
    labels: Path
    series: list[str]  # series folders relative to `root`
    n_slices: int
    n_bytes: int


def make_inputs(work: Path, studies: int, seed: int, thin: bool) -> Inputs:
    """Generate (or reuse) the cohort and a root holding only the series both tools convert."""
    import pandas as pd

    site = {**SITE_B, **({"thin_thickness_mm": THIN_MM} if thin else {})}
    name = f"cohort-cq500-m{int(site['matrix'])}-n{studies}-seed{seed}{'-thin' if thin else ''}"
    cohort = work / name
    if (cohort / "truth" / "slices.parquet").exists():
        log(f"reusing cohort {cohort}")
    else:
        log(f"generating {studies} studies at {int(site['matrix'])} px into {cohort} (once; cached)")
        from ct25d.synth.cohort import generate_cohort

        start = time.perf_counter()
        generate_cohort(cohort, "cq500", {"n_studies": studies, "seed": seed, "site": "B"},
                        {**SYNTHETIC, "sites": {"B": site}}, progress=False)  # fmt: skip
        log(f"  generated in {time.perf_counter() - start:.1f} s")
    truth = pd.read_parquet(cohort / "truth" / "slices.parquet")
    if thin:  # per study, the series with the most slices is the thin one
        counts = truth.groupby(["study_uid", "series_uid"]).size().reset_index(name="n")
        chosen = counts.sort_values("n").groupby("study_uid").tail(1)["series_uid"]
        truth = truth[truth["series_uid"].isin(chosen)]
    else:
        truth = truth[truth["plain"]]
    rels = sorted(truth["path"])

    root = work / f"{name}-{'thin' if thin else 'plain'}-only"
    if not root.exists():
        tmp = root.with_name(root.name + ".tmp")
        clear(tmp)
        for rel in rels:
            dst = tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(cohort / rel, dst)
            except OSError:
                shutil.copy2(cohort / rel, dst)
        tmp.rename(root)
    series = sorted({str(Path(rel).parent) for rel in rels})
    n_bytes = sum((root / rel).stat().st_size for rel in rels)
    return Inputs(cohort, root, cohort / "reads.csv", series, len(rels), n_bytes)


def warm_cache(inputs: Inputs) -> None:
    """Read every input file once so no tool pays for the first, cold read."""
    for path in inputs.root.rglob("*.dcm"):
        path.read_bytes()


# ----------------------------------------------------------------------------------------- dcm2niix


def run_dcm2niix(
    inputs: Inputs, out: Path, cores: int | str, repeats: int, at_once: int = 1
) -> dict[str, Any]:
    """`dcm2niix -z n -b n` per series folder, `at_once` processes at a time (it converts
    single-threaded), pinned to `cores`; wall time over all series, best of N."""

    def convert(cmd: list[str]) -> None:
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def once(i: int) -> float:
        clear(out)
        cmds = []
        for k, folder in enumerate(inputs.series):
            (out / f"{k:03d}").mkdir(parents=True)
            argv = ["dcm2niix", "-z", "n", "-b", "n", "-o", str(out / f"{k:03d}"), str(inputs.root / folder)]
            cmds.append(pinned(cores, argv))
        start = time.perf_counter()
        with ThreadPoolExecutor(at_once) as pool:
            list(pool.map(convert, cmds))
        return time.perf_counter() - start

    best, times = best_of(repeats, once)
    outputs = {folder: sorted((out / f"{k:03d}").glob("*.nii")) for k, folder in enumerate(inputs.series)}
    return {"best": best, "times": times, "bytes": tree_bytes(out, ".nii"), "outputs": outputs}


def run_dcm2niix_root(inputs: Inputs, out: Path, core: int, repeats: int) -> dict[str, Any]:
    """One pinned dcm2niix call over the whole root: its start-up paid once, as ct25d's is."""

    def once(i: int) -> float:
        clear(out)
        out.mkdir(parents=True)
        cmd = pinned(core, ["dcm2niix", "-z", "n", "-b", "n", "-o", str(out), str(inputs.root)])
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - start

    best, times = best_of(repeats, once)
    return {"best": best, "times": times, "n_files": len(list(out.glob("*.nii")))}


# -------------------------------------------------------------------------------------------- ct25d


def cli_args(
    inputs: Inputs, scan_dir: Path, prefix: Path, shards: int = 1, workers: int = 1
) -> tuple[list[str], list[list[str]]]:
    """argv of `ct25d scan` and of `ct25d ingest` for each shard (`<prefix><k>`)."""
    settings = json.dumps(INGEST)
    dataset = json.dumps({"layout": "cq500", "role": "external"})
    scan = ["scan", "--root", str(inputs.root), "--dataset", dataset, "--labels", str(inputs.labels),
            "--shards", str(shards), "--settings", settings, "--workers", str(workers),
            "--out", str(scan_dir)]  # fmt: skip
    ingest = ["ingest", "--root", str(inputs.root), "--scan", str(scan_dir), "--settings", settings,
              "--workers", "1"]  # fmt: skip
    ingests = [[*ingest, "--shard", str(k), "--out-prefix", f"{prefix}{k}"] for k in range(shards)]
    return scan, ingests


def run_worker(cores: int | str, spec: dict[str, Any], log_path: Path) -> dict[str, Any]:
    """Run this script's worker mode pinned to `cores`; it prints one JSON line of results."""
    cmd = pinned(cores, [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)])
    with open(log_path, "w") as err:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"worker failed (rc {proc.returncode}); see {log_path}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_ct25d_inprocess(inputs: Inputs, work: Path, core: int, repeats: int) -> dict[str, Any]:
    """scan/ingest/total seconds inside one pinned process (imports excluded), best of N each."""
    spec = {"mode": "time", "root": str(inputs.root), "labels": str(inputs.labels), "work": str(work),
            "repeats": repeats}  # fmt: skip
    return run_worker(core, spec, work.with_suffix(".log"))


def run_ct25d_parallel(inputs: Inputs, work: Path, cores: str, n: int, repeats: int) -> dict[str, Any]:
    """scan with `n` workers, then `n` ingest shards at once, on `cores`: what Snakemake runs with
    `--cores n` (forked from one process, so imports are excluded as in the one-core figure)."""
    spec = {"mode": "parallel", "root": str(inputs.root), "labels": str(inputs.labels), "work": str(work),
            "repeats": repeats, "parallel": n}  # fmt: skip
    return run_worker(cores, spec, work.with_suffix(".log"))


def run_ct25d_cli(inputs: Inputs, work: Path, core: int, repeats: int) -> dict[str, Any]:
    """`ct25d scan` then `ct25d ingest` as two pinned processes, as Snakemake runs them."""
    cli = ct25d_cli()

    def once(i: int) -> float:
        clear(work)
        work.mkdir(parents=True)
        scan, (ingest,) = cli_args(inputs, work / "scan", work / "shard")
        start = time.perf_counter()
        for argv in (scan, ingest):
            subprocess.run(pinned(core, cli + argv), check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)  # fmt: skip
        return time.perf_counter() - start

    best, times = best_of(repeats, once)
    return {"best": best, "times": times}


def run_startup(core: int, repeats: int) -> dict[str, float]:
    """Seconds to start the interpreter alone and with the ingest imports (paid per CLI call)."""
    out = {}
    for label, code in (("python", "pass"), ("import", "import ct25d.volumes.ingest, ct25d.dicom.scan")):
        cmd = pinned(core, [sys.executable, "-c", code])

        def once(i: int, cmd: list[str] = cmd) -> float:
            start = time.perf_counter()
            subprocess.run(cmd, check=True)
            return time.perf_counter() - start

        out[label] = best_of(repeats, once)[0]
    return out


# ----------------------------------------------------------------------------- worker (pinned child)


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Child process: time (mode=time) or profile (mode=profile) the real CLI functions in-process."""
    from ct25d.cli import main
    from ct25d.dicom.headers import pseudonym

    root, work = Path(spec["root"]), Path(spec["work"])
    inputs = Inputs(Path(), root, Path(spec["labels"]), [], 0, 0)

    def once(i: int) -> tuple[float, float]:
        clear(work)
        work.mkdir(parents=True)
        pseudonym.cache_clear()  # each repeat pays for its pseudonyms, as a fresh scan process does
        scan, (ingest,) = cli_args(inputs, work / "scan", work / "shard")
        t0 = time.perf_counter()
        if main(scan) != 0:
            raise SystemExit("ct25d scan failed")
        t1 = time.perf_counter()
        if main(ingest) != 0:
            raise SystemExit("ct25d ingest failed")
        return t1 - t0, time.perf_counter() - t1

    if spec["mode"] == "parallel":
        runs = [parallel_once(inputs, work, int(spec["parallel"])) for _ in range(int(spec["repeats"]))]
        return {"scan": min(s for s, _ in runs), "ingest": min(g for _, g in runs),
                "total": min(s + g for s, g in runs), "runs": runs}  # fmt: skip
    if spec["mode"] == "time":
        runs = [once(i) for i in range(int(spec["repeats"]))]
        return {
            "codecs": codec_floor(work / "shard0.zarr", int(INGEST["chunk_slices"])),
            "scan": min(s for s, _ in runs),
            "ingest": min(g for _, g in runs),
            "total": min(s + g for s, g in runs),
            "runs": runs,
            "zarr_bytes": tree_bytes(work / "shard0.zarr"),
            "parquet_bytes": tree_bytes(work, ".parquet"),
            "store": str(work / "shard0.zarr"),
            "volumes": str(work / "shard0.volumes.parquet"),
        }
    import cProfile

    once(0)  # warm: lazy imports and pydicom's handler discovery are not the steady state
    profile = cProfile.Profile()
    profile.enable()
    scan_s, ingest_s = once(1)
    profile.disable()
    profile.dump_stats(spec["pstats"])
    return {"scan": scan_s, "ingest": ingest_s}


def parallel_once(inputs: Inputs, work: Path, n: int) -> tuple[float, float]:
    """(scan, ingest) seconds: scan with `n` workers into `n` shards, then the shards' ingests as
    `n` forked processes at once."""
    import ct25d.volumes.ingest  # noqa: F401  (imported before forking, as the one-core run has it)
    from ct25d.cli import main
    from ct25d.dicom.headers import pseudonym

    clear(work)
    work.mkdir(parents=True)
    pseudonym.cache_clear()
    scan, ingests = cli_args(inputs, work / "scan", work / "shard", shards=n, workers=n)
    t0 = time.perf_counter()
    if main(scan) != 0:
        raise SystemExit("ct25d scan failed")
    t1 = time.perf_counter()
    fork = multiprocessing.get_context("fork")
    children = [fork.Process(target=lambda argv=argv: sys.exit(main(argv))) for argv in ingests]
    for child in children:
        child.start()
    for child in children:
        child.join()
    if any(child.exitcode != 0 for child in children):
        raise SystemExit("a ct25d ingest shard failed")
    return t1 - t0, time.perf_counter() - t1


def codec_floor(store: Path, chunk_slices: int) -> list[dict[str, Any]]:
    """Compression alone on the store's own chunks: how much of the write is the codec, and what
    other codecs would cost (single-threaded, same core, best of 2)."""
    from numcodecs import LZ4, Blosc, Zstd

    from ct25d.shards import shard_studies
    from ct25d.volumes.store import BLOCK_BYTES, read_volume

    Blosc.use_threads = False
    chunks = [
        np.ascontiguousarray(volume[z : z + chunk_slices])
        for volume in (read_volume(store, s)[0] for s in shard_studies(store))
        for z in range(0, volume.shape[0], chunk_slices)
    ]
    raw = sum(c.nbytes for c in chunks)
    name, level = INGEST["compressor"], INGEST["compression_level"]
    codecs: list[tuple[str, Any]] = [
        (
            f"blosc {name} clevel {level} + byte shuffle (configured)",
            Blosc(name, level, Blosc.SHUFFLE, blocksize=BLOCK_BYTES),
        ),
        ("blosc lz4 clevel 1 + byte shuffle, automatic block", Blosc("lz4", 1, Blosc.SHUFFLE, blocksize=0)),
        ("blosc zstd clevel 1 + byte shuffle", Blosc("zstd", 1, Blosc.SHUFFLE, blocksize=BLOCK_BYTES)),
        ("blosc lz4 clevel 1 + bit shuffle", Blosc("lz4", 1, Blosc.BITSHUFFLE, blocksize=0)),
        ("zstd level 3", Zstd(level=3)),
        ("lz4", LZ4()),
    ]
    out = []
    for name, codec in codecs:
        seconds, size = float("inf"), 0
        for _ in range(2):
            start = time.perf_counter()
            size = sum(len(codec.encode(c)) for c in chunks)
            seconds = min(seconds, time.perf_counter() - start)
        out.append({"codec": name, "seconds": seconds, "mb_s": raw / seconds / 1e6, "ratio": raw / size})
    return out


# --------------------------------------------------------------------------------------- correctness


NIFTI_DTYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4"}


def read_nifti(path: Path) -> tuple[np.ndarray, float, float]:
    """(array in C order (z, y, x), scl_slope, scl_inter) of a single-file NIfTI-1 volume."""
    raw = path.read_bytes()
    end = "<" if int.from_bytes(raw[:4], "little") == 348 else ">"
    dim = np.frombuffer(raw, f"{end}i2", 8, 40)
    datatype = int(np.frombuffer(raw, f"{end}i2", 1, 70)[0])
    vox_offset = int(np.frombuffer(raw, f"{end}f4", 1, 108)[0])
    slope, inter = (float(v) for v in np.frombuffer(raw, f"{end}f4", 2, 112))
    shape = [int(v) for v in dim[1 : 1 + int(dim[0])]]
    if any(v != 1 for v in shape[3:]):
        raise ValueError(f"{path}: expected one 3-D volume, dims {shape}")
    x, y, z = [*shape, 1, 1, 1][:3]
    dtype = np.dtype(NIFTI_DTYPES[datatype]).newbyteorder(end)
    data = np.frombuffer(raw, dtype, x * y * z, vox_offset).reshape(z, y, x)
    if slope == 0 or not np.isfinite(slope):
        slope, inter = 1.0, 0.0
    return data, slope, inter


def orientations(volume: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
    """The volume under every axis flip and an optional Y/X transposition."""
    for transpose in (False, True):
        base = volume.transpose(0, 2, 1) if transpose else volume
        for mask in range(8):
            axes = tuple(a for a in range(3) if mask >> a & 1)
            name = ("transpose Y/X, " if transpose else "") + (
                "flip " + "".join("ZYX"[a] for a in axes) if axes else "no flip"
            )
            yield name, np.flip(base, axes) if axes else base


def compare(
    inputs: Inputs, niftis: dict[str, list[Path]], store: Path, volumes: Path
) -> list[dict[str, Any]]:
    """Per series: do dcm2niix's HU (after scl_slope/inter) equal ct25d's zarr voxels exactly?"""
    import pandas as pd

    from ct25d.volumes.store import read_volume

    table = pd.read_parquet(volumes)
    study_of = dict(zip(table["unit"], table["study_id"], strict=True))
    rows = []
    for folder in inputs.series:
        files = niftis.get(folder, [])
        row: dict[str, Any] = {"series": folder, "match": False, "transform": "", "detail": ""}
        rows.append(row)
        if len(files) != 1 or folder not in study_of:
            row["detail"] = f"{len(files)} NIfTI file(s); in ct25d volumes: {folder in study_of}"
            continue
        data, slope, inter = read_nifti(files[0])
        nii_hu = data.astype(np.float64) * slope + inter
        ours, _ = read_volume(store, study_of[folder])
        best: tuple[int, str, float] = (-1, "", 0.0)
        for name, candidate in orientations(ours):
            if candidate.shape != nii_hu.shape:
                continue
            diff = np.abs(candidate.astype(np.float64) - nii_hu)
            n_bad = int((diff != 0).sum())
            if best[0] < 0 or n_bad < best[0]:
                best = (n_bad, name, float(diff.max()))
            if n_bad == 0:
                break
        n_bad, name, max_diff = best
        row.update(
            match=n_bad == 0,
            transform=name,
            detail=f"{data.dtype} x{slope:g}{inter:+g}, shape {tuple(nii_hu.shape)}"
            + ("" if n_bad == 0 else f", {n_bad} voxels differ (max |diff| {max_diff:g})")
            + ("" if n_bad >= 0 else "; no orientation has the same shape"),
        )
    return rows


# ------------------------------------------------------------------------------------------ profile


def profile_summary(pstats_path: Path, top: int) -> tuple[list[str], list[str]]:
    """(breakdown lines, top-N cumulative lines) from a cProfile dump."""
    import pstats

    stats = pstats.Stats(str(pstats_path)).stats  # type: ignore[attr-defined]
    total = max(ct for (_, _, _, ct, _) in stats.values())

    def short(key: tuple[str, int, str]) -> str:
        path, line, func = key
        for marker in ("site-packages/", "/src/"):
            if marker in path:
                path = path.split(marker, 1)[1]
        return f"{path}:{line}({func})" if line else func

    def cumulative(path_end: str, func: str) -> tuple[float, int]:
        ct, calls = 0.0, 0
        for (path, _, name), (_, nc, _, c, _) in stats.items():
            if path.endswith(path_end) and name == func:
                ct += c
                calls += nc
        return ct, calls

    breakdown = ["| step (cumulative, profiled pass) | calls | s | share |", "|---|---:|---:|---:|"]
    for label, path_end, func in BREAKDOWN:
        ct, calls = cumulative(path_end, func)
        if calls:
            breakdown.append(f"| {label} | {calls} | {ct:.3f} | {ct / total:.0%} |")
    ranked = sorted(stats.items(), key=lambda kv: kv[1][3], reverse=True)
    lines = ["| function | calls | tottime s | cumtime s |", "|---|---:|---:|---:|"]
    for key, (_, nc, tt, ct, _) in ranked[:top]:
        lines.append(f"| `{short(key)}` | {nc} | {tt:.3f} | {ct:.3f} |")
    by_self = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)
    lines += ["", "| function (by self time) | calls | tottime s | cumtime s |", "|---|---:|---:|---:|"]
    for key, (_, nc, tt, ct, _) in by_self[:top]:
        lines.append(f"| `{short(key)}` | {nc} | {tt:.3f} | {ct:.3f} |")
    return breakdown, lines


def parallel_table(
    many: tuple[str, dict[str, Any], dict[str, Any]] | None, n: int, parallel: int, root: float
) -> list[str]:
    """Report lines for the run on several cores (none when it was not run)."""
    if many is None:
        return []
    cores, d2n, ours = many
    ref = d2n["best"]

    def row(tool: str, seconds: float) -> str:
        return f"| {tool} | {n} | {seconds:.3f} | {n / seconds:,.0f} | {seconds / ref:.2f}x |"

    return [
        f"### On {parallel} cores ({cores}): each tool's own way of using them",
        "",
        "| tool | slices | wall s | slices/s | time vs dcm2niix |",
        "|---|---:|---:|---:|---:|",
        row(f"dcm2niix -z n -b n, 1 process per series, {parallel} at a time", ref),
        row("dcm2niix -z n -b n, 1 process for the root (single-threaded: the one-core figure)", root),
        row(
            f"ct25d scan ({parallel} workers) + {parallel} ingest shards at once (forked, imports excluded)",
            ours["total"],
        ),
        "",
        f"ct25d scan {ours['scan']:.3f} s + ingest {ours['ingest']:.3f} s; all repeats (s): "
        f"dcm2niix {', '.join(f'{t:.3f}' for t in d2n['times'])}; ct25d scan/ingest "
        f"{'; '.join(f'{s:.3f}/{g:.3f}' for s, g in ours['runs'])}. Shards are split by a hash of the "
        "study id, so they are not always equal.",
        "",
    ]


# --------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="cache + work directory")
    parser.add_argument("--studies", type=int, default=6)
    parser.add_argument("--seed", type=int, default=500)
    parser.add_argument("--thin", action="store_true", help=f"benchmark {THIN_MM} mm thin series instead")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--core", type=int, default=0, help="CPU both tools are pinned to")
    parser.add_argument("--profile", choices=["auto", "always", "never"], default="auto",
                        help="profile the ct25d path (auto: when it is slower than dcm2niix)")  # fmt: skip
    parser.add_argument("--top", type=int, default=25, help="rows of the profile tables")
    parser.add_argument("--parallel", type=int, default=min(2, len(os.sched_getaffinity(0))),
                        help="also compare on this many cores (from --core on); 1 turns it off")  # fmt: skip
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if shutil.which("dcm2niix") is None or shutil.which("taskset") is None:
        raise SystemExit("needs dcm2niix and taskset on PATH")

    work: Path = args.dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    inputs = make_inputs(work, args.studies, args.seed, args.thin)
    log(
        f"{len(inputs.series)} series, {inputs.n_slices} slices, "
        f"{inputs.n_bytes / 1e6:.1f} MB under {inputs.root}"
    )
    warm_cache(inputs)
    load = os.getloadavg()

    runs = work / "runs"
    log("dcm2niix, one process per series ...")
    d2n = run_dcm2niix(inputs, runs / "dcm2niix", args.core, args.repeats)
    log("dcm2niix, one process for the root ...")
    d2n_root = run_dcm2niix_root(inputs, runs / "dcm2niix-root", args.core, args.repeats)
    log("ct25d scan + ingest in-process ...")
    ours = run_ct25d_inprocess(inputs, runs / "ct25d", args.core, args.repeats)
    log("ct25d scan + ingest as CLI processes ...")
    ours_cli = run_ct25d_cli(inputs, runs / "ct25d-cli", args.core, args.repeats)
    startup = run_startup(args.core, args.repeats)
    many = None
    if args.parallel > 1:
        cores = f"{args.core}-{args.core + args.parallel - 1}"
        log(f"on cores {cores}: dcm2niix per series, {args.parallel} at a time ...")
        d2n_many = run_dcm2niix(inputs, runs / "dcm2niix-parallel", cores, args.repeats, args.parallel)
        log(f"on cores {cores}: ct25d scan with {args.parallel} workers + {args.parallel} shards at once ...")
        ours_many = run_ct25d_parallel(inputs, runs / "ct25d-parallel", cores, args.parallel, args.repeats)
        many = (cores, d2n_many, ours_many)
    log("comparing voxels ...")
    checks = compare(inputs, d2n["outputs"], Path(ours["store"]), Path(ours["volumes"]))

    n = inputs.n_slices
    ref = d2n["best"]
    nii_per_slice = d2n["bytes"] / n
    zarr_per_slice = ours["zarr_bytes"] / n

    def row(tool: str, seconds: float, per_slice: str) -> str:
        return f"| {tool} | {n} | {seconds:.3f} | {n / seconds:,.0f} | {per_slice} | {seconds / ref:.2f}x |"

    total, root = ours["total"], d2n_root["best"]
    verdict = (
        f"**ct25d scan + ingest (in-process): {n / total:,.0f} slices/s, {total / ref:.2f}x the time of "
        f"dcm2niix run per series ({n / ref:,.0f} slices/s) and {total / root:.2f}x the time of dcm2niix "
        f"run once for the root ({n / root:,.0f} slices/s).**"
    )
    info = machine()
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    report = [
        "## Ingest benchmark",
        "",
        f"Machine: nproc {info['nproc']} (affinity {affinity}), CPU `{info['cpu']}`; both tools pinned "
        f"to core {args.core} (`taskset -c {args.core}`); warm page cache; best of {args.repeats}.",
        f"Versions: python {info['python']}, {info['dcm2niix']}, pydicom {info['pydicom']}, "
        f"zarr {info['zarr']}; blosc-{INGEST['compressor']} level {INGEST['compression_level']} + shuffle, "
        f"chunk {INGEST['chunk_slices']} slices.",
        f"Input: {len(inputs.series)} {'thin' if args.thin else 'plain'} series, {n} slices of "
        f"{int(SITE_B['matrix'])}x{int(SITE_B['matrix'])} int16, uncompressed transfer syntax, "
        f"{inputs.n_bytes / n / 1024:.0f} KiB/file ({inputs.root.name}).",
        "",
        verdict,
        "",
        "| tool | slices | wall s | slices/s | bytes written/slice | time vs dcm2niix |",
        "|---|---:|---:|---:|---:|---:|",
        row("dcm2niix -z n -b n, 1 process per series", ref, f"{nii_per_slice:,.0f} (NIfTI raw)"),
        row(
            f"dcm2niix -z n -b n, 1 process for the root ({d2n_root['n_files']} .nii)",
            d2n_root["best"],
            f"{nii_per_slice:,.0f} (NIfTI raw)",
        ),
        row(
            "ct25d scan (in-process, header read + tables)",
            ours["scan"],
            f"{ours['parquet_bytes'] / n:,.0f} (all parquet)",
        ),
        row(
            "ct25d ingest (in-process, decode + zarr Blosc)",
            ours["ingest"],
            f"{zarr_per_slice:,.0f} (zarr Blosc)",
        ),
        row("ct25d scan + ingest (in-process)", ours["total"], f"{zarr_per_slice:,.0f} (zarr Blosc)"),
        row(
            "ct25d scan + ingest (2 CLI processes, start-up incl.)",
            ours_cli["best"],
            f"{zarr_per_slice:,.0f} (zarr Blosc)",
        ),
        "",
        f"Start-up per process (pinned, best of {args.repeats}): bare python {startup['python']:.3f} s; "
        f"`import ct25d.volumes.ingest, ct25d.dicom.scan` {startup['import']:.3f} s "
        f"(ct25d CLI pays it twice: scan + ingest).",
        f"All repeats (s): dcm2niix {', '.join(f'{t:.3f}' for t in d2n['times'])}; ct25d in-process "
        f"scan/ingest {'; '.join(f'{s:.3f}/{g:.3f}' for s, g in ours['runs'])}; ct25d CLI "
        f"{', '.join(f'{t:.3f}' for t in ours_cli['times'])}.",
        f"Load average (1 min) before/after the timings: {load[0]:.2f} / {os.getloadavg()[0]:.2f} "
        "(other processes on the pinned core inflate both tools' times; compare ratios, rerun if high).",
        "",
        f"Encode-only cost of the same {int(INGEST['chunk_slices'])}-slice chunks (no zarr, no I/O; "
        "pinned, single-threaded) — the floor under `HUStoreWriter.write`:",
        "",
        "| codec | s | MB/s | ratio |",
        "|---|---:|---:|---:|",
        *(
            f"| {c['codec']} | {c['seconds']:.3f} | {c['mb_s']:,.0f} | {c['ratio']:.2f} |"
            for c in ours["codecs"]
        ),
        "",
        *parallel_table(many, n, args.parallel, d2n_root["best"]),
        "### Correctness: dcm2niix NIfTI (x scl_slope + scl_inter) vs ct25d zarr, exact voxel equality",
        "",
        "| series | equal | ct25d -> NIfTI array | detail |",
        "|---|---|---|---|",
        *(
            f"| {c['series']} | {'yes' if c['match'] else 'NO'} | {c['transform']} | {c['detail']} |"
            for c in checks
        ),
    ]
    slower = ours["total"] > min(ref, d2n_root["best"])
    if args.profile == "always" or (args.profile == "auto" and slower):
        log("profiling the ct25d path ...")
        pstats_path = work / "ct25d.pstats"
        spec = {"mode": "profile", "root": str(inputs.root), "labels": str(inputs.labels),
                "work": str(runs / "ct25d-profile"), "pstats": str(pstats_path)}  # fmt: skip
        prof = run_worker(args.core, spec, work / "ct25d-profile.log")
        breakdown, top = profile_summary(pstats_path, args.top)
        report += [
            "",
            f"### Profile of the ct25d path (one warm pass under cProfile: scan {prof['scan']:.3f} s, "
            f"ingest {prof['ingest']:.3f} s; cProfile inflates Python-heavy code)",
            "",
            *breakdown,
            "",
            *top,
            "",
            f"Full profile: `python -m pstats {pstats_path}`",
        ]
    text = "\n".join(report)
    (work / "report.md").write_text(text + "\n")
    print(text)
    ok = all(c["match"] for c in checks)
    log(f"report written to {work / 'report.md'}; voxels {'match' if ok else 'DIFFER'}")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
