"""The harder synthetic cohort: clinical-range lesions where their masks say, mimics that never enter
a mask, and generation that stays deterministic per (seed, study)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_synthetic

from ct25d.synth.cohort import generate_cohort
from ct25d.synth.phantom import (
    BIT,
    NO_MIMICS,
    PINEAL_CENTER,
    Anatomy,
    Lesion,
    Mimics,
    PlaneStack,
    apply_motion,
    faint_lesions,
    inner_surface_point,
    random_anatomy,
    random_lesions,
    render_planes,
)


def anatomy(difficulty: str = "demo") -> Anatomy:
    return random_anatomy(np.random.default_rng(1), np.random.default_rng(2), difficulty)


def axial_planes(anat: Anatomy, z_local: list[float], matrix: int = 160, spacing: float = 1.2) -> PlaneStack:
    """Axial planes through the head at head-local heights (pose ignored: the head is re-centred)."""
    centre = np.asarray(anat.center)
    rot = anat.rotation
    row, col = rot @ np.array([1.0, 0, 0]), rot @ np.array([0, 1.0, 0])
    half = (matrix / 2 - 0.5) * spacing
    origins = np.array([centre + rot @ np.array([0, 0, z]) - half * row - half * col for z in z_local])
    return PlaneStack(origins, row, col, spacing, matrix, matrix)


def test_clinical_lesions_reach_the_hard_cases_and_keep_the_draw_order() -> None:
    anat = anatomy("clinical")
    thin_sdh, isodense, small_iph = 0, 0, 0
    for seed in range(300):
        demo = random_lesions(np.random.default_rng(seed), anat, True, True, "demo")
        clinical = random_lesions(np.random.default_rng(seed), anat, True, True, "clinical")
        assert [le.kind for le in demo] == [le.kind for le in clinical]  # same studies bleed the same way
        for le in clinical:
            thin_sdh += le.kind == "subdural" and le.thickness < 5
            isodense += le.kind == "subdural" and le.hu < 45
            small_iph += le.kind == "intraparenchymal" and le.radius < 10
    assert thin_sdh > 10 and isodense > 10 and small_iph > 10


@pytest.mark.parametrize(
    "lesion",
    [
        Lesion("subdural", (0, 0, 0), 60.0, 3.0, 42.0, 1),  # thin, isodense
        Lesion("intraparenchymal", (25.0, 0.0, 20.0), 5.0, 0.0, 60.0, 1),  # small
        Lesion("intraventricular", (0, 0, 0), 0.0, 1.0, 50.0, 2),  # a thin level
        Lesion("subarachnoid", (0, 0, 0), 10.0, 0.0, 45.0, 1),  # small, in the convexity sulci
        Lesion("epidural", (0, 0, 0), 16.0, 4.0, 55.0, 1),  # small and thin
    ],
    ids=["thin-isodense-sdh", "small-iph", "ivh-level", "small-sulcal-sah", "small-edh"],
)
def test_hard_lesions_are_rendered_where_their_mask_says(lesion: Lesion) -> None:
    anat = anatomy("clinical")
    if lesion.kind in ("subdural", "subarachnoid", "epidural"):  # on the inner skull surface
        surface = inner_surface_point(anat, (0.9, 0.0, 0.43))
        lesion = Lesion(lesion.kind, surface, lesion.radius, lesion.thickness, lesion.hu, 1)
    planes = axial_planes(anat, list(np.arange(-10.0, 50.0, 3.0)))
    hu, bits = render_planes(anat, [lesion], planes)
    plain, _ = render_planes(anat, [], planes)
    mask = (bits & BIT[lesion.kind]) > 0
    assert mask.sum() > 20
    assert np.abs(np.median(hu[mask]) - lesion.hu) < 5  # the lesion's HU (texture +-4) inside its mask
    np.testing.assert_array_equal(hu[~mask], plain[~mask])  # and nothing outside it changed


def test_mimics_are_rendered_but_never_masked() -> None:
    anat = anatomy()
    planes = axial_planes(anat, [PINEAL_CENTER[2] - 1, PINEAL_CENTER[2], 30.0, 60.0], spacing=0.8, matrix=240)
    mimics = Mimics(choroid_hu=250.0, pineal_hu=300.0, falx_hu=200.0, sinus_hu=70.0, streak_hu=30.0)
    hu, bits = render_planes(anat, [], planes, mimics=mimics)
    plain, _ = render_planes(anat, [], planes, mimics=NO_MIMICS)
    assert not bits.any()
    assert (np.abs(hu - 300.0) < 1).sum() > 5  # the pineal calcification
    assert (np.abs(hu - 200.0) < 1).sum() > 5  # falx plaques
    changed = np.abs(hu - plain) > 1
    assert changed.any() and not (changed & (bits > 0)).any()


def test_faint_tall_bleed_spans_more_slices_at_its_faint_hu_and_only_where_masked() -> None:
    anat = anatomy("clinical")
    centre = inner_surface_point(anat, (0.9, 0.0, 0.43))
    short = Lesion("subdural", centre, 30.0, 4.0, 70.0, 1)
    tall = faint_lesions(np.random.default_rng(0), [short], anat, "clinical")
    for seed in range(1, 20):  # the first stream that makes this study's bleed faint
        if tall[0] != short:
            break
        tall = faint_lesions(np.random.default_rng(seed), [short], anat, "clinical")
    les = tall[0]
    assert les.z_stretch >= 2.0 and 6.0 <= les.hu - anat.grey_hu <= 14.0
    planes = axial_planes(anat, list(np.arange(-40.0, 100.0, 2.5)))
    slices = {}
    for lesion in (short, les):
        hu, bits = render_planes(anat, [lesion], planes)
        plain, _ = render_planes(anat, [], planes)
        mask = (bits & BIT["subdural"]) > 0
        assert np.abs(np.median(hu[mask]) - lesion.hu) < 5
        np.testing.assert_array_equal(hu[~mask], plain[~mask])
        slices[lesion] = int(mask.any(axis=(1, 2)).sum())
    assert slices[les] >= 1.8 * slices[short]


def test_only_clinical_cohorts_have_faint_bleeds_and_never_in_the_ventricles() -> None:
    anat = anatomy("clinical")
    lesions = [
        Lesion("intraventricular", (0, 0, 0), 0.0, 1.0, 60.0, 2),
        Lesion("subarachnoid", (0, 0, 0), 20.0),
    ]
    demo = [faint_lesions(np.random.default_rng(s), lesions, anat, "demo") for s in range(200)]
    assert all(d == lesions for d in demo)
    clinical = [faint_lesions(np.random.default_rng(s), lesions, anat, "clinical") for s in range(200)]
    changed = [c for c in clinical if c != lesions]
    assert 25 < len(changed) < 55  # about 20%
    assert all(c[0] == lesions[0] and c[1].z_stretch > 1 for c in changed)


def test_motion_smears_only_the_moving_slices_and_masks_nothing() -> None:
    anat = anatomy()
    planes = axial_planes(anat, list(np.arange(-20.0, 60.0, 5.0)), matrix=96, spacing=2.2)
    hu, bits = render_planes(anat, [], planes)
    moved = Mimics(motion_mm=5.0, motion_angle=0.3, motion_from=0.5, motion_to=0.75)
    out = apply_motion(hu, moved, spacing=2.2)
    changed = np.abs(out - hu).reshape(len(hu), -1).max(axis=1) > 50
    assert changed.tolist() == [8 <= i < 12 for i in range(len(hu))]
    # the skull smears inwards: bright (>= 80 HU) pixels appear where the still head had brain
    assert ((out[8:12] > 80) & (hu[8:12] > 15) & (hu[8:12] < 50)).sum() > 20
    assert apply_motion(hu, NO_MIMICS, 2.2) is hu and not bits.any()


def test_harder_cohort_is_deterministic_and_writes_its_lesion_statistics(tmp_path: Path) -> None:
    synthetic = {**tiny_synthetic(), "difficulty": "clinical", "mimics": True, "hemorrhage_fraction": 0.8}
    spec = {"n_studies": 4, "seed": 3, "site": "A"}
    for name in ("a", "b"):
        generate_cohort(tmp_path / name, "rsna", spec, synthetic, workers=1, progress=False)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.dcm"))
    assert files and all(
        (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files
    )
    lesions = pd.read_parquet(tmp_path / "a" / "truth" / "lesions.parquet")
    assert len(lesions) and (lesions["volume_ml"] >= 0).all()
    bleeds = lesions[lesions["kind"] != "ischemic"]
    assert (bleeds["contrast_hu"].dropna() > -20).all()
    summary = pd.read_csv(tmp_path / "a" / "truth" / "lesion_summary.csv")
    assert {"kind", "volume_ml 50%", "contrast_hu 50%"} <= set(summary.columns)
    studies = pd.read_parquet(tmp_path / "a" / "truth" / "studies.parquet")
    assert {"mimic_pineal_hu", "mimic_streak_hu", "mimic_motion_mm", "mimics"} <= set(studies.columns)
    assert (tmp_path / "a" / "truth" / "qc_montage.png").stat().st_size > 1000
