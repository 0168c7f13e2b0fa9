"""Generate a deterministic synthetic head-CT cohort as real DICOM in the RSNA, CQ500 or a
hospital's own (`dicom_tree`) layout.

The demo needs data the ingest reads exactly like the real archives, with the real archives'
quirks and defects, plus ground truth the real archives do not have (voxel masks, the list of
inputs that must be rejected). Study k depends only on (seed, k): it is the same whatever the
cohort size. Studies are generated one at a time (optionally in worker processes), so memory is
bounded by one study; the whole cohort is written into a temporary sibling folder and renamed at
the end, so an interrupted run never looks complete.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import math
import multiprocessing
import os
import sys
from collections.abc import Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from ct25d.atomic import atomic_path, write_parquet
from ct25d.errors import ConfigError
from ct25d.labels import CQ500_FIELDS, CQ500_READERS, CQ500_TO_RSNA, RSNA_LABELS, SUBTYPES
from ct25d.provenance import stamp
from ct25d.synth.dicom_writer import (
    SeriesHeader,
    SeriesWriter,
    SliceGeometry,
    write_enhanced_series,
    write_secondary_capture,
    write_slice,
)
from ct25d.synth.phantom import (
    BIT,
    DIFFICULTIES,
    LESION_KINDS,
    NO_MIMICS,
    Anatomy,
    Lesion,
    Mimics,
    PlaneStack,
    acquire,
    apply_motion,
    faint_lesions,
    keep_contiguous,
    random_anatomy,
    random_lesions,
    random_mimics,
    render_planes,
    slab_average,
)

LAYOUTS = ("rsna", "cq500", "dicom_tree")
RSNA_FOLDER = "stage_2_train"
TREE_FOLDER = "archive"  # dicom_tree: <patient>/<study>/<number>_<description>/IM00001 below it
# Deliberately broken or unusual inputs, cycled in this order as `broken_studies` grows. Each must
# end as the real archives' would: dropped or refused with its reason, or kept and flagged.
BROKEN_KINDS: dict[str, tuple[str, ...]] = {
    "rsna": ("truncated_pixel_data", "no_pixel_data", "not_ct", "missing_slice", "single_slice",
             "secondary_capture", "duplicate_slice"),
    "cq500": ("truncated_pixel_data", "no_pixel_data", "not_ct", "single_slice", "mixed_series_folder",
              "secondary_capture", "conflicting_duplicate"),
    "dicom_tree": ("secondary_capture", "missing_slice", "no_pixel_data"),
}  # fmt: skip
_VENDORS = (
    ("GE MEDICAL SYSTEMS", "LightSpeed VCT", "STANDARD", "BONE"),
    ("SIEMENS", "SOMATOM Definition AS", "H40s", "H70h"),
    ("Philips", "Brilliance 64", "UB", "YC"),
    ("TOSHIBA", "Aquilion ONE", "FC21", "FC30"),
)
_DEFAULT_FRACTIONS = {
    "hemorrhage_fraction": 0.5,
    "ischemic_fraction": 0.15,
    "compressed_fraction": 0.2,
    "wrapped_fraction": 0.1,
    "tilt_fraction": 0.1,
}
_SUB_PLANE_MM = 1.7  # sub-plane spacing used to simulate slab thickness
_Stack = tuple[np.ndarray, np.ndarray, np.ndarray]  # HU (Z, Y, X), lesion bits, positions (Z, 3)


@dataclass(frozen=True)
class CohortSpec:
    """Everything one study needs; picklable so studies can run in worker processes."""

    out_dir: str
    layout: str
    seed: int
    site: str
    site_params: Mapping[str, float]
    fractions: Mapping[str, float]
    broken: Mapping[int, str] = field(default_factory=dict)
    difficulty: str = "demo"  # lesion sizes/contrasts and atrophy (ct25d.synth.phantom.DIFFICULTIES)
    mimics: bool = False  # calcifications, dense sinuses, beam-hardening streaks, head motion


@dataclass
class CohortSummary:
    """What `generate_cohort` wrote."""

    out_dir: Path
    layout: str
    n_studies: int
    n_files: int
    n_broken: int


@dataclass
class _StudyResult:
    study: dict[str, Any]
    slices: list[dict[str, Any]]
    rejections: list[dict[str, Any]]
    csv_images: list[tuple[str, tuple[int, ...]]]  # rsna: (ID_<hex>, 6 labels)
    label_row: dict[str, Any] | None  # cq500: the reads.csv row; dicom_tree: the labels.csv row
    n_files: int
    lesions: list[dict[str, Any]] = field(default_factory=list)  # size and contrast as written
    thumbnail: tuple[np.ndarray, np.ndarray] | None = None  # (HU, lesion bits) of the QC slice


# --------------------------------------------------------------------------------------- public


def generate_cohort(
    out_dir: str | os.PathLike[str],
    layout: str,
    dataset_synthetic: Mapping[str, Any],
    synthetic: Mapping[str, Any],
    *,
    workers: int | None = None,
    progress: bool = True,
) -> CohortSummary:
    """Write a synthetic cohort to `out_dir` (replaced atomically) in the `layout` of a real archive.

    `dataset_synthetic` is a dataset's `synthetic:` block (`n_studies`, `seed`, `site`);
    `synthetic` is the global `synthetic:` block (`sites`, the fractions, `broken_studies`).
    `workers`: processes generating studies (None: the CPUs this process may use). The output
    does not depend on `workers`.
    """
    if layout not in LAYOUTS:
        raise ConfigError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    n_studies = int(dataset_synthetic["n_studies"])
    seed = int(dataset_synthetic["seed"])
    site = str(dataset_synthetic["site"])
    sites = synthetic.get("sites") or {}
    if site not in sites:
        raise ConfigError(f"synthetic.sites has no site {site!r} (known: {sorted(sites)})")
    site_params = {"hu_offset": 0.0, "blur_mm": 0.5, **sites[site]}
    fractions = {k: float(synthetic.get(k, v)) for k, v in _DEFAULT_FRACTIONS.items()}
    n_broken = min(int(synthetic.get("broken_studies", 0)), n_studies, len(BROKEN_KINDS[layout]))
    difficulty, mimics = str(synthetic.get("difficulty", "demo")), bool(synthetic.get("mimics", False))
    if difficulty not in DIFFICULTIES:
        raise ConfigError(f"synthetic.difficulty: expected one of {DIFFICULTIES}, got {difficulty!r}")
    broken = broken_assignment(layout, n_studies, n_broken)
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = max(1, min(int(workers), n_studies))
    settings = {
        "layout": layout,
        "dataset": dict(dataset_synthetic),
        "synthetic": {k: synthetic[k] for k in sorted(synthetic)},
    }

    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        (tmp / "truth").mkdir()
        if layout != "cq500":
            (tmp / (RSNA_FOLDER if layout == "rsna" else TREE_FOLDER)).mkdir()
        import zarr

        zarr.open_group(str(tmp / "truth" / "masks.zarr"), mode="w", zarr_format=3)
        spec = CohortSpec(str(tmp), layout, seed, site, site_params, fractions, broken, difficulty, mimics)
        results = _run_studies(spec, n_studies, workers, progress)
        _write_tables(tmp, spec, results, settings)
        n_files = sum(r.n_files for r in results)
    return CohortSummary(out_dir, layout, n_studies, n_files, n_broken)


def broken_assignment(layout: str, n_studies: int, n_broken: int) -> dict[int, str]:
    """Which study indices are broken and how: spread evenly, kinds cycled in BROKEN_KINDS order."""
    kinds = BROKEN_KINDS[layout]
    out: dict[int, str] = {}
    for j in range(min(n_broken, n_studies)):
        out[int((j + 0.5) * n_studies / n_broken)] = kinds[j % len(kinds)]
    return out


def patient_index(seed: int, k: int) -> int:
    """Patient of study k: about 1 study in 8 belongs to the same patient as the study before."""
    while k > 0 and np.random.default_rng([seed, k, 1]).random() < 0.12:
        k -= 1
    return k


def derived_uid(*parts: object) -> str:
    """Deterministic DICOM UID `2.25.<128-bit int>` from a hash of `parts` (UUID-style root, no registry)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def rsna_image_id(seed: int, study: int, file_index: int) -> str:
    """`ID_<9 hex>`: a keyed bijection of (study, file) on 36 bits, so IDs never collide."""
    if not 0 <= file_index < 1024:
        raise ValueError("file_index must be < 1024")
    mask = (1 << 36) - 1
    key = int.from_bytes(hashlib.sha256(f"ct25d-rsna-{seed}".encode()).digest()[:5], "big") & mask
    x = ((study << 10) | file_index) & mask
    for mult in (0x9E3779B1, 0x85EBCA6B, 0xC2B2AE35):
        x = ((x ^ key) * mult) & mask
        x ^= x >> 17
    return f"ID_{x:09x}"


# ------------------------------------------------------------------------------- orchestration


def _run_studies(spec: CohortSpec, n: int, workers: int, progress: bool) -> list[_StudyResult]:
    from tqdm import tqdm

    bar = tqdm(total=n, desc=f"synth {spec.layout}", unit="study", file=sys.stderr, disable=not progress)
    results: list[_StudyResult] = []
    try:
        if workers == 1:
            for k in range(n):
                results.append(generate_study(spec, k))
                bar.update()
            return results
        # fork: no re-import of __main__ (works from scripts without a main guard); zarr resets
        # its event loop after fork. Elsewhere fall back to spawn.
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        ctx = multiprocessing.get_context(method)
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            pending: list[Future[_StudyResult]] = []
            nxt = 0
            while nxt < n or pending:
                while nxt < n and len(pending) < 2 * workers:  # bounded window: memory ~ 2x workers studies
                    pending.append(pool.submit(generate_study, spec, nxt))
                    nxt += 1
                results.append(pending.pop(0).result())
                bar.update()
        return results
    finally:
        bar.close()


def _write_tables(tmp: Path, spec: CohortSpec, results: list[_StudyResult], settings: dict) -> None:
    meta = stamp("synth", settings)
    truth = tmp / "truth"
    write_parquet(truth / "studies.parquet", pd.DataFrame([r.study for r in results]), meta)
    write_parquet(truth / "slices.parquet", pd.DataFrame([s for r in results for s in r.slices]), meta)
    rej_cols = ["study_uid", "series_uid", "sop_uid", "scope", "reason_kind", "path"]
    rej = pd.DataFrame([x for r in results for x in r.rejections], columns=rej_cols)
    rej.to_csv(truth / "expected_rejections.csv", index=False, lineterminator="\n")
    lesions = pd.DataFrame([x for r in results for x in r.lesions],
                           columns=["study_uid", "kind", "nominal_hu", "size_mm", "thickness_mm", "volume_ml",
                                    "contrast_hu", "slices"])  # fmt: skip
    write_parquet(truth / "lesions.parquet", lesions, meta)
    summary = lesions.groupby("kind")[["volume_ml", "contrast_hu", "slices"]].describe(
        percentiles=[0.1, 0.5, 0.9]
    )
    summary.columns = [f"{a} {b}" for a, b in summary.columns]
    summary.round(2).to_csv(truth / "lesion_summary.csv", lineterminator="\n")
    _write_montage(truth / "qc_montage.png", results)
    if spec.layout == "rsna":
        _write_rsna_csv(tmp / f"{RSNA_FOLDER}.csv", [im for r in results for im in r.csv_images], spec.seed)
    else:
        table = pd.DataFrame([r.label_row for r in results])
        name = "reads.csv" if spec.layout == "cq500" else "labels.csv"
        table.to_csv(tmp / name, index=False, lineterminator="\n")


def _write_montage(path: Path, results: list[_StudyResult], n: int = 12) -> None:
    """Brain-window slices of the first studies, lesion masks outlined in red: the cohort at a glance."""
    from matplotlib.figure import Figure

    shown = [r for r in results if r.thumbnail is not None][:n]
    if not shown:
        return
    cols = min(4, len(shown))
    rows = -(-len(shown) // cols)
    fig = Figure(figsize=(3 * cols, 3 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, r in zip(axes, shown, strict=False):
        hu, bits = r.thumbnail  # type: ignore[misc]
        ax.imshow(np.clip((hu - 0.0) / 80.0, 0, 1), cmap="gray")
        if bits.any():
            ax.contour(bits > 0, levels=[0.5], colors="red", linewidths=0.6)
        kinds = sorted({x["kind"] for x in r.lesions}) or ["no lesion"]
        mimic = r.study["mimics"]
        ax.set_title(
            f"{r.study['study_index']}: {', '.join(kinds)}" + (f"\n+ {mimic}" if mimic else ""),
            fontsize=7,
        )
        ax.axis("off")
    for ax in axes[len(shown) :]:
        ax.axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)


def _write_rsna_csv(path: Path, images: list[tuple[str, tuple[int, ...]]], seed: int) -> None:
    """Rows grouped by image, images shuffled, a few exact duplicate blocks (as in the real file)."""
    rng = np.random.default_rng([seed, 7, 7])
    order = list(rng.permutation(len(images)))
    n_dup = min(len(images), max(2, len(images) // 200))
    dups = rng.choice(len(images), size=n_dup, replace=False) if images else []
    for d in dups:
        order.insert(int(rng.integers(0, len(order) + 1)), int(d))
    lines = ["ID,Label"]
    for i in order:
        image_id, labels = images[i]
        lines += [f"{image_id}_{name},{v}" for name, v in zip(RSNA_LABELS, labels, strict=True)]
    path.write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------------- one study


@dataclass
class _Series:
    """One rendered series before it is written."""

    description: str
    folder: str
    header: SeriesHeader
    hu: np.ndarray  # (Z, Y, X) after acquisition effects, sorted inferior -> superior
    bits: np.ndarray
    positions: np.ndarray  # (Z, 3) ImagePositionPatient
    row_dir: np.ndarray
    col_dir: np.ndarray
    spacing: float
    reversed_numbering: bool
    plain: bool = False


def generate_study(spec: CohortSpec, k: int) -> _StudyResult:
    """Render and write study k; returns its truth rows. Depends only on (seed, layout, site, k)."""
    seed, layout = spec.seed, spec.layout
    p = patient_index(seed, k)
    prng = np.random.default_rng([seed, p, 2])
    srng = np.random.default_rng([seed, k, 3])
    anat = random_anatomy(prng, srng, spec.difficulty)
    fr = spec.fractions
    hemorrhage = bool(srng.random() < fr["hemorrhage_fraction"])
    ischemic = bool(srng.random() < fr["ischemic_fraction"])
    lesions = random_lesions(srng, anat, hemorrhage, ischemic, spec.difficulty)
    lesions = faint_lesions(np.random.default_rng([seed, k, 8]), lesions, anat, spec.difficulty)
    # Mimics come from a stream of their own: switching them on changes nothing else in the study.
    mimics = random_mimics(np.random.default_rng([seed, k, 7])) if spec.mimics else NO_MIMICS

    uid = _uid_factory(layout, seed, k)
    study_uid = uid("study")
    base = _base_header(spec, k, p, prng, srng, study_uid, uid)
    site = spec.site_params
    thickness = float(site["thickness_mm"])
    matrix = int(site["matrix"])
    spacing = float(site["fov_mm"]) / matrix

    # Acquisition geometry: tilt about x, slab centres stepping along the normal.
    tilted = srng.random() < fr["tilt_fraction"]
    tilt = float(srng.uniform(10.0, 25.0) * srng.choice([-1.0, 1.0])) if tilted else 0.0
    t = math.radians(tilt)
    row_dir = np.array([1.0, 0.0, 0.0])
    col_dir = np.array([0.0, math.cos(t), -math.sin(t)])
    n_slices = round(float(srng.uniform(140.0, 175.0)) / thickness)
    z_top = anat.center[2] + anat.semi_axes[2] + float(srng.uniform(-2.0, 6.0))

    thin = site.get("thin_thickness_mm")
    ratio = round(thickness / thin) if thin else 0
    use_thin = layout == "cq500" and bool(thin) and ratio >= 2 and abs(ratio * thin - thickness) < 1e-6
    thin = thin if use_thin else None

    series: list[_Series] = []
    series_no = iter(range(2, 100))
    n_sub = max(1, round(thickness / _SUB_PLANE_MM))

    def render(n: int, slab_mm: float, sub_planes: int, contrast: bool) -> _Stack:
        """This study's anatomy and acquisition geometry at one slab thickness."""
        return _render_stack(
            anat, lesions, n, slab_mm, z_top, row_dir, col_dir, spacing, matrix, sub_planes, contrast, mimics
        )

    def make_series(
        idx: int,
        description: str,
        slab_mm: float,
        stack: _Stack,
        kernel_idx: int = 2,
    ) -> _Series:
        """One series of this study; series numbers follow the order of the calls."""
        hu, bits, positions = stack
        return _make_series(
            spec,
            k,
            idx,
            base,
            uid,
            description,
            slab_mm,
            hu,
            bits,
            positions,
            row_dir,
            col_dir,
            spacing,
            tilt,
            next(series_no),
            kernel_idx=kernel_idx,
            mimics=mimics,
        )

    names = series_names(layout, k, srng, thickness, thin)
    if use_thin:
        fine_hu, fine_bits, fine_pos = render(n_slices * ratio, float(thin), 1, False)
        plain_hu, plain_bits = slab_average(fine_hu, fine_bits, ratio)
        plain_pos = fine_pos[::ratio] + (ratio - 1) / 2 * (fine_pos[1] - fine_pos[0])
        series.append(make_series(0, names.thin, float(thin), (fine_hu, fine_bits, fine_pos)))
        del fine_hu, fine_bits
        plain_stack = (plain_hu, plain_bits, plain_pos)
    else:
        plain_stack = render(n_slices, thickness, n_sub, False)
    if names.thick:
        series.append(make_series(1, names.thick, thickness, plain_stack))
    plain = series[-1]  # the thick plain series, or the thin one where the study has no other
    plain.plain = True
    if layout == "rsna":
        plain.folder = RSNA_FOLDER
    if names.contrast:  # as in CQ500, only the description says so: no ContrastBolusAgent tag
        series.append(make_series(2, names.contrast, thickness, render(n_slices, thickness, n_sub, True)))
    if names.bone:
        series.append(make_series(3, names.bone, thickness, plain_stack, kernel_idx=3))
    result = _write_study(
        spec, k, p, study_uid, series, plain, lesions, bool(names.contrast), uid, next(series_no), mimics
    )
    result.study.update({f"mimic_{name}": value for name, value in dataclasses.asdict(mimics).items()})
    result.study["mimics"] = ",".join(mimics.present())
    return result


@dataclass(frozen=True)
class SeriesNames:
    """The descriptions of a study's series ("" where the study has no such series)."""

    thick: str
    thin: str = ""
    contrast: str = ""
    bone: str = ""


# Real CQ500 folder names (anchors.md), by what the series is.
CQ500_CONTRAST = ("CT POST CONTRAST", "CT CONTRAST", "CT 4cc sec 150cc D3D on")


def series_names(
    layout: str, k: int, rng: np.random.Generator, thickness: float, thin: float | None
) -> SeriesNames:
    """Series descriptions in each archive's style.

    CQ500 studies take one of three naming styles in turn (k mod 3), so every cohort has each:
    plain names ("CT Plain" + "CT PLAIN THIN" + bone or contrast); "PRE CONTRAST" names, where the
    word "contrast" names a plain series ("CT 5 MM PRE CONTRAST", "CT PRE CONTRAST THIN", "CT PRE
    CONTRAST BONE"); and a study with only "CT PRE CONTRAST THIN" beside a "CT POST CONTRAST".
    dicom_tree: Siemens-style names, where a plain and a bone series share the description and
    only the kernel tells them apart.
    """
    mm = f"{thickness:g}"
    if layout == "rsna":
        return SeriesNames("CT HEAD")
    if layout == "dicom_tree":
        return SeriesNames(f"Head {mm}mm", bone=f"Head {mm}mm" if k % 2 else "")
    style = k % 3 if thin else k % 2
    if style == 2:
        return SeriesNames("", thin="CT PRE CONTRAST THIN", contrast="CT POST CONTRAST")
    thin_names = ["CT PLAIN THIN", "CT Thin Plain", "CT THIN STD", f"CT {thin:g}mm"] if thin else [""]
    if style == 1:
        return SeriesNames(f"CT {mm} MM PRE CONTRAST", thin="CT PRE CONTRAST THIN" if thin else "",
                           bone="CT PRE CONTRAST BONE")  # fmt: skip
    thick = str(rng.choice(["CT Plain", f"CT {mm}mm", "CT BRAIN PLAIN", f"CT Plain {mm}mm"]))
    if rng.random() < 0.35:
        return SeriesNames(thick, thin=str(rng.choice(thin_names)), contrast=str(rng.choice(CQ500_CONTRAST)))
    return SeriesNames(thick, thin=str(rng.choice(thin_names)), bone="CT BONE")


def _uid_factory(layout: str, seed: int, k: int):
    def uid(*parts: object) -> str:
        return derived_uid("ct25d-synth", layout, seed, k, *parts)

    return uid


def _base_header(
    spec: CohortSpec,
    k: int,
    p: int,
    prng: np.random.Generator,
    srng: np.random.Generator,
    study_uid: str,
    uid: Any,
) -> SeriesHeader:
    vendor = _VENDORS[_site_index(spec.site) % len(_VENDORS)]
    birth = _dt.date(1930, 1, 1) + _dt.timedelta(days=int(prng.integers(0, 70 * 365)))
    study_date = _dt.date(2010, 1, 1) + _dt.timedelta(days=int(srng.integers(0, 10 * 365)))
    secs = int(srng.integers(0, 86400))
    return SeriesHeader(
        study_uid=study_uid,
        series_uid="",
        frame_uid=uid("frame"),
        patient_id=f"SYN{spec.seed}P{p:05d}",
        patient_name=f"SYNTH^PATIENT{p:04d}",
        patient_birth_date=birth.strftime("%Y%m%d"),
        patient_sex=str(prng.choice(["M", "F"])),
        study_date=study_date.strftime("%Y%m%d"),
        study_time=f"{secs // 3600:02d}{secs // 60 % 60:02d}{secs % 60:02d}",
        accession=f"ACC{spec.seed}{k:06d}",
        study_id=str(k + 1),
        study_description=str(srng.choice(["CT HEAD WO CONTRAST", "CT BRAIN", "HEAD ROUTINE"])),
        series_description="",
        series_number=0,
        manufacturer=vendor[0],
        model=vendor[1],
        institution=f"SYNTH HOSPITAL {spec.site}",
        kernel=vendor[2],
        kvp=120.0,
        slice_thickness=0.0,
    )


def _site_index(site: str) -> int:
    if len(site) == 1 and site.isalpha():
        return ord(site.upper()) - ord("A")
    return int.from_bytes(hashlib.sha256(site.encode()).digest()[:4], "big")


def _render_stack(
    anat: Anatomy,
    lesions: list[Lesion],
    n: int,
    thickness: float,
    z_top: float,
    row_dir: np.ndarray,
    col_dir: np.ndarray,
    spacing: float,
    matrix: int,
    n_sub: int,
    contrast: bool,
    mimics: Mimics = NO_MIMICS,
) -> _Stack:
    """Noise-free slabs (Z, Y, X) sorted inferior -> superior and their ImagePositionPatient (Z, 3).

    ImagePositionPatient steps purely along z (table motion); with tilt the step is
    thickness / cos(tilt) so that slabs are `thickness` apart along the slice normal.
    """
    normal = np.cross(row_dir, col_dir)
    dz = thickness / normal[2]
    half = (matrix / 2 - 0.5) * spacing
    centers_z = z_top - dz * np.arange(n)[::-1]
    positions = np.stack([np.array([0.0, 0.0, z]) - half * row_dir - half * col_dir for z in centers_z])
    offsets = (np.arange(n_sub) - (n_sub - 1) / 2) * (thickness / n_sub)
    origins = (positions[:, None, :] + offsets[None, :, None] * normal[None, None, :]).reshape(-1, 3)
    planes = PlaneStack(origins, row_dir, col_dir, spacing, matrix, matrix)
    hu, bits = render_planes(anat, lesions, planes, contrast=contrast, mimics=mimics)
    hu, bits = slab_average(hu, bits, n_sub)
    return hu, bits, positions


def _make_series(
    spec: CohortSpec,
    k: int,
    idx: int,
    base: SeriesHeader,
    uid: Any,
    description: str,
    thickness: float,
    clean_hu: np.ndarray,
    bits: np.ndarray,
    positions: np.ndarray,
    row_dir: np.ndarray,
    col_dir: np.ndarray,
    spacing: float,
    tilt: float,
    series_number: int,
    *,
    kernel_idx: int,
    mimics: Mimics = NO_MIMICS,
) -> _Series:
    """Apply the head's motion and the site's acquisition effects; pick this series' header variety."""
    rng = np.random.default_rng([spec.seed, k, 5, idx])
    fr = spec.fractions
    site = spec.site_params
    bone = kernel_idx == 3
    hu = acquire(
        apply_motion(clean_hu, mimics, spacing),
        rng,
        spacing=spacing,
        noise_hu=float(site["noise_hu"]) * (2.5 if bone else 1.0),
        blur_mm=float(site.get("blur_mm", 0.5)) * (0.5 if bone else 1.0),
        hu_offset=float(site.get("hu_offset", 0.0)),
        sharpen=bone,
    )
    u_wrap, u_store, u_comp, u_ts, u_win, u_rev = rng.random(6)
    if u_wrap < fr["wrapped_fraction"]:
        storage = "wrap"
    else:
        storage = "u1024" if u_store < 0.5 else ("u1000" if u_store < 0.7 else "s0")
    ts = ("rle" if u_ts < 0.5 else "j2k") if u_comp < fr["compressed_fraction"] else "explicit"
    if bone:
        wc, ww = ((600.0,), (2800.0,)) if u_win < 0.5 else ((600.0, 40.0), (2800.0, 80.0))
    else:
        wc, ww = ((40.0,), (80.0,)) if u_win < 0.6 else ((40.0, 400.0), (80.0, 2000.0))
    vendor = _VENDORS[_site_index(spec.site) % len(_VENDORS)]
    header = replace(
        base,
        series_uid=uid("series", idx),
        series_description=description,
        series_number=series_number,
        kernel=vendor[kernel_idx],
        slice_thickness=thickness,
        tilt_deg=tilt,
        storage=storage,
        transfer_syntax=ts,
        window_center=wc,
        window_width=ww,
    )
    return _Series(
        description,
        description,
        header,
        hu,
        keep_contiguous(bits),
        positions,
        row_dir,
        col_dir,
        spacing,
        bool(u_rev < 0.3),
    )


def _labels(bits: np.ndarray) -> np.ndarray:
    """Per-slice (Z, 7) 0/1: the five subtypes, any, ischemic."""
    present = np.stack(
        [((bits & BIT[kind]) > 0).reshape(bits.shape[0], -1).any(axis=1) for kind in LESION_KINDS], axis=1
    )
    sub = present[:, : len(SUBTYPES)]
    return np.concatenate([sub, sub.any(axis=1, keepdims=True), present[:, -1:]], axis=1).astype(np.int8)


class _StudyWriter:
    """Writes one study's files in its layout and keeps the truth rows of what it wrote."""

    def __init__(self, spec: CohortSpec, k: int, study_uid: str, uid: Any, study_folder: str) -> None:
        self.spec, self.k, self.study_uid, self.uid = spec, k, study_uid, uid
        self.out = Path(spec.out_dir)
        self.layout = spec.layout
        self.kind = spec.broken.get(k, "")
        self.study_folder = study_folder
        self.rows: list[dict[str, Any]] = []
        self.rejections: list[dict[str, Any]] = []
        self.csv_images: list[tuple[str, tuple[int, ...]]] = []
        self._files = iter(range(1024))
        self.n_files = 0

    def sop(self, s: _Series, j: object) -> str:
        if self.layout == "rsna":
            return rsna_image_id(self.spec.seed, self.k, next(self._files))
        return self.uid("sop", s.header.series_uid, j)

    def folder(self, s: _Series) -> Path:
        if self.layout == "rsna":
            return self.out / RSNA_FOLDER
        if self.layout == "cq500":
            d = self.out / self.study_folder / "Unknown Study" / s.folder
        else:
            d = (
                self.out
                / TREE_FOLDER
                / self.study_folder
                / f"{s.header.series_number:04d}_{s.folder.replace(' ', '_')}"
            )
        d.mkdir(parents=True, exist_ok=True)
        return d

    def file_name(self, sop: str, number: int) -> str:
        return {"rsna": f"{sop}.dcm", "cq500": f"CT{number - 1:06d}.dcm", "dicom_tree": f"IM{number:05d}"}[
            self.layout
        ]

    def rel(self, path: Path) -> str:
        return path.relative_to(self.out).as_posix()

    def record(self, s: _Series, j: int, z: int, sop: str, rel: str, frame: int = -1) -> None:
        """The truth row of slice j of series s, written as its z-th slice."""
        lab = _labels(s.bits[j : j + 1])[0]
        normal = np.cross(s.row_dir, s.col_dir)
        self.rows.append({
            "study_uid": self.study_uid, "series_uid": s.header.series_uid, "sop_uid": sop, "path": rel,
            "frame": frame, "series_description": s.description, "plain": s.plain, "z_index": z,
            "position_mm": round(float(np.dot(s.positions[j], normal)), 4),
            **dict(zip((*RSNA_LABELS, "ischemic"), (int(v) for v in lab), strict=True)),
        })  # fmt: skip
        if self.layout == "rsna":
            self.csv_images.append((sop, tuple(int(v) for v in lab[:6])))

    def write(self, s: _Series, keep: list[int], *, record: bool, start: int = 0) -> list[str]:
        """Write slices `keep` (sorted indices) of series s; returns their file paths."""
        d, paths, n = self.folder(s), [], len(keep)
        writer = SeriesWriter(s.header, s.row_dir, s.col_dir, s.spacing, *s.hu.shape[1:])
        for rank, j in enumerate(keep):
            inst = n - rank if s.reversed_numbering else rank + 1
            sop = self.sop(s, j)
            path = d / self.file_name(sop, start + inst)
            writer.write(path, s.hu[j], sop, inst, s.positions[j])
            self.n_files += 1
            paths.append(self.rel(path))
            if record:
                self.record(s, j, rank, sop, paths[-1])
        return paths

    def write_enhanced(self, s: _Series, keep: list[int]) -> None:
        """Slices `keep` of series s as one multi-frame Enhanced CT file (frames in slice order)."""
        sop = self.uid("sop", s.header.series_uid, "enhanced")
        path = self.folder(s) / f"EN{s.header.series_number:04d}"
        geometry = SliceGeometry(s.positions[keep[0]], s.row_dir, s.col_dir, s.spacing)
        write_enhanced_series(path, s.header, geometry, s.hu[keep], s.positions[keep], sop)
        self.n_files += 1
        for frame, j in enumerate(keep):
            self.record(s, j, frame, sop, self.rel(path), frame=frame)

    def reject(self, series_uid: str, sop: str, scope: str, rel: str) -> None:
        self.rejections.append({"study_uid": self.study_uid, "series_uid": series_uid, "sop_uid": sop,
                                "scope": scope, "reason_kind": self.kind, "path": rel})  # fmt: skip

    def extra_file(self, plain: _Series, header: SeriesHeader, position: np.ndarray, hu: np.ndarray,
                   number: int, defect: str = "",
                   folder: _Series | None = None) -> tuple[str, str]:  # fmt: skip
        """One more file beside the series' files; returns (sop, relative path)."""
        sop = (
            rsna_image_id(self.spec.seed, self.k, next(self._files))
            if self.layout == "rsna"
            else self.uid("sop", header.series_uid, "extra", number)
        )
        path = self.folder(folder or plain) / self.file_name(sop, number)
        geometry = SliceGeometry(position, plain.row_dir, plain.col_dir, plain.spacing)
        write_slice(path, header, geometry, hu, sop, number, defect=defect)
        self.n_files += 1
        return sop, self.rel(path)


def _write_study(
    spec: CohortSpec,
    k: int,
    p: int,
    study_uid: str,
    series: list[_Series],
    plain: _Series,
    lesions: list[Lesion],
    has_contrast: bool,
    uid: Any,
    extra_series_number: int,
    mimics: Mimics = NO_MIMICS,
) -> _StudyResult:
    layout = spec.layout
    study_folder = {
        "rsna": RSNA_FOLDER,
        "cq500": f"CQ500CT{k} CQ500CT{k}",
        "dicom_tree": f"P{p:05d}/{k:03d}_CT_HEAD",  # no date or accession: paths reach the reports
    }[layout]
    w = _StudyWriter(spec, k, study_uid, uid, study_folder)
    n = plain.hu.shape[0]
    plain_keep = list(range(n))
    if w.kind == "missing_slice":  # an inner slice is missing: kept, flagged irregular
        plain_keep.remove(n // 2)
    elif layout == "rsna" and w.kind == "single_slice":
        plain_keep = [n // 2]
        w.reject(plain.header.series_uid, "", "series", RSNA_FOLDER)
    enhanced = layout == "dicom_tree" and k % 2 == 0
    if enhanced and plain.header.storage == "wrap":  # the RSNA 12-bit quirk is not found in Enhanced CT
        plain.header = replace(plain.header, storage="u1024")
    for s in series:
        if s is plain and enhanced:
            w.write_enhanced(s, plain_keep)
        else:
            w.write(s, plain_keep if s is plain else list(range(s.hu.shape[0])), record=True)
    _write_quirk(w, plain, extra_series_number)
    _write_mask(Path(spec.out_dir), study_uid, plain, plain_keep)

    lab = _labels(plain.bits[plain_keep]).max(axis=0)
    labels = dict(zip((*RSNA_LABELS, "ischemic"), (int(v) for v in lab), strict=True))
    label_row, majority_error = None, ""
    if layout == "cq500":
        label_row, majority_error = _reads(spec.seed, k, labels, lesions)
    elif layout == "dicom_tree":
        label_row = {"study": study_folder, **{name: labels[name] for name in RSNA_LABELS},
                     "stroke_type": stroke_type(labels)}  # fmt: skip
    study = {
        "study_uid": study_uid,
        "study_index": k,
        "patient_id": f"SYN{spec.seed}P{p:05d}",
        "patient_index": p,
        "name": f"CQ500-CT-{k}" if layout == "cq500" else "",
        "folder": study_folder,
        "series_uid": plain.header.series_uid,
        "series_description": plain.description if layout != "rsna" else "",
        "site": spec.site,
        "n_slices": len(plain_keep),
        "thickness_mm": float(plain.header.slice_thickness),
        "tilt_deg": float(plain.header.tilt_deg),
        "storage": plain.header.storage,
        "transfer_syntax": plain.header.transfer_syntax,
        "reversed_numbering": plain.reversed_numbering,
        "enhanced": enhanced,
        "has_contrast_series": has_contrast,
        **labels,
        "broken": w.kind,
        "reads_majority_error": majority_error,
    }
    measured = lesion_statistics(plain, plain_keep, lesions, study_uid)
    return _StudyResult(study, w.rows, w.rejections, w.csv_images, label_row, w.n_files, measured,
                        qc_slice(plain, plain_keep, mimics))  # fmt: skip


def qc_slice(plain: _Series, keep: list[int], mimics: Mimics = NO_MIMICS) -> tuple[np.ndarray, np.ndarray]:
    """The plain series' slice with the most lesion voxels, else the middle moving slice of a head
    that moved, else the one 55% up the head (through the ventricles, where the calcification
    mimics sit), for the cohort's QC montage."""
    hu, bits = plain.hu[keep], plain.bits[keep]
    area = (bits > 0).sum(axis=(1, 2))
    height = (mimics.motion_from + mimics.motion_to) / 2 if mimics.motion_mm else 0.55
    z = int(area.argmax()) if area.any() else int(height * (len(keep) - 1))
    return hu[z].astype(np.int16), bits[z]


def lesion_statistics(
    plain: _Series, keep: list[int], lesions: list[Lesion], study_uid: str
) -> list[dict[str, Any]]:
    """Per lesion kind, as the plain series shows it: volume (ml) from the mask, and contrast (HU):
    median inside the mask minus the median of the brain-range voxels in a 2-voxel ring around it."""
    hu, bits = plain.hu[keep].astype(np.float32), plain.bits[keep]
    voxel_ml = plain.spacing**2 * float(plain.header.slice_thickness) / 1000.0
    rows = []
    for les in lesions:
        mask = (bits & BIT[les.kind]) > 0
        ring = ndimage.binary_dilation(mask, iterations=2) & ~mask & (hu > 0) & (hu < 100)
        inside = float(np.median(hu[mask])) if mask.any() else float("nan")
        around = float(np.median(hu[ring])) if ring.any() else float("nan")
        rows.append({"study_uid": study_uid, "kind": les.kind, "nominal_hu": float(les.hu),
                     "size_mm": float(les.radius), "thickness_mm": float(les.thickness),
                     "z_stretch": float(les.z_stretch),
                     "volume_ml": float(mask.sum() * voxel_ml), "contrast_hu": inside - around,
                     "slices": int(mask.any(axis=(1, 2)).sum())})  # fmt: skip
    return rows


def stroke_type(labels: dict[str, int]) -> str:
    """The study's stroke class: hemorrhagic if it bleeds, else ischemic if infarcted, else control."""
    return "hemorrhagic" if labels["any"] else ("ischemic" if labels["ischemic"] else "control")


def _write_mask(out: Path, study_uid: str, plain: _Series, keep: list[int]) -> None:
    """Ground-truth lesion mask of the plain series (sorted grid of the slices written)."""
    import zarr

    mask = plain.bits[keep]
    group = zarr.open_group(str(out / "truth" / "masks.zarr"), mode="r+")
    arr = group.create_array(study_uid, shape=mask.shape, dtype="uint8", chunks=mask.shape)
    arr[...] = mask
    arr.attrs.update(
        {"study_uid": study_uid, "series_uid": plain.header.series_uid, "bits": list(LESION_KINDS)}
    )


def _write_quirk(w: _StudyWriter, plain: _Series, number: int) -> None:
    """The study's deliberately broken or unusual input (BROKEN_KINDS), beside its valid files."""
    kind, n = w.kind, plain.hu.shape[0]
    extra = replace(plain.header, series_uid=w.uid("series", "extra"), series_number=number)
    if kind in ("truncated_pixel_data", "no_pixel_data", "not_ct"):
        position = plain.positions[n - 1] + (plain.positions[n - 1] - plain.positions[n - 2])
        header, hu = replace(plain.header, transfer_syntax="explicit"), plain.hu[n - 1]
        if kind == "not_ct":
            mr = w.layout == "rsna"
            header = replace(extra, modality="MR" if mr else "OT", storage="s0", transfer_syntax="explicit",
                             series_description="T2 AXIAL" if mr else "Dose Report")  # fmt: skip
            position = plain.positions[n // 2]
            hu = np.clip(plain.hu[n // 2] * 10.0 + 1000.0, 0, 3000) if mr else np.zeros_like(hu)
        defect = {"truncated_pixel_data": "truncated", "no_pixel_data": "no_pixels"}.get(kind, "")
        sop, rel = w.extra_file(plain, header, position, hu, n + 1, defect)
        w.reject(header.series_uid, sop, "file", rel)
        if w.layout == "rsna":
            w.csv_images.append((sop, (0,) * 6))
    elif kind == "duplicate_slice":  # a second file at one position, identical pixels: set aside
        j = n // 3
        sop, rel = w.extra_file(plain, plain.header, plain.positions[j], plain.hu[j], n + 1)
        w.reject(plain.header.series_uid, sop, "file", rel)
        w.csv_images.append((sop, tuple(int(v) for v in _labels(plain.bits[j : j + 1])[0][:6])))
    elif kind == "conflicting_duplicate":  # a second file at one position with other pixels: refused
        j = n // 3
        other = np.where(plain.hu[j] > 0, plain.hu[j] + 40.0, plain.hu[j])
        header = replace(plain.header, transfer_syntax="explicit")
        w.extra_file(plain, header, plain.positions[j], other, n + 1)
        w.reject(plain.header.series_uid, "", "series", w.rel(w.folder(plain)))
    elif kind == "secondary_capture":  # Modality CT, but rendered: an 8-bit screenshot or a colour rendering
        shot = replace(extra, series_description="Screen Save" if w.layout != "cq500" else "3D VR")
        folder = replace(plain, folder=shot.series_description, header=shot)
        for i, colour in enumerate((False, True) if w.layout == "cq500" else (False,)):
            sop = w.sop(folder, ("capture", i))
            path = w.folder(folder) / w.file_name(sop, i + 1)
            geometry = SliceGeometry(plain.positions[n // 2], plain.row_dir, plain.col_dir, plain.spacing)
            write_secondary_capture(path, shot, geometry, plain.hu[n // 2], sop, colour=colour)
            w.n_files += 1
            w.reject(shot.series_uid, sop, "file", w.rel(path))
            if w.layout == "rsna":
                w.csv_images.append((sop, (0,) * 6))
    elif w.layout == "cq500" and kind in ("single_slice", "mixed_series_folder"):
        _write_extra_series(w, plain, extra)


def _write_extra_series(w: _StudyWriter, plain: _Series, extra: SeriesHeader) -> None:
    """CQ500 quirks in a series folder of their own: a single slice, or a folder holding two series."""
    n = plain.hu.shape[0]
    used = {r["series_description"] for r in w.rows}
    name = next(f for f in ("CT 5mm", "CT Plain", "CT 4.8mm") if f not in used)
    clone = replace(plain, description=name, folder=name, header=replace(extra, series_description=name),
                    plain=False)  # fmt: skip
    if w.kind == "single_slice":
        paths = w.write(clone, [n // 2], record=False)
        w.reject(extra.series_uid, "", "series", str(Path(paths[0]).parent.as_posix()))
        return
    w.write(clone, list(range(n)), record=True)  # a second series' files in the same folder
    header = replace(
        clone.header, series_uid=w.uid("series", "intruder"), series_number=extra.series_number + 1
    )
    intruder = replace(clone, header=header, reversed_numbering=False)
    w.write(intruder, sorted({1, 2, min(n - 1, 6)}), record=False, start=n)


def _reads(seed: int, k: int, labels: dict[str, int], lesions: list[Lesion]) -> tuple[dict[str, Any], str]:
    """Three readers' CQ500 reads from the truth, with disagreement.

    Returns (reads.csv row, comma-joined RSNA labels on which the majority vote is wrong).
    """
    rng = np.random.default_rng([seed, k, 6])
    rsna_of = CQ500_TO_RSNA
    truth = {f: 0 for f in CQ500_FIELDS}
    for fld, rsna in rsna_of.items():
        truth[fld] = labels[rsna]
    present = [les for les in lesions if les.kind in SUBTYPES and labels[les.kind]]
    truth["BleedLocation-Left"] = int(any(les.side in (1, 2) for les in present))
    truth["BleedLocation-Right"] = int(any(les.side in (-1, 2) for les in present))
    edh = [les for les in present if les.kind == "epidural"]
    fracture = int(bool(edh) and rng.random() < 0.7)
    truth["Fracture"] = truth["CalvarialFracture"] = fracture
    big = any(
        (les.kind == "epidural" and les.thickness > 12)
        or (les.kind == "subdural" and les.thickness > 8)
        or (les.kind == "intraparenchymal" and les.radius > 14)
        for les in present
    )
    truth["MassEffect"] = int(big)
    truth["MidlineShift"] = int(big and rng.random() < 0.6)
    subtype_fields = [f for f in rsna_of if f != "ICH"]
    reads = {r: dict(truth) for r in CQ500_READERS}
    flip_fields = [f for f in CQ500_FIELDS if f != "ICH"]
    for r in CQ500_READERS:
        if rng.random() < 0.12:
            f = flip_fields[int(rng.integers(len(flip_fields)))]
            reads[r][f] = 1 - reads[r][f]
    positives = [f for f in subtype_fields if truth[f]]
    if positives and rng.random() < 0.06:  # a small lesion missed by two readers
        f = positives[int(rng.integers(len(positives)))]
        for r in rng.choice(list(CQ500_READERS), size=2, replace=False):
            reads[str(r)][f] = 0
    for r in CQ500_READERS:
        reads[r]["ICH"] = int(any(reads[r][f] for f in subtype_fields))
    wrong = []
    for fld, rsna in rsna_of.items():
        majority = int(sum(reads[r][fld] for r in CQ500_READERS) >= 2)
        if majority != truth[fld]:
            wrong.append(rsna)
    category = "B1" if rng.random() < 0.45 else "B2"
    row: dict[str, Any] = {"name": f"CQ500-CT-{k}", "Category": category}
    for r in CQ500_READERS:
        for f in CQ500_FIELDS:
            row[f"{r}:{f}"] = reads[r][f]
    return row, ",".join(wrong)
