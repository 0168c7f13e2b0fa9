"""QC pictures: montages and the dataset summary are written, non-empty and of the expected size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ct25d.labels import RSNA_LABELS
from ct25d.report.qc import DPI, montage_figsize, sample_studies, summary_table, write_qc
from ct25d.slices import DEFAULT_WINDOWS, SliceStoreWriter

H, W = 20, 24


def tiny_index(tmp_path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two datasets (one with slice labels, one external with study labels only) in one store."""
    rng = np.random.default_rng(0)
    store = tmp_path / "slices.zarr"
    specs = [("rsna", "train", "A", f"st-{k}", 5 + k, k % 3, int(k % 2 == 0)) for k in range(5)]
    specs += [("cq500", "external", "B", f"cq-{k}", 9, -1, k) for k in range(2)]
    windows = [{"name": w.name, "center": w.center, "width": w.width} for w in DEFAULT_WINDOWS]
    slice_rows, study_rows = [], []
    with SliceStoreWriter(store, {"stage": "test"}) as writer:
        for dataset, role, site, study_id, n, fold, positive in specs:
            slices = rng.integers(0, 256, (n, 3, H, W), dtype=np.uint8)
            writer.write_study(study_id, slices, {"spacing_zyx": [5.0, 0.9, 0.9], "windows": windows})
            common = {"dataset": dataset, "role": role, "site": site, "study_id": study_id,
                      "patient_id": f"pt-{study_id}", "store": str(store), "fold": fold}  # fmt: skip
            study_rows.append({**common, "n_slices": n, **dict.fromkeys(RSNA_LABELS, positive)})
            for z in range(n):
                lesion = pd.NA if dataset == "cq500" else int(positive and 1 <= z <= 2)
                slice_rows.append({**common, "z": z, "slice_id": f"{study_id}-{z}", "position_mm": 5.0 * z,
                                   **dict.fromkeys(RSNA_LABELS, lesion)})  # fmt: skip
    index = pd.DataFrame(slice_rows).astype(dict.fromkeys(RSNA_LABELS, "Int8"))
    studies = pd.DataFrame(study_rows).astype(dict.fromkeys(RSNA_LABELS, "Int8"))
    return index, studies


def test_qc_files_written_with_expected_size(tmp_path: Path) -> None:
    index, studies = tiny_index(tmp_path)
    out = write_qc(index, studies, tmp_path / "qc", per_dataset=2, seed=0)
    assert len(out["montages"]) == 4  # 2 per dataset
    for path in out["montages"]:
        study_id = path.stem.split("__")[1]
        n = int(studies.set_index("study_id").loc[study_id, "n_slices"])
        width_in, height_in = montage_figsize(n, H, W)
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.size == (round(width_in * DPI), round(height_in * DPI))
            assert np.asarray(image.convert("RGB")).std() > 10  # not blank
    with Image.open(out["summary_png"]) as image:
        assert image.size == (1400, 900)
    summary = pd.read_csv(out["summary_csv"])
    any_study = summary[(summary["level"] == "study") & (summary["label"] == "any")]
    assert any_study["total"].sum() == len(studies)
    assert any_study["positives"].sum() == int(studies["any"].sum())
    cq_slices = summary[(summary["level"] == "slice") & (summary["dataset"] == "cq500")]
    assert (cq_slices["total"] == 0).all()  # CQ500 has no slice labels


def test_sample_is_deterministic_and_includes_positives(tmp_path: Path) -> None:
    _, studies = tiny_index(tmp_path)
    a = sample_studies(studies, 2, seed=3)
    b = sample_studies(studies.sample(frac=1.0, random_state=1), 2, seed=3)
    assert a["study_id"].tolist() == b["study_id"].tolist()
    for _, part in a.groupby("dataset"):
        assert len(part) == 2 and (part["any"] == 1).any()
    table = summary_table(*tiny_index(tmp_path / "again"))
    assert set(table["level"]) == {"study", "slice"} and set(table["label"]) == set(RSNA_LABELS)
