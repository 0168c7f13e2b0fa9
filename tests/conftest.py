"""Shared fixtures: a tiny synthetic cohort per layout, written once per test session as real DICOM."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def demo_config() -> dict:
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def tiny_synthetic() -> dict:
    """The demo's `synthetic` block at 64 px with every header quirk frequent (thin series at 2.5 mm)."""
    synthetic = copy.deepcopy(demo_config()["synthetic"])
    for site in synthetic["sites"].values():
        site["matrix"] = 64
        if "thin_thickness_mm" in site:
            site["thin_thickness_mm"] = 2.5
    synthetic.update(compressed_fraction=0.4, wrapped_fraction=0.3, tilt_fraction=0.2, broken_studies=7)
    return synthetic


@pytest.fixture(scope="session")
def cohorts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{layout: cohort folder} for a tiny cohort in each layout: RSNA, CQ500 and a hospital's tree."""
    from ct25d.synth.cohort import generate_cohort

    base = tmp_path_factory.mktemp("synthetic")
    out = {}
    for layout, n, seed, site in (("rsna", 14, 7, "A"), ("cq500", 10, 8, "B"), ("dicom_tree", 8, 9, "C")):
        out[layout] = base / layout
        generate_cohort(out[layout], layout, {"n_studies": n, "seed": seed, "site": site}, tiny_synthetic(),
                        workers=2, progress=False)  # fmt: skip
    return out


def ct_header(**changes: object):
    """A plain CT series header for hand-made test series (the synthetic writer's dataclass)."""
    from ct25d.synth.dicom_writer import SeriesHeader

    base = dict(
        study_uid="2.25.11", series_uid="2.25.12", frame_uid="2.25.13", patient_id="P", patient_name="A^B",
        patient_birth_date="19500101", patient_sex="F", study_date="20200101", study_time="101010",
        accession="A1", study_id="1", study_description="CT HEAD", series_description="Head",
        series_number=2, manufacturer="GE MEDICAL SYSTEMS", model="X", institution="I", kernel="STANDARD",
        kvp=120.0, slice_thickness=5.0, storage="s0",
    )  # fmt: skip
    return SeriesHeader(**{**base, **changes})  # type: ignore[arg-type]


def write_ct_series(folder: Path, n: int = 6, rows: int = 16, header=None, step_mm: float = 5.0,
                    defects: dict[int, str] | None = None) -> list[Path]:  # fmt: skip
    """n axial slices of noise-free ramps, one file each; `defects` {slice: "truncated"|"no_pixels"}."""
    import numpy as np

    from ct25d.synth.dicom_writer import SeriesWriter

    header = header or ct_header()
    writer = SeriesWriter(header, (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), 0.8, rows, rows)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        hu = np.add.outer(np.arange(rows) * 10.0, np.arange(rows)) - 500.0 + k
        paths.append(folder / f"CT{k:04d}.dcm")
        writer.write(paths[-1], hu, f"{header.series_uid}.{k + 1}", k + 1, (-6.0, -6.0, k * step_mm),
                     defect=(defects or {}).get(k, ""))  # fmt: skip
    return paths
