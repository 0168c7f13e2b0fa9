"""Synthetic cohort: determinism, archive formats, decodability of every header variant, truth."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk
import zarr

from ct25d.labels import RSNA_LABELS, read_cq500_reads, read_rsna_labels
from ct25d.synth.cohort import BROKEN_KINDS, generate_cohort, rsna_image_id
from ct25d.synth.dicom_writer import (
    STORAGE,
    TRANSFER_SYNTAX,
    SeriesHeader,
    SliceGeometry,
    hu_range,
    write_slice,
)
from ct25d.synth.phantom import PlaneStack, random_anatomy, render_planes

# RSNA-style SOPInstanceUIDs ("ID_<hex>") are invalid UIs, exactly as in the real archive.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI")

SITES = {
    "A": {
        "noise_hu": 4.0,
        "fov_mm": 230.0,
        "matrix": 64,
        "thickness_mm": 5.0,
        "hu_offset": 0.0,
        "blur_mm": 0.7,
    },
    "B": {
        "noise_hu": 9.0,
        "fov_mm": 250.0,
        "matrix": 64,
        "thickness_mm": 5.0,
        "thin_thickness_mm": 2.5,
        "hu_offset": 4.0,
        "blur_mm": 0.3,
    },
}
SYNTH = {
    "sites": SITES,
    "hemorrhage_fraction": 0.7,
    "ischemic_fraction": 0.3,
    "compressed_fraction": 0.4,
    "wrapped_fraction": 0.3,
    "tilt_fraction": 0.3,
    "broken_studies": 7,
}
LABELS7 = [*RSNA_LABELS, "ischemic"]
# The `rsna` fixture's dataset block; tests regenerate it to check determinism.
RSNA_DATASET = {"n_studies": 8, "seed": 3, "site": "A"}


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def rsna(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rsna") / "cohort"
    generate_cohort(out, "rsna", RSNA_DATASET, SYNTH, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def cq500(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cq500") / "cohort"
    generate_cohort(out, "cq500", {"n_studies": 8, "seed": 5, "site": "B"}, SYNTH, workers=2, progress=False)
    return out


def test_determinism_across_runs_and_workers(rsna: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate_cohort(again, "rsna", RSNA_DATASET, SYNTH, workers=2, progress=False)
    first, second = _tree_digest(rsna), _tree_digest(again)
    assert len(first) > 200
    assert first == second
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary sibling was renamed away


def test_study_independent_of_cohort_size(rsna: Path, tmp_path: Path) -> None:
    small = tmp_path / "small"
    generate_cohort(
        small,
        "rsna",
        {**RSNA_DATASET, "n_studies": 3},
        {**SYNTH, "broken_studies": 0},
        workers=1,
        progress=False,
    )
    a = pd.read_parquet(rsna / "truth" / "slices.parquet")
    b = pd.read_parquet(small / "truth" / "slices.parquet")
    s0 = b["study_uid"].iloc[0]
    assert a.loc[a.study_uid == s0, "sop_uid"].tolist() == b.loc[b.study_uid == s0, "sop_uid"].tolist()
    f = b.loc[b.study_uid == s0, "path"].iloc[5]
    assert (rsna / f).read_bytes() == (small / f).read_bytes()


def test_rsna_layout_and_labels_match_truth(rsna: Path) -> None:
    files = sorted((rsna / "stage_2_train").iterdir())
    assert all(f.name.startswith("ID_") and len(f.stem) == 12 for f in files)
    raw = pd.read_csv(rsna / "stage_2_train.csv")
    assert list(raw.columns) == ["ID", "Label"]
    assert raw.duplicated().sum() >= 2 * 6  # exact duplicate blocks, as in the real file
    assert raw["ID"].str.rsplit("_", n=1).str[1].iloc[:6].tolist() == list(RSNA_LABELS)
    labels = read_rsna_labels(rsna / "stage_2_train.csv").set_index("image_id")
    assert set(labels.index) == {f.stem for f in files}
    slices = pd.read_parquet(rsna / "truth" / "slices.parquet").set_index("sop_uid")
    rej = pd.read_csv(rsna / "truth" / "expected_rejections.csv")
    assert set(labels.index) == set(slices.index) | set(rej["sop_uid"].dropna())
    common = slices.index
    assert (labels.loc[common, list(RSNA_LABELS)].to_numpy() == slices[list(RSNA_LABELS)].to_numpy()).all()
    assert slices["any"].sum() > 10  # hemorrhage is present, so the comparison is not vacuous
    assert (slices["any"] == slices[list(RSNA_LABELS[:5])].max(axis=1)).all()
    for f in files[:20]:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        assert ds.SOPInstanceUID == f.stem


def test_patients_repeat_and_study_labels(rsna: Path, tmp_path: Path) -> None:
    out = tmp_path / "many"
    generate_cohort(
        out,
        "rsna",
        {"n_studies": 30, "seed": 11, "site": "A"},
        {**SYNTH, "sites": {"A": {**SITES["A"], "matrix": 32}}, "broken_studies": 0},
        workers=2,
        progress=False,
    )
    studies = pd.read_parquet(out / "truth" / "studies.parquet")
    assert studies["patient_id"].duplicated().any()
    assert studies["study_uid"].is_unique
    slices = pd.read_parquet(out / "truth" / "slices.parquet")
    per_study = slices.groupby("study_uid")[LABELS7].max()
    assert (per_study.loc[studies.study_uid].to_numpy() == studies[LABELS7].to_numpy()).all()
    assert studies["any"].sum() >= 10 and studies["any"].sum() < 30
    assert set(studies["n_slices"]) <= set(range(28, 37))


def test_lesion_runs_contiguous_and_masks_agree(rsna: Path, cq500: Path) -> None:
    for root in (rsna, cq500):
        slices = pd.read_parquet(root / "truth" / "slices.parquet")
        group = zarr.open_group(str(root / "truth" / "masks.zarr"), mode="r")
        plain = slices[slices["plain"]].sort_values(["study_uid", "z_index"])
        for uid, s in plain.groupby("study_uid"):
            mask = group[uid][...]
            assert mask.shape[0] == len(s)
            for bit, name in enumerate([*RSNA_LABELS[:5], "ischemic"]):
                present = ((mask >> bit) & 1).reshape(len(s), -1).any(axis=1).astype(int)
                assert (present == s[name].to_numpy()).all(), (uid, name)
                idx = np.flatnonzero(present)
                if len(idx):
                    assert idx[-1] - idx[0] + 1 == len(idx), (uid, name, idx)
            assert (np.diff(s["position_mm"].to_numpy()) > 0).all()


def test_cq500_layout_reads_and_series(cq500: Path) -> None:
    reads = read_cq500_reads(cq500 / "reads.csv")
    studies = pd.read_parquet(cq500 / "truth" / "studies.parquet").set_index("name")
    assert list(reads["name"]) == [f"CQ500-CT-{i}" for i in range(8)]
    assert set(reads["category"]) <= {"B1", "B2"}
    for _, row in reads.iterrows():
        wrong = set(filter(None, studies.loc[row["name"], "reads_majority_error"].split(",")))
        for label in RSNA_LABELS:
            assert (row[label] == studies.loc[row["name"], label]) == (label not in wrong)
    header = (cq500 / "reads.csv").read_text().splitlines()[0].split(",")
    assert header[:4] == ["name", "Category", "R1:ICH", "R1:IPH"] and header[-1] == "R3:MidlineShift"
    styles = set()
    for name, st in studies.iterrows():
        n = int(name.split("-")[-1])
        series_dir = cq500 / f"CQ500CT{n} CQ500CT{n}" / "Unknown Study"
        folders = {p.name for p in series_dir.iterdir()}
        assert st["series_description"] in folders and len(folders) >= 2
        assert any("THIN" in f.upper() or f.endswith("2.5mm") for f in folders)
        styles.add("PRE CONTRAST" in st["series_description"])
        if folders - {"3D VR", "CT 5mm", "CT Plain", "CT 4.8mm"} == {
            "CT PRE CONTRAST THIN",
            "CT POST CONTRAST",
        }:
            styles.add("thin only")
            assert st["series_description"] == "CT PRE CONTRAST THIN"
    assert styles == {True, False, "thin only"}  # every naming style of the real archive


def test_broken_inputs(rsna: Path, cq500: Path) -> None:
    for root, layout in ((rsna, "rsna"), (cq500, "cq500")):
        studies = pd.read_parquet(root / "truth" / "studies.parquet")
        assert set(studies["broken"]) - {""} == set(BROKEN_KINDS[layout])
        rej = pd.read_csv(root / "truth" / "expected_rejections.csv", keep_default_na=False)
        # kept (flagged, or split into its series) rather than set aside
        assert set(rej["reason_kind"]) == set(BROKEN_KINDS[layout]) - {"missing_slice", "mixed_series_folder"}
        for _, r in rej.iterrows():
            path = root / r["path"]
            assert path.exists()
            kind = r["reason_kind"]
            if kind == "truncated_pixel_data":
                ds = pydicom.dcmread(path)
                with pytest.raises((ValueError, AttributeError)):
                    ds.pixel_array  # noqa: B018
            elif kind == "no_pixel_data":
                assert "PixelData" not in pydicom.dcmread(path)
            elif kind == "not_ct":
                assert pydicom.dcmread(path).Modality != "CT"
            elif kind == "secondary_capture":
                ds = pydicom.dcmread(path)
                assert ds.Modality == "CT" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
                assert ds.BitsStored == 8 and (
                    ds.SamplesPerPixel == 3 or ds.PhotometricInterpretation == "MONOCHROME2"
                )
            elif kind in ("duplicate_slice", "conflicting_duplicate"):
                folder = path.parent if path.is_file() else path
                dss = [pydicom.dcmread(f) for f in sorted(folder.iterdir())]
                mine = [d for d in dss if d.SeriesInstanceUID == r["series_uid"]]
                z = [round(float(d.ImagePositionPatient[2]), 3) for d in mine]
                twins = [d for d in mine if z.count(round(float(d.ImagePositionPatient[2]), 3)) == 2]
                assert len(twins) == 2
                same = np.array_equal(twins[0].pixel_array, twins[1].pixel_array)
                assert same == (kind == "duplicate_slice")
            elif kind == "single_slice":
                files = sorted(path.iterdir()) if path.is_dir() else [path]
                mine = [
                    f
                    for f in files
                    if pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID == r["series_uid"]
                ]
                assert len(mine) == 1
        missing = studies[studies["broken"] == "missing_slice"]
        slices = pd.read_parquet(root / "truth" / "slices.parquet")
        for uid in missing["series_uid"]:
            steps = np.diff(np.sort(slices.loc[slices["series_uid"] == uid, "position_mm"]))
            assert steps.max() == pytest.approx(2 * np.median(steps), rel=1e-3)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tree") / "cohort"
    sites = {"C": {**SITES["A"], "noise_hu": 6.0}}
    generate_cohort(out, "dicom_tree", {"n_studies": 6, "seed": 4, "site": "C"}, {**SYNTH, "sites": sites},
                    workers=2, progress=False)  # fmt: skip
    return out


def test_dicom_tree_layout_labels_and_enhanced_files(tree: Path) -> None:
    studies = pd.read_parquet(tree / "truth" / "studies.parquet")
    labels = pd.read_csv(tree / "labels.csv")
    assert list(labels.columns) == ["study", *RSNA_LABELS, "stroke_type"]
    assert list(labels["study"]) == list(studies["folder"])
    assert all((tree / "archive" / folder).is_dir() for folder in studies["folder"])
    files = [p for p in (tree / "archive").rglob("*") if p.is_file()]
    assert files and all(p.suffix == "" for p in files)  # PACS exports often have no extension
    slices = pd.read_parquet(tree / "truth" / "slices.parquet")
    enhanced = studies[studies["enhanced"]]
    assert len(enhanced) >= 2
    for st in enhanced.itertuples():
        frames = slices[slices["series_uid"] == st.series_uid]
        assert frames["path"].nunique() == 1 and sorted(frames["frame"]) == list(range(st.n_slices))
        ds = pydicom.dcmread(tree / frames["path"].iloc[0])
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2.1" and ds.NumberOfFrames == st.n_slices
        assert "ImagePositionPatient" not in ds  # only in the functional groups
        z = [
            float(f.PlanePositionSequence[0].ImagePositionPatient[2])
            for f in ds.PerFrameFunctionalGroupsSequence
        ]
        assert np.all(np.diff(z) > 0) or np.all(np.diff(z) < 0)
    # a plain and a bone series share a description; only the kernel tells them apart
    for folder in studies.loc[studies["study_index"] % 2 == 1, "folder"]:
        series = [d for d in (tree / "archive" / folder).iterdir() if "Screen" not in d.name]
        kernels = {
            str(pydicom.dcmread(next(d.iterdir()), stop_before_pixels=True).ConvolutionKernel) for d in series
        }
        assert len(series) == 2 and len(kernels) == 2


@pytest.mark.skipif(
    shutil.which("dcm2niix") is None, reason="dcm2niix is not installed (apt-get install dcm2niix)"
)
def test_dcm2niix_reads_the_enhanced_files(tree: Path, tmp_path: Path) -> None:
    """An independent reader finds the frames' geometry in the functional groups."""
    studies = pd.read_parquet(tree / "truth" / "studies.parquet")
    st = studies[studies["enhanced"] & (studies["tilt_deg"] == 0)].iloc[0]
    slices = pd.read_parquet(tree / "truth" / "slices.parquet")
    path = tree / slices.loc[slices["series_uid"] == st["series_uid"], "path"].iloc[0]
    res = subprocess.run(["dcm2niix", "-z", "n", "-f", "enh", "-o", str(tmp_path), str(path.parent)],
                         capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    image = sitk.ReadImage(str(next(tmp_path.glob("enh*.nii"))))
    assert image.GetSize() == (64, 64, st["n_slices"])
    assert image.GetSpacing()[2] == pytest.approx(5.0, abs=0.01)


def _header(**kw: object) -> SeriesHeader:
    base = dict(
        study_uid="2.25.1",
        series_uid="2.25.2",
        frame_uid="2.25.3",
        patient_id="P1",
        patient_name="SYNTH^PATIENT0001",
        patient_birth_date="19500101",
        patient_sex="M",
        study_date="20180101",
        study_time="101010",
        accession="ACC1",
        study_id="1",
        study_description="CT HEAD",
        series_description="CT Plain",
        series_number=2,
        manufacturer="GE",
        model="X",
        institution="SYNTH",
        kernel="STANDARD",
        kvp=120.0,
        slice_thickness=5.0,
    )
    base.update(kw)
    return SeriesHeader(**base)  # type: ignore[arg-type]


def _decode(ds: pydicom.Dataset) -> np.ndarray:
    """The reader's repair, written out independently of the package."""
    arr = ds.pixel_array.astype(np.float64)
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    if ds.BitsStored == 12 and ds.PixelRepresentation == 0 and intercept > -100:
        x = arr + 1000
        x[x >= 4096] -= 4096
        return x * slope - 1000
    return arr * slope + intercept


@pytest.mark.parametrize("storage", sorted(STORAGE))
@pytest.mark.parametrize("syntax", sorted(TRANSFER_SYNTAX))
def test_storage_variants_round_trip(storage: str, syntax: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    hu = rng.uniform(-1100, 3300, (48, 40)).astype(np.float32)
    hu[0, :4] = [-1000.0, 0.5, 1.5, 3095.0]
    tilt = np.deg2rad(18.0)
    geo = SliceGeometry([-100.0, -90.0, 12.5], [1, 0, 0], [0, np.cos(tilt), -np.sin(tilt)], 0.8)
    path = tmp_path / "x.dcm"
    write_slice(
        path,
        _header(
            storage=storage,
            transfer_syntax=syntax,
            window_center=(40.0, 400.0),
            window_width=(80.0, 2000.0),
            tilt_deg=18.0,
        ),
        geo,
        hu,
        "ID_0123abcde",
        7,
    )
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == TRANSFER_SYNTAX[syntax]
    expected = np.clip(np.rint(hu), *hu_range(storage))
    assert np.array_equal(_decode(ds), expected)
    assert expected[0, 1] == 0.0 and expected[0, 2] == 2.0  # round half to even
    if storage == "wrap":
        assert ds.BitsStored == 12 and float(ds.RescaleIntercept) == 0 and ds.pixel_array.max() <= 4095
    assert list(ds.WindowCenter) == [40, 400]
    iop = np.array(ds.ImageOrientationPatient, dtype=float)
    assert np.isclose(np.degrees(np.arccos(iop[4])), 18.0, atol=1e-3)
    image = sitk.ReadImage(str(path))
    stored = sitk.GetArrayFromImage(image)[0]
    if storage != "wrap":  # GDCM applies slope/intercept itself
        assert np.array_equal(stored, expected)


def test_phantom_tissue_ranges() -> None:
    rng = np.random.default_rng(4)
    anat = random_anatomy(rng, rng)
    z = anat.center[2] + 30.0  # above the ventricles' floor, through the vault
    ps = 1.0
    planes = PlaneStack(
        np.array([[-127.5, -127.5, z]]), np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), ps, 256, 256
    )
    hu, bits = render_planes(anat, [], planes)
    hu = hu[0]
    assert bits.max() == 0
    assert hu.min() == -1000.0
    assert 1300 <= hu.max() <= 1800  # cortical bone
    brain = hu[(hu > 0) & (hu < 50)]
    assert brain.size > 5000
    center = hu[118:138, 118:138]
    assert np.isin(np.unique(center), [anat.grey_hu, anat.white_hu, anat.grey_hu - 2, 5.0, 55.0]).all() or (
        np.abs(center).max() < 60
    )
    vals, counts = np.unique(np.round(hu), return_counts=True)
    common = set(vals[np.argsort(counts)[-6:]])
    assert {round(anat.grey_hu), round(anat.white_hu), -1000.0} <= common
    assert (np.isclose(hu, 5.0)).sum() > 200  # CSF rim, sulci, ventricles
    table = hu[int((anat.table_y + 127.5) / ps) + 4 :, 100:156]
    assert np.isclose(table, -300.0).any() and np.isclose(table, 100.0).any()


def test_simpleitk_reads_plain_series(cq500: Path) -> None:
    studies = pd.read_parquet(cq500 / "truth" / "studies.parquet")
    # these kinds add a bad file to the plain folder or leave a gap; the others leave it intact
    bad = ["truncated_pixel_data", "no_pixel_data", "not_ct", "conflicting_duplicate", "missing_slice"]
    ok = studies[~studies["broken"].isin(bad)]
    assert len(ok) >= 2
    for _, st in ok.iterrows():
        folder = cq500 / st["folder"] / "Unknown Study" / st["series_description"]
        reader = sitk.ImageSeriesReader()
        names = reader.GetGDCMSeriesFileNames(str(folder), st["series_uid"])
        assert len(names) == st["n_slices"]
        reader.SetFileNames(names)
        image = reader.Execute()
        arr = sitk.GetArrayFromImage(image)
        assert arr.shape == (st["n_slices"], 64, 64)
        if st["tilt_deg"] == 0:
            assert np.isclose(image.GetSpacing()[2], 5.0, atol=0.01)
        # pydicom agrees with GDCM on every slice, in GDCM's order
        dss = [pydicom.dcmread(n) for n in names]
        hu = np.stack([_decode(d) for d in dss])
        assert -1100 < hu.min() < -900 and hu.max() > 900
        if st["storage"] == "wrap":  # GDCM does not know the repair: it returns the stored values
            assert np.array_equal(np.stack([d.pixel_array for d in dss]), arr)
        else:
            assert np.array_equal(hu, arr)


@pytest.mark.skipif(shutil.which("dcm2niix") is None, reason="dcm2niix not installed")
def test_dcm2niix_converts_plain_series(cq500: Path, tmp_path: Path) -> None:
    studies = pd.read_parquet(cq500 / "truth" / "studies.parquet")
    st = studies[studies["broken"] == ""].iloc[-1]
    tilted = st["tilt_deg"] != 0
    folder = cq500 / st["folder"] / "Unknown Study" / st["series_description"]
    res = subprocess.run(
        ["dcm2niix", "-z", "n", "-o", str(tmp_path), str(folder)], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout + res.stderr
    niftis = list(tmp_path.glob("*.nii"))
    assert len(niftis) >= 1
    image = sitk.ReadImage(str(niftis[0]))
    assert image.GetSize()[0] == 64
    assert tilted or image.GetSize()[:3] == (64, 64, st["n_slices"])  # tilt is resampled away


def test_rsna_ids_unique() -> None:
    ids = {rsna_image_id(7, s, f) for s in range(300) for f in range(40)}
    assert len(ids) == 300 * 40
    assert all(len(i) == 12 for i in ids)
