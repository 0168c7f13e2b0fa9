"""Series classification on real archives' names, the ranking and its reasons, the override file."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import demo_config

from ct25d.cli import main
from ct25d.dicom.choice import classify, kernel_kind, rank_series

# The CQ500 folder names of anchors.md, by what they are, and other archives' conventions.
NAMES = {
    "plain": [
        "CT Plain",
        "CT 5mm",
        "CT Plain 3mm",
        "CT BRAIN PLAIN",
        "CT 5 MM PRE CONTRAST",
        "CT PLAIN THIN",
        "CT Thin Plain",
        "CT 0.625mm",
        "CT PRE CONTRAST THIN",
        "CT THIN STD",
        "CT Plain-2",
        "CT HEAD WO CONTRAST",
        "HEAD NON-CONTRAST",
        "Head NC 5mm",
        "CT POST FOSSA 2.5mm",
        "Schädel nativ",
        # a POST that is not contrast, and IV said not to be given
        "POSTERIOR FOSSA 2mm",
        "CT HEAD POST OP",
        "CT POST-OP 5mm",
        "CT Head post trauma",
        "CT HEAD NO IV",
        "HEAD W/O IV 5mm",
    ],
    "contrast": [
        "CT POST CONTRAST",
        "CT CONTRAST",
        "CT 4cc sec 150cc D3D on",
        "CT POST CONTRAST-2",
        "CTA HEAD",
        "HEAD W CONTRAST",
        "CECT BRAIN",
        "Head C+ 5mm",
        "CECT",
        "C+",
        "CT ORAL IV",
        "10cc IV",
        "IV CONTRAST HEAD",
        "CT BRAIN POST",
        "POST 5mm",
        "CT 5mm POST-2",
    ],
    "bone": ["CT BONE", "CT PRE CONTRAST BONE", "CT BONE-3"],
    "localizer": ["SCOUT", "Topogram 0.6 T20s", "Localizer"],
}


@pytest.mark.parametrize(("kind", "description"), [(k, d) for k, names in NAMES.items() for d in names])
def test_descriptions_of_real_archives(kind: str, description: str) -> None:
    got = classify(description, ["ORIGINAL\\PRIMARY\\AXIAL"], "", "", "")
    assert got.kind == kind, got.why
    assert repr(description) in got.why or got.why.startswith("no contrast")


@pytest.mark.parametrize(
    ("tags", "kernel", "image_type", "kind", "why"),
    [
        (("IOHEXOL 350", ""), "", "ORIGINAL\\PRIMARY\\AXIAL", "contrast", "ContrastBolusAgent 'IOHEXOL 350'"),
        (
            ("", "ContrastBolusRoute=IV"),
            "",
            "ORIGINAL\\PRIMARY\\AXIAL",
            "contrast",
            "contrast tag ContrastBolusRoute=IV",
        ),
        (("NONE", "ContrastBolusVolume=0"), "", "ORIGINAL\\PRIMARY\\AXIAL", "plain", "no contrast"),
        (("", ""), "H70h", "ORIGINAL\\PRIMARY\\AXIAL", "bone", "ConvolutionKernel 'H70h'"),
        (("", ""), "BONEPLUS", "ORIGINAL\\PRIMARY\\AXIAL", "bone", "ConvolutionKernel"),
        (("", ""), "H40s", "ORIGINAL\\PRIMARY\\LOCALIZER", "localizer", "ImageType LOCALIZER"),
        (
            ("", ""),
            "",
            "DERIVED\\PRIMARY\\PERFUSION\\RCBF",
            "derived",
            "ImageType DERIVED\\PRIMARY\\PERFUSION",
        ),
        (("", ""), "", "DERIVED\\SECONDARY\\MIP", "derived", "ImageType DERIVED\\SECONDARY\\MIP: MIP is"),
        (("", ""), "", "DERIVED\\PRIMARY\\AXIAL\\SUBTRACTION", "derived", "ImageType DERIVED"),
        (("", ""), "", "DERIVED\\SECONDARY\\REFORMATTED", "plain", "no contrast"),  # a reformat is anatomy
    ],
)
def test_tags_kernel_and_image_type_come_before_the_description(tags, kernel, image_type, kind, why) -> None:
    got = classify("Head 5mm", [image_type], kernel, *tags)
    assert (got.kind, got.why.startswith(why)) == (kind, True), got.why


@pytest.mark.parametrize(
    ("description", "tags", "kind", "why"),
    [
        ("CT POST CONTRAST", ("NONE", ""), "plain",
         "no contrast: ContrastBolusAgent 'NONE', over the description's 'POST CONTRAST'"),
        ("CT ORAL IV", ("", "ContrastBolusRoute=NONE"), "plain",
         "no contrast: ContrastBolusRoute 'NONE', over the description's 'IV'"),
        ("CT PLAIN", ("", "ContrastBolusRoute=IV"), "contrast", "contrast tag ContrastBolusRoute=IV"),
        ("CT PLAIN", ("OMNIPAQUE", ""), "contrast", "ContrastBolusAgent 'OMNIPAQUE'"),
        ("CT POST CONTRAST", ("", "ContrastBolusRoute="), "contrast", "description 'CT POST CONTRAST' says"),
        ("CT POST CONTRAST BONE", ("NO", ""), "bone", "description 'CT POST CONTRAST BONE' says 'BONE'"),
        ("CT 5mm", ("", "ContrastBolusVolume=0"), "plain", "no contrast tag"),  # a volume decides nothing
    ],
)  # fmt: skip
def test_a_contrast_agent_or_route_decides_over_the_description(description, tags, kind, why) -> None:
    got = classify(description, ["ORIGINAL\\PRIMARY\\AXIAL"], "", *tags)
    assert (got.kind, got.why.startswith(why)) == (kind, True), got.why


@pytest.mark.parametrize(
    ("kernel", "kind"),
    [
        ("STANDARD", "soft"),
        ("H40s", "soft"),
        ("Hr38\\3", "soft"),
        ("J70h", "sharp"),
        ("BONE", "sharp"),
        ("UB", "soft"),
        ("YC", "sharp"),
        ("FC21", "soft"),
        ("FC30", "sharp"),
        ("", "unknown"),
        ("XYZ", "unknown"),
    ],
)
def test_kernel_kinds(kernel: str, kind: str) -> None:
    assert kernel_kind(kernel) == kind


def series(**rows: dict) -> pd.DataFrame:
    base = {"study_id": "st-1", "series_id": "se", "series_description": "", "path": "p", "n_files": 30,
            "slice_thickness": 5.0, "kernel": "H40s", "kernel_kind": "soft", "series_class": "plain",
            "class_why": "x", "geometry_flags": "", "excluded": ""}  # fmt: skip
    return pd.DataFrame([{**base, "unit": unit, **row} for unit, row in rows.items()])


def test_ranking_prefers_plain_then_thickness_then_kernel_then_regular() -> None:
    table = series(
        contrast={"series_class": "contrast", "class_why": "description 'CT POST CONTRAST'"},
        thin={"slice_thickness": 0.625, "n_files": 240},
        unknown_kernel={"kernel": "", "kernel_kind": "unknown"},
        irregular={"geometry_flags": "irregular slice spacing: 1 gap(s)"},
        best={},
        broken={"excluded": "single slice: a volume needs at least 2"},
    )
    ranked = rank_series(table, 5.0, ("plain",)).set_index("unit")
    assert list(ranked.sort_values("rank").query("rank >= 0").index) == [
        "best",
        "irregular",
        "unknown_kernel",
        "thin",
    ]
    assert ranked.loc["best", "why"].startswith("first choice: plain")
    assert ranked.loc["irregular", "why"] == "rank 1: irregular slice spacing"
    assert ranked.loc["unknown_kernel", "why"].startswith("rank 2: unknown kernel '' ranks after soft 'H40s'")
    assert ranked.loc["thin", "why"] == "rank 3: thickness 0.625 mm is further from 5 mm than 5 mm"
    assert ranked.loc["contrast", "rank"] == -1
    assert (
        ranked.loc["contrast", "why"] == "not a candidate: contrast series (description 'CT POST CONTRAST')"
    )
    assert ranked.loc["broken", "why"] == "not a candidate: single slice: a volume needs at least 2"
    # accept_series [plain, contrast]: a contrast series becomes a candidate after every plain one
    both = rank_series(table, 5.0, ("plain", "contrast")).set_index("unit")
    assert both.loc["contrast", "rank"] == 4


def run_scan(root: Path, labels: Path, out: Path, override: Path | None = None) -> int:
    args = ["scan", "--root", str(root), "--dataset", json.dumps({"layout": "cq500", "role": "external"}),
            "--labels", str(labels), "--shards", "1", "--settings", json.dumps(demo_config()["ingest"]),
            "--out", str(out)]  # fmt: skip
    return main(args + (["--override", str(override)] if override else []))


def test_override_file_chooses_the_series(cohorts, tmp_path: Path, caplog) -> None:
    root = cohorts["cq500"]
    assert run_scan(root, root / "reads.csv", tmp_path / "plain") == 0
    ranked = pd.read_parquet(tmp_path / "plain" / "series.parquet")
    studies = pd.read_parquet(tmp_path / "plain" / "studies.parquet").set_index("study_id")
    # a study with a second candidate: make that one first, naming the study by its folder
    study_id = ranked.loc[ranked["rank"] == 1, "study_id"].iloc[0]
    second = ranked[(ranked["study_id"] == study_id) & (ranked["rank"] == 1)].iloc[0]
    number = studies.loc[study_id, "name"].split("-")[-1]
    folder = f"CQ500CT{number} CQ500CT{number}"
    (tmp_path / "override.csv").write_text(f"study,series\n{folder},{Path(second['unit']).name}\n")
    assert run_scan(root, root / "reads.csv", tmp_path / "chosen", tmp_path / "override.csv") == 0
    chosen = pd.read_parquet(tmp_path / "chosen" / "series.parquet").set_index(["study_id", "unit"])
    assert chosen.loc[(study_id, second["unit"]), "rank"] == 0
    assert chosen.loc[(study_id, second["unit"]), "why"].startswith(
        "first choice: chosen by the override file"
    )
    # a bone series is never a candidate, unless the user says so
    bone = ranked[ranked["series_class"] == "bone"].iloc[0]
    name = studies.loc[bone["study_id"], "name"]
    (tmp_path / "bone.csv").write_text(f"study,series\n{name},{bone['series_description']}\n")
    assert run_scan(root, root / "reads.csv", tmp_path / "bone", tmp_path / "bone.csv") == 0
    forced = pd.read_parquet(tmp_path / "bone" / "series.parquet").set_index(["study_id", "unit"])
    assert forced.loc[(bone["study_id"], bone["unit"]), "rank"] == 0
    (tmp_path / "bad.csv").write_text("study,series\nCQ500-CT-999,CT Plain\n")
    assert run_scan(root, root / "reads.csv", tmp_path / "bad", tmp_path / "bad.csv") == 2
    assert "row 2: study 'CQ500-CT-999' matches 0 studies" in caplog.records[-1].getMessage()
