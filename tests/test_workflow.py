"""Real Snakemake runs of the DAG on a tiny synthetic cohort: it completes, a second run does
nothing, and a setting change reruns only the rules that read it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

TINY = yaml.safe_load("""
results: results
datasets:
  rsna: {layout: rsna, role: train, shards: 2, synthetic: {n_studies: 4, seed: 1, site: A}}
  cq500: {layout: cq500, role: external, shards: 1, synthetic: {n_studies: 3, seed: 2, site: B}}
synthetic:
  sites:
    A: {noise_hu: 4.0, fov_mm: 230.0, matrix: 48, thickness_mm: 5.0}
    B: {noise_hu: 9.0, fov_mm: 250.0, matrix: 48, thickness_mm: 5.0}
  broken_studies: 1
""")


def snakemake(workdir: Path, config: dict, *args: str) -> str:
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "snakemake", "all", "--cores", "2", "--snakefile", str(ROOT / "Snakefile"),
           "--directory", str(workdir), "--configfile", str(workdir / "config.yaml"), *args]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def planned_rules(output: str) -> set[str]:
    """Rule names in the job-stats table of a dry run."""
    return set(re.findall(r"^(\w+)\s+\d+\s*$", output, flags=re.M)) - {"total"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("workflow")
    snakemake(workdir, TINY)
    return workdir


@pytest.mark.workflow
def test_first_run_produces_the_ingest_artifacts(workdir: Path) -> None:
    for dataset in ("rsna", "cq500"):
        out = workdir / "results" / dataset
        for name in ("manifest.parquet", "slices.parquet", "rejections.csv", "ingest_summary.json"):
            assert (out / name).is_file(), f"{dataset}/{name}"
        counts = json.loads((out / "ingest_summary.json").read_text())["counts"]
        assert counts["studies_found"] == counts["studies_converted"] + counts["studies_rejected"] > 0
        assert (workdir / "results" / "logs" / "scan" / f"{dataset}.log").stat().st_size > 0
    assert len(list((workdir / "results" / "rsna" / "hu").glob("shard-*.zarr"))) == 2
    # Temporary names never survive a successful run.
    assert not list((workdir / "results").rglob(".*.tmp-*"))


@pytest.mark.workflow
def test_second_run_has_nothing_to_do(workdir: Path) -> None:
    assert "Nothing to be done" in snakemake(workdir, TINY, "-n")


@pytest.mark.workflow
@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("ingest", "compression_level", 5, {"ingest_shard", "ingest_report", "all"}),
        ("ingest", "spacing_tolerance", 0.2, {"scan", "ingest_shard", "ingest_report", "all"}),
    ],
)
def test_a_setting_reruns_only_the_rules_that_read_it(workdir: Path, section, key, value, expected) -> None:
    changed = json.loads(json.dumps(TINY))
    changed.setdefault(section, {})[key] = value
    assert planned_rules(snakemake(workdir, changed, "-n", "--quiet", "rules")) == expected


@pytest.mark.workflow
def test_bad_config_value_is_named(tmp_path: Path) -> None:
    bad = json.loads(json.dumps(TINY))
    bad["ingest"] = {"spacing_tolerence": 0.1}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(bad))
    cmd = [sys.executable, "-m", "snakemake", "all", "-n", "--snakefile", str(ROOT / "Snakefile"),
           "--directory", str(tmp_path), "--configfile", str(tmp_path / "config.yaml")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "spacing_tolerence" in proc.stdout + proc.stderr
