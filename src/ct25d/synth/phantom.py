"""Parametric head phantom evaluated on arbitrary slice planes in patient millimetres (LPS).

Everything is defined in millimetres in a head-local frame (x: patient left, y: posterior,
z: superior) and sampled at whatever pixel grid a series asks for, so the same patient looks the
same at 64 or 512 pixels, at 1.25 or 5 mm, with or without gantry tilt. Slab thickness is
simulated by averaging sub-planes (partial volume), then each site's blur, noise and calibration
offset are applied. All evaluation is vectorised numpy over whole planes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage

from ct25d.labels import SUBTYPES

# Mask bit order: the five RSNA subtypes, then ischemic.
LESION_KINDS: tuple[str, ...] = (*SUBTYPES, "ischemic")
BIT = {kind: 1 << i for i, kind in enumerate(LESION_KINDS)}

AIR_HU = -1000.0
CSF_HU = 5.0
SOFT_HU = 40.0
FAT_HU = -90.0
TABLE_SHELL_HU = 100.0
TABLE_FOAM_HU = -300.0

_MAX_POINTS = 1 << 19  # points evaluated per vectorised batch (bounds temporaries to ~100 MB)

# Lesion sizes (mm) and blood HU by difficulty. `demo`: large, bright lesions (the default; the
# demo's cohort depends on it). `clinical` reaches into the hard cases of the clinical range: thin
# (2-5 mm) and isodense/subacute (30-45 HU) subdurals, small IPH (3-10 mm), small cortical and
# sulcal SAH, IVH layering as a thin level, smaller and fainter epidurals. Each draw keeps its place
# in the random stream, so the difficulty changes sizes and contrasts, never which studies bleed.
DIFFICULTIES = ("demo", "clinical")
_RANGES: dict[str, dict[str, tuple[float, ...]]] = {
    "demo": {
        "edh_extent": (22, 35), "edh_thickness": (8, 18), "edh_hu": (60, 90),
        "sdh_extent": (55, 85), "sdh_thickness": (4, 10), "sdh_hu": (50, 80),
        "iph_radius": (7, 18), "iph_hu": (60, 85), "ivh_level": (2.0, 18.0), "ivh_hu": (55, 75),
        "sah_cistern": (28, 40), "sah_convexity": (25, 40), "sah_hu": (45, 70),
        "ventricle_scale": (0.8, 1.35), "csf_rim_mm": (1.2, 3.0), "sulcus_depth_mm": (10.0, 16.0),
    },
    # (lo, mid, hi): a share HARD_SHARE of the draws in [lo, mid), the hard cases; the rest in [mid, hi].
    "clinical": {
        "edh_extent": (15, 22, 35), "edh_thickness": (3, 8, 18), "edh_hu": (50, 60, 90),
        "sdh_extent": (40, 55, 85), "sdh_thickness": (2, 5, 10), "sdh_hu": (30, 45, 80),
        "iph_radius": (3, 7, 18), "iph_hu": (50, 60, 85), "ivh_level": (0.5, 18.0), "ivh_hu": (45, 55, 75),
        "sah_cistern": (12, 28, 40), "sah_convexity": (8, 25, 40), "sah_hu": (40, 45, 65),
        # atrophy: wide ventricles, CSF rim and sulci in older heads
        "ventricle_scale": (0.8, 1.8), "csf_rim_mm": (1.2, 4.5), "sulcus_depth_mm": (10.0, 20.0),
    },
}  # fmt: skip


HARD_SHARE = 0.3


def _draw(rng: np.random.Generator, spec: tuple[float, ...]) -> np.float64:
    """One value from a range: (lo, hi) uniform; (lo, mid, hi) a mixture, HARD_SHARE of the draws
    uniform in [lo, mid) and the rest in [mid, hi]. One random number either way, so the choice of
    ranges never shifts the draws that follow (the demo's (lo, hi) draws are `rng.uniform`'s own)."""
    if len(spec) == 2:
        return rng.uniform(*spec)  # a numpy float64, as before (numpy scalars are not "weak" in arithmetic)
    lo, mid, hi = spec
    u = rng.random()
    if u < HARD_SHARE:
        return np.float64(lo + (mid - lo) * u / HARD_SHARE)
    return np.float64(mid + (hi - mid) * (u - HARD_SHARE) / (1 - HARD_SHARE))


@dataclass(frozen=True)
class Mimics:
    """Bright things a slice classifier can mistake for blood (none set any mask bit): calcified
    choroid plexus, pineal and falx calcification, dense venous sinuses, beam-hardening streaks
    near the skull base, and head motion during a few slices (the skull smeared inwards looks like
    a thin extra-axial collection). The defaults are the demo's normal anatomy."""

    choroid_hu: float = 45.0
    pineal_hu: float = 0.0  # 0: no pineal calcification
    falx_hu: float = 55.0  # above 55: calcified plaques along the falx
    sinus_hu: float = 50.0
    streak_hu: float = 0.0  # amplitude of the alternating streak bands
    streak_angle: float = 0.0
    motion_mm: float = 0.0  # 0: still; else the head's in-plane travel during the moving slices
    motion_angle: float = 0.0  # direction of that travel (radians, in the slice plane)
    motion_from: float = 0.0  # the moving slices, as fractions of the series from its bottom
    motion_to: float = 0.0

    def present(self) -> list[str]:
        """Names of the mimics this study has (differing from normal anatomy)."""
        names = ("choroid_hu", "pineal_hu", "falx_hu", "sinus_hu", "streak_hu", "motion_mm")
        return [n.rsplit("_", 1)[0] for n in names if getattr(self, n) != getattr(NO_MIMICS, n)]


NO_MIMICS = Mimics()
PINEAL_CENTER = (0.0, 24.0, 2.0)  # head-local mm, behind the third ventricle
PINEAL_RADIUS = 3.5


def random_mimics(rng: np.random.Generator) -> Mimics:
    """Mimics of one study, from its own random stream (the demo's draws are untouched)."""
    return Mimics(
        choroid_hu=float(rng.uniform(120, 300)) if rng.random() < 0.5 else 45.0,
        pineal_hu=float(rng.uniform(150, 400)) if rng.random() < 0.4 else 0.0,
        falx_hu=float(rng.uniform(120, 250)) if rng.random() < 0.3 else 55.0,
        sinus_hu=float(rng.uniform(62, 75)) if rng.random() < 0.4 else 50.0,
        streak_hu=float(rng.uniform(15, 40)) if rng.random() < 0.5 else 0.0,
        streak_angle=float(rng.uniform(0, np.pi)),
        **_random_motion(rng),
    )


def _random_motion(rng: np.random.Generator) -> dict[str, float]:
    """A quarter of the studies move for 10-30% of their slices, by 2-6 mm (drawn after the other
    mimics, so they keep their values)."""
    moves, amount, angle, start, span = rng.random(), *rng.uniform(0, 1, 4)
    if moves >= 0.25:
        return {}
    start = 0.25 + 0.5 * start
    return {"motion_mm": 2.0 + 4.0 * amount, "motion_angle": float(np.pi * angle),
            "motion_from": start, "motion_to": min(1.0, start + 0.1 + 0.2 * span)}  # fmt: skip


def apply_motion(hu: np.ndarray, mimics: Mimics, spacing: float) -> np.ndarray:
    """Smear the moving slices of a (Z, Y, X) stack along the motion direction: the mean of the
    slice at 7 positions along the travel, as a projection set acquired while the head moved."""
    if not mimics.motion_mm:
        return hu
    z = len(hu)
    lo, hi = int(mimics.motion_from * z), max(int(mimics.motion_from * z) + 1, int(mimics.motion_to * z))
    out = hu.copy()
    steps = np.linspace(-0.5, 0.5, 7) * mimics.motion_mm / spacing
    dy, dx = np.sin(mimics.motion_angle), np.cos(mimics.motion_angle)
    for i in range(lo, min(hi, z)):
        shifted = [ndimage.shift(hu[i], (s * dy, s * dx), order=1, mode="nearest") for s in steps]
        out[i] = np.mean(shifted, axis=0, dtype=np.float32)
    return out


@dataclass(frozen=True)
class Anatomy:
    """Per-patient shape and per-study pose of the head, all lengths in mm."""

    center: tuple[float, float, float]  # head centre in patient LPS
    angles_deg: tuple[float, float, float]  # rotation about x (pitch), y (roll), z (yaw)
    semi_axes: tuple[float, float, float, float]  # L-R, A-P, superior, inferior half-lengths
    scalp_mm: float
    skull_mm: float
    table_mm: float  # outer/inner cortical table thickness
    cortical_hu: float
    diploe_hu: float
    csf_rim_mm: float
    cortex_mm: float
    sulcus_depth_mm: float
    ventricle_scale: float
    grey_hu: float
    white_hu: float
    gyral_phase: tuple[float, ...]  # 6 phases of the sulcal pattern
    table_y: float  # patient y (mm) of the CT table's top surface at x = 0
    table_radius: float  # curvature radius of the table (mm)

    @property
    def rotation(self) -> np.ndarray:
        """Head-local -> patient rotation matrix."""
        ax, ay, az = np.deg2rad(self.angles_deg)
        rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
        ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
        rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
        return rz @ ry @ rx


@dataclass(frozen=True)
class Lesion:
    """One lesion in head-local mm; `kind` is one of LESION_KINDS, other fields are per kind."""

    kind: str
    center: tuple[float, float, float]  # local mm (surface point for EDH/SDH, apex for ischemic)
    radius: float  # lens/crescent extent, blob radius, SAH spread, wedge half-angle (deg)
    thickness: float = 0.0  # EDH/SDH maximal thickness; IVH fluid level offset; ischemic depth
    hu: float = 70.0  # blood HU, or HU change for ischemic
    side: int = 1  # +1 patient left, -1 patient right
    edema: float = 0.0  # IPH: edema rim as a fraction of radius
    direction: tuple[float, float, float] = (1.0, 0.0, 0.0)  # ischemic wedge axis
    phases: tuple[float, ...] = field(default=(0.0, 0.0, 0.0))
    z_stretch: float = 1.0  # >1: taller than wide (a faint lesion spread over many slices)


@dataclass(frozen=True)
class PlaneStack:
    """Parallel planes: origin of each (top-left pixel centre), shared row/col directions."""

    origins: np.ndarray  # (N, 3) patient mm
    row_dir: np.ndarray  # (3,) direction of increasing column index
    col_dir: np.ndarray  # (3,) direction of increasing row index
    spacing: float  # pixel spacing (mm), square pixels
    rows: int
    cols: int

    @property
    def normal(self) -> np.ndarray:
        n = np.cross(self.row_dir, self.col_dir)
        return n / np.linalg.norm(n)


def random_anatomy(
    patient_rng: np.random.Generator, study_rng: np.random.Generator, difficulty: str = "demo"
) -> Anatomy:
    """Head shape from the patient's RNG (same for all their studies), pose from the study's."""
    r = _RANGES[difficulty]
    a = patient_rng.uniform(68.0, 78.0)
    b = patient_rng.uniform(88.0, 100.0)
    c_up = patient_rng.uniform(82.0, 92.0)
    c_down = patient_rng.uniform(100.0, 115.0)
    shape = {
        "semi_axes": (a, b, c_up, c_down),
        "scalp_mm": patient_rng.uniform(4.0, 6.5),
        "skull_mm": patient_rng.uniform(5.5, 8.0),
        "table_mm": patient_rng.uniform(1.4, 2.0),
        "cortical_hu": patient_rng.uniform(1300.0, 1750.0),
        "diploe_hu": patient_rng.uniform(450.0, 750.0),
        "csf_rim_mm": _draw(patient_rng, r["csf_rim_mm"]),
        "cortex_mm": patient_rng.uniform(2.5, 3.5),
        "sulcus_depth_mm": _draw(patient_rng, r["sulcus_depth_mm"]),
        "ventricle_scale": _draw(patient_rng, r["ventricle_scale"]),
        "grey_hu": patient_rng.uniform(35.0, 41.0),
        "white_hu": patient_rng.uniform(25.0, 30.0),
        "gyral_phase": tuple(float(p) for p in patient_rng.uniform(0, 2 * np.pi, 6)),
    }
    cy = study_rng.uniform(-14.0, 2.0)
    center = (study_rng.uniform(-6.0, 6.0), cy, study_rng.uniform(-60.0, 160.0))
    angles = tuple(float(v) for v in study_rng.uniform(-1, 1, 3) * np.array([6.0, 3.0, 5.0]))
    table_y = cy + b + study_rng.uniform(3.0, 12.0)
    return Anatomy(
        center=center,
        angles_deg=angles,  # type: ignore[arg-type]
        table_y=table_y,
        table_radius=float(study_rng.uniform(350.0, 600.0)),
        **shape,
    )


def _ellipsoid_depth(x: np.ndarray, y: np.ndarray, z: np.ndarray, axes: Sequence[float]) -> np.ndarray:
    """First-order distance (mm) inside the egg-shaped head surface (negative outside)."""
    a, b, c_up, c_down = axes
    c = np.where(z > 0, np.float32(c_up), np.float32(c_down))
    qx, qy, qz = x / a, y / b, z / c
    s = np.sqrt(qx * qx + qy * qy + qz * qz)
    grad = np.sqrt((qx / a) ** 2 + (qy / b) ** 2 + (qz / c) ** 2)
    return (1.0 - s) * s / np.maximum(grad, 1e-6)


def _ventricles(x: np.ndarray, y: np.ndarray, z: np.ndarray, scale: float) -> tuple[np.ndarray, ...]:
    """Left and right lateral ventricle (curved ellipsoids) and the third ventricle."""
    out = []
    for side in (1.0, -1.0):
        yy = y + 4.0
        xs = x - side * (5.0 + 2.0 * scale + 0.0025 * yy * yy)
        zs = z - (12.0 - 0.006 * yy * yy)
        body = (xs / (5.5 * scale)) ** 2 + (yy / 32.0) ** 2 + (zs / (8.0 * scale)) ** 2 < 1.0
        out.append(body)
    third = (x / (1.6 * scale)) ** 2 + ((y - 3.0) / 13.0) ** 2 + ((z + 6.0) / 9.0) ** 2 < 1.0
    return out[0], out[1], third


def _skull_base(y: np.ndarray) -> np.ndarray:
    """Local z of the skull base: the anterior fossa sits higher than the posterior fossa."""
    return -32.0 - 0.33 * y


def _render_points(
    anat: Anatomy,
    lesions: Sequence[Lesion],
    ux: np.ndarray,
    uy: np.ndarray,
    uz: np.ndarray,
    px: np.ndarray,
    py: np.ndarray,
    contrast: bool,
    mimics: Mimics = NO_MIMICS,
) -> tuple[np.ndarray, np.ndarray]:
    """HU (float32) and lesion bits (uint8) at points given in local (u*) and patient (p*) mm."""
    f32 = np.float32
    hu = np.full(ux.shape, AIR_HU, dtype=f32)
    bits = np.zeros(ux.shape, dtype=np.uint8)

    # CT table: curved shell-foam-shell sandwich, fixed in the scanner frame.
    t = py - (anat.table_y - px * px / (2.0 * anat.table_radius))
    on_table = (t > 0) & (t < 22.0) & (np.abs(px) < 200.0)
    hu[on_table] = TABLE_FOAM_HU
    hu[on_table & ((t < 2.5) | (t > 19.5))] = TABLE_SHELL_HU

    d_out = _ellipsoid_depth(ux, uy, uz, anat.semi_axes)
    head = d_out > 0
    if not head.any():
        return hu, bits
    # Scalp: skin, subcutaneous fat, galea.
    hu[head] = SOFT_HU
    hu[head & (d_out > 1.5) & (d_out < anat.scalp_mm - 1.5)] = FAT_HU

    zb = _skull_base(uy)
    above_base = uz > zb
    d_in = d_out - (anat.scalp_mm + anat.skull_mm)  # depth below the inner skull surface
    bone_vault = (d_out >= anat.scalp_mm) & (d_in <= 0) & (uz > zb - 6.0)
    bone_base = (d_out >= anat.scalp_mm) & (uz <= zb) & (uz > zb - 6.0)
    bone = bone_vault | bone_base
    depth_vault = np.minimum(d_out - anat.scalp_mm, -d_in)
    depth_base = np.minimum(np.minimum(d_out - anat.scalp_mm, zb - uz), uz - (zb - 6.0))
    depth_in_bone = np.where(above_base, depth_vault, depth_base)
    hu[bone] = np.where(depth_in_bone[bone] < anat.table_mm, f32(anat.cortical_hu), f32(anat.diploe_hu))

    # Below the skull base: face and neck soft tissue, sinuses, orbits, cervical spine.
    below = head & (uz <= zb - 6.0) & (d_out >= anat.scalp_mm)
    if below.any():
        hu[below] = SOFT_HU
        for side in (1.0, -1.0):
            orbit = ((ux - side * 31.0) / 17.0) ** 2 + ((uy + 62.0) / 22.0) ** 2 + ((uz + 20.0) / 15.0) ** 2
            globe = ((ux - side * 31.0) / 11.5) ** 2 + ((uy + 70.0) / 11.5) ** 2 + ((uz + 20.0) / 11.5) ** 2
            sinus = ((ux - side * 20.0) / 14.0) ** 2 + ((uy + 50.0) / 18.0) ** 2 + ((uz + 52.0) / 16.0) ** 2
            hu[below & (orbit < 1.0)] = FAT_HU
            hu[below & (globe < 1.0)] = 10.0
            hu[below & (sinus < 1.3)] = f32(anat.cortical_hu * 0.7)
            hu[below & (sinus < 1.0)] = AIR_HU
        spine = ((ux / 13.0) ** 2 + ((uy - 18.0) / 13.0) ** 2 < 1.0) & below
        hu[spine] = f32(anat.diploe_hu)
        hu[spine & ((ux / 13.0) ** 2 + ((uy - 18.0) / 13.0) ** 2 > 0.7)] = f32(anat.cortical_hu * 0.8)

    cavity = (d_in > 0) & above_base & head
    if not cavity.any():
        return hu, bits
    idx = np.nonzero(cavity)
    cx, cy, cz, dc = ux[idx], uy[idx], uz[idx], d_in[idx]
    d_brain = dc - anat.csf_rim_mm

    # Sulcal pattern: zero crossings of a smooth function of direction are the CSF clefts.
    theta = np.arctan2(cy, cx)
    phi = np.arctan2(cz, np.hypot(cx, cy))
    p = anat.gyral_phase
    g = np.sin(7.0 * theta + 1.6 * np.sin(3.0 * phi + p[0]) + p[1]) + 0.7 * np.sin(
        6.0 * phi + 1.3 * np.sin(4.0 * theta + p[2]) + p[3]
    )
    depth_mod = anat.sulcus_depth_mm * (0.75 + 0.25 * np.sin(3.0 * theta + 2.0 * phi + p[4]))
    sulcus = (np.abs(g) < 0.09) & (d_brain < depth_mod)
    grey = (d_brain < anat.cortex_mm) | ((np.abs(g) < 0.35) & (d_brain < depth_mod + anat.cortex_mm))

    vl, vr, v3 = _ventricles(cx, cy, cz, anat.ventricle_scale)
    ventricle = vl | vr | v3
    deep_grey = np.zeros_like(grey)
    for side in (1.0, -1.0):
        deep_grey |= ((cx - side * 20.0) / 9.0) ** 2 + (cy / 20.0) ** 2 + ((cz + 2.0) / 11.0) ** 2 < 1.0
    fissure = (np.abs(cx) < 1.3) & ((cz > 20.0) | (np.abs(cy) > 48.0))
    falx = fissure & (np.abs(cx) < 0.5)
    cistern_r = np.sqrt(cx * cx + ((cy - 8.0) / 1.1) ** 2 + ((cz + 22.0) / 0.6) ** 2)
    cistern = (cistern_r > 11.0) & (cistern_r < 15.0)
    rim = d_brain <= 0
    csf = rim | sulcus | ventricle | fissure | cistern
    choroid = np.zeros_like(grey)
    for side in (1.0, -1.0):
        choroid |= ((cx - side * 15.0) / 3.0) ** 2 + ((cy - 20.0) / 5.0) ** 2 + ((cz - 9.0) / 3.0) ** 2 < 1.0
    sinus = (dc < 6.0) & (np.abs(cx) < 4.0 * (1.0 - dc / 6.0)) & (cz > -10.0) & (cy > -50.0)

    c_hu = np.where(grey, f32(anat.grey_hu), f32(anat.white_hu))
    c_hu[deep_grey & ~grey] = f32(anat.grey_hu - 2.0)
    if contrast:
        c_hu += np.where(grey | deep_grey, f32(4.0), f32(2.0))
    brain_tissue = ~csf
    c_hu[csf] = CSF_HU
    c_hu[falx] = 95.0 if contrast else 55.0
    c_hu[choroid & ventricle] = 150.0 if contrast else mimics.choroid_hu
    c_hu[sinus] = 180.0 if contrast else mimics.sinus_hu
    if mimics.falx_hu != NO_MIMICS.falx_hu:  # calcified plaques, a few mm long, along the falx
        c_hu[falx & (np.sin(0.25 * cy + 0.15 * cz) > 0.55)] = f32(mimics.falx_hu)
    if mimics.pineal_hu:
        pc = PINEAL_CENTER
        pineal = (cx - pc[0]) ** 2 + (cy - pc[1]) ** 2 + (cz - pc[2]) ** 2 < PINEAL_RADIUS**2
        c_hu[pineal] = f32(mimics.pineal_hu)

    c_bits = np.zeros(cx.shape, dtype=np.uint8)
    fields = {
        "x": cx,
        "y": cy,
        "z": cz,
        "d_in": dc,
        "brain": brain_tissue & ~sinus & ~falx,
        "csf_space": (rim | sulcus | fissure | cistern) & ~falx,
        "vent": (vl, vr, v3),
    }
    # Ischemia first (an additive change of parenchyma), then blood on top.
    for les in sorted(lesions, key=lambda le: le.kind != "ischemic"):
        region, value = _lesion_region(les, fields)
        if les.kind == "ischemic":
            c_hu[region] += f32(value)
        elif les.kind == "intraparenchymal" and les.edema > 0:
            edema_region, blood = region
            c_hu[edema_region] -= f32(8.0)
            region = blood
            c_hu[region] = f32(value) + _texture(cx[region], cy[region], cz[region], les.phases)
        else:
            c_hu[region] = f32(value) + _texture(cx[region], cy[region], cz[region], les.phases)
        c_bits[region] |= np.uint8(BIT[les.kind])
    if mimics.streak_hu:  # beam hardening: alternating bands fading upwards from the skull base
        a = mimics.streak_angle
        fade = np.clip(1.0 - (cz - _skull_base(cy)) / 25.0, 0.0, 1.0)
        c_hu += (
            f32(mimics.streak_hu)
            * np.cos(0.6 * (cx * np.cos(a) + cy * np.sin(a))).astype(f32)
            * fade.astype(f32)
        )

    hu[idx] = c_hu
    bits[idx] = c_bits
    return hu, bits


def _texture(x: np.ndarray, y: np.ndarray, z: np.ndarray, phases: Sequence[float]) -> np.ndarray:
    """Smooth +-4 HU heterogeneity so lesions are not flat."""
    return (
        4.0 * np.sin(0.35 * x + phases[0]) * np.cos(0.3 * y + phases[1]) * np.sin(0.4 * z + phases[2])
    ).astype(np.float32)


def _lesion_region(les: Lesion, f: dict) -> tuple:
    """Boolean region (over cavity points) of one lesion and its HU (or HU change)."""
    x, y, z, d_in = f["x"], f["y"], f["z"], f["d_in"]
    c = les.center
    dz = (z - c[2]) / np.float32(les.z_stretch)
    if les.kind in ("epidural", "subdural"):
        rho2 = ((x - c[0]) ** 2 + (y - c[1]) ** 2 + dz**2) / (les.radius * les.radius)
        region = d_in < les.thickness * (1.0 - rho2)
        if les.kind == "subdural":
            region &= les.side * x > 1.5
        return region, les.hu
    if les.kind == "intraparenchymal":
        dx, dy = x - c[0], y - c[1]
        r = np.sqrt(dx * dx + dy * dy + dz * dz)
        th = np.arctan2(dy, dx)
        ph = np.arctan2(dz, np.hypot(dx, dy))
        p = les.phases
        r_eff = les.radius * (
            1.0 + 0.18 * np.sin(3 * th + p[0]) * np.cos(2 * ph + p[1]) + 0.1 * np.sin(5 * th + p[2])
        )
        blood = (r < r_eff) & (f["brain"] | (r < 0.6 * les.radius))
        if les.edema > 0:
            edema = (r < r_eff * (1.0 + les.edema)) & f["brain"] & ~blood
            return (edema, blood), les.hu
        return blood, les.hu
    if les.kind == "intraventricular":
        vl, vr, v3 = f["vent"]
        vent = (vl if les.side > 0 else vr) if abs(les.side) == 1 else (vl | vr | v3)
        return vent & (y > les.thickness), les.hu
    if les.kind == "subarachnoid":
        r2 = (x - c[0]) ** 2 + (y - c[1]) ** 2 + dz**2
        return f["csf_space"] & (r2 < les.radius * les.radius), les.hu
    if les.kind == "ischemic":
        dx, dy, dz = x - c[0], y - c[1], z - c[2]
        r = np.sqrt(dx * dx + dy * dy + dz * dz)
        d = les.direction
        cos_angle = (dx * d[0] + dy * d[1] + dz * d[2]) / np.maximum(r, 1e-3)
        region = f["brain"] & (cos_angle > np.cos(np.deg2rad(les.radius))) & (r > 12.0)
        return region, les.hu
    raise ValueError(f"unknown lesion kind {les.kind!r}")


def inner_surface_point(anat: Anatomy, direction: Sequence[float]) -> tuple[float, float, float]:
    """Local point on the inner skull surface along a unit direction from the head centre."""
    v = np.asarray(direction, dtype=float)
    v = v / np.linalg.norm(v)
    a, b, c_up, c_down = anat.semi_axes
    c = c_up if v[2] > 0 else c_down
    t = 1.0 / np.sqrt((v[0] / a) ** 2 + (v[1] / b) ** 2 + (v[2] / c) ** 2)
    t -= anat.scalp_mm + anat.skull_mm
    return tuple(float(q) for q in v * t)  # type: ignore[return-value]


def random_lesions(
    rng: np.random.Generator, anat: Anatomy, hemorrhage: bool, ischemic: bool, difficulty: str = "demo"
) -> list[Lesion]:
    """Sample 1-3 hemorrhage subtypes and/or one ischemic wedge with sizes and HU of `difficulty`."""
    lesions: list[Lesion] = []
    if hemorrhage:
        n = int(rng.choice([1, 2, 3], p=[0.7, 0.25, 0.05]))
        kinds = rng.choice(list(SUBTYPES), size=n, replace=False, p=[0.13, 0.3, 0.12, 0.2, 0.25])
        for kind in kinds:
            lesions.append(_random_lesion(str(kind), rng, anat, _RANGES[difficulty]))
    if ischemic:
        lesions.append(_random_lesion("ischemic", rng, anat, _RANGES[difficulty]))
    return lesions


# Share of bleeding studies (clinical only) whose first non-IVH bleed is faint and tall.
FAINT_FRACTION = {"demo": 0.0, "clinical": 0.2}


def faint_lesions(
    rng: np.random.Generator, lesions: list[Lesion], anat: Anatomy, difficulty: str
) -> list[Lesion]:
    """Make one bleed faint (6-14 HU above grey matter) and 2-3.5x taller than wide: it spans
    many slices with little evidence on each, so that context across slices matters (the seed's
    argument for 2.5D). Drawn from the caller's own stream: the other lesions keep their draws."""
    if rng.random() >= FAINT_FRACTION[difficulty]:
        return lesions
    gain, stretch = rng.uniform(6.0, 14.0), rng.uniform(2.0, 3.5)
    out = list(lesions)
    for i, les in enumerate(out):
        if les.kind not in ("intraventricular", "ischemic"):
            out[i] = replace(les, hu=float(anat.grey_hu + gain), z_stretch=float(stretch))
            break
    return out


def _random_lesion(
    kind: str, rng: np.random.Generator, anat: Anatomy, r: dict[str, tuple[float, ...]]
) -> Lesion:
    side = int(rng.choice([-1, 1]))
    phases = tuple(float(p) for p in rng.uniform(0, 2 * np.pi, 3))
    if kind in ("epidural", "subdural"):
        theta = (0.0 if side > 0 else np.pi) + rng.uniform(-0.7, 0.7)
        phi = rng.uniform(0.05, 0.6)
        v = (np.cos(phi) * np.cos(theta), np.cos(phi) * np.sin(theta), np.sin(phi))
        center = inner_surface_point(anat, v)
        key = "edh" if kind == "epidural" else "sdh"
        extent = _draw(rng, r[f"{key}_extent"])
        thickness = _draw(rng, r[f"{key}_thickness"])
        return Lesion(kind, center, extent, thickness, _draw(rng, r[f"{key}_hu"]), side, phases=phases)
    if kind == "intraparenchymal":
        if rng.random() < 0.5:  # hypertensive: basal ganglia
            center = (side * rng.uniform(16, 24), rng.uniform(-8, 8), rng.uniform(-6, 4))
        else:  # lobar
            center = (side * rng.uniform(22, 38), rng.uniform(-35, 35), rng.uniform(8, 35))
        edema = float(rng.uniform(0.25, 0.5)) if rng.random() < 0.6 else 0.0
        return Lesion(
            kind,
            center,
            _draw(rng, r["iph_radius"]),
            0.0,
            _draw(rng, r["iph_hu"]),
            side,
            edema=edema,
            phases=phases,
        )
    if kind == "intraventricular":
        both = rng.random() < 0.35
        level = _draw(rng, r["ivh_level"])  # fluid level in local y: blood layers posteriorly
        return Lesion(
            kind, (0.0, 0.0, 0.0), 0.0, level, _draw(rng, r["ivh_hu"]), 2 if both else side, phases=phases
        )
    if kind == "subarachnoid":
        if rng.random() < 0.5:  # basal cisterns
            center = (rng.uniform(-6, 6), rng.uniform(0, 12), rng.uniform(-26, -14))
            radius = _draw(rng, r["sah_cistern"])
        else:  # convexity sulci
            theta = (0.0 if side > 0 else np.pi) + rng.uniform(-1.0, 1.0)
            phi = rng.uniform(0.1, 0.8)
            v = (np.cos(phi) * np.cos(theta), np.cos(phi) * np.sin(theta), np.sin(phi))
            center = inner_surface_point(anat, v)
            radius = _draw(rng, r["sah_convexity"])
        return Lesion(kind, center, radius, 0.0, _draw(rng, r["sah_hu"]), side, phases=phases)
    if kind == "ischemic":
        apex = (side * rng.uniform(8, 14), rng.uniform(-6, 6), rng.uniform(-4, 8))
        d = np.array([side * 1.0, rng.uniform(-0.5, 0.5), rng.uniform(-0.1, 0.35)])
        d /= np.linalg.norm(d)
        return Lesion(
            kind,
            apex,
            rng.uniform(18, 32),
            0.0,
            rng.uniform(-12, -6),
            side,
            direction=tuple(float(q) for q in d),
            phases=phases,
        )  # type: ignore[arg-type]
    raise ValueError(f"unknown lesion kind {kind!r}")


def render_planes(
    anat: Anatomy,
    lesions: Sequence[Lesion],
    planes: PlaneStack,
    *,
    contrast: bool = False,
    mimics: Mimics = NO_MIMICS,
) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free HU (N, rows, cols) float32 and lesion bits (N, rows, cols) uint8 on the planes."""
    n = len(planes.origins)
    rot = anat.rotation
    to_local = rot.T
    center = np.asarray(anat.center, dtype=float)
    row = to_local @ planes.row_dir * planes.spacing
    col = to_local @ planes.col_dir * planes.spacing
    rows_i = np.arange(planes.rows, dtype=np.float32)[:, None]
    cols_j = np.arange(planes.cols, dtype=np.float32)[None, :]
    prow = planes.row_dir * planes.spacing
    pcol = planes.col_dir * planes.spacing
    hu = np.empty((n, planes.rows, planes.cols), dtype=np.float32)
    bits = np.empty((n, planes.rows, planes.cols), dtype=np.uint8)
    per_batch = max(1, _MAX_POINTS // (planes.rows * planes.cols))
    for start in range(0, n, per_batch):
        stop = min(n, start + per_batch)
        o = planes.origins[start:stop]
        lo = (o - center) @ to_local.T  # (b, 3) local origins

        def grid(k: int, base: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
            plane = (rows_i * np.float32(c[k]) + cols_j * np.float32(r[k])).astype(np.float32)
            return base[:, k, None, None].astype(np.float32) + plane[None]

        ux, uy, uz = (grid(k, lo, row, col) for k in range(3))
        px, py = (grid(k, o, prow, pcol) for k in range(2))
        hu[start:stop], bits[start:stop] = _render_points(anat, lesions, ux, uy, uz, px, py, contrast, mimics)
    return hu, bits


def slab_average(hu: np.ndarray, bits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Average groups of k consecutive sub-planes into slabs (partial volume).

    A lesion bit is set in the slab where it covers at least half of the sub-planes.
    """
    if k == 1:
        return hu, bits
    n = hu.shape[0] // k
    out_hu = hu[: n * k].reshape(n, k, *hu.shape[1:]).mean(axis=1, dtype=np.float32)
    grouped = bits[: n * k].reshape(n, k, *bits.shape[1:])
    out_bits = np.zeros((n, *bits.shape[1:]), dtype=np.uint8)
    for i in range(len(LESION_KINDS)):
        frac = ((grouped >> i) & 1).sum(axis=1)
        out_bits |= ((2 * frac >= k).astype(np.uint8) << i).astype(np.uint8)
    return out_hu, out_bits


def acquire(
    hu: np.ndarray,
    rng: np.random.Generator,
    *,
    spacing: float,
    noise_hu: float,
    blur_mm: float,
    hu_offset: float,
    sharpen: bool = False,
) -> np.ndarray:
    """Apply a site's in-plane blur, calibration offset and (slightly correlated) noise."""
    out = hu
    if blur_mm > 0:
        out = ndimage.gaussian_filter(out, sigma=(0, blur_mm / spacing, blur_mm / spacing), mode="nearest")
    if sharpen:  # bone kernel: edge enhancement
        soft = ndimage.gaussian_filter(out, sigma=(0, 1.0, 1.0), mode="nearest")
        out = out + 0.8 * (out - soft)
    noise = rng.standard_normal(out.shape, dtype=np.float32)
    noise = ndimage.gaussian_filter(noise, sigma=(0, _NOISE_SIGMA_PX, _NOISE_SIGMA_PX), mode="wrap")
    noise *= np.float32(noise_hu / _NOISE_STD)
    return (out + np.float32(hu_offset) + noise).astype(np.float32)


def _filtered_noise_std() -> float:
    """Std of unit white noise after the noise-correlation filter (exact for the discrete kernel)."""
    impulse = np.zeros((1, 15, 15), dtype=np.float64)
    impulse[0, 7, 7] = 1.0
    kernel = ndimage.gaussian_filter(impulse, sigma=(0, _NOISE_SIGMA_PX, _NOISE_SIGMA_PX), mode="constant")
    return float(np.sqrt((kernel**2).sum()))


_NOISE_SIGMA_PX = 0.6  # noise correlation length (pixels), as in filtered back-projection
_NOISE_STD = _filtered_noise_std()


def keep_contiguous(bits: np.ndarray) -> np.ndarray:
    """Keep, per lesion bit, only the longest contiguous run of slices that contain it.

    Labels derived from the mask then always form one contiguous run per lesion type.
    """
    out = bits.copy()
    for i in range(len(LESION_KINDS)):
        present = ((bits >> i) & 1).reshape(bits.shape[0], -1).any(axis=1)
        if present.sum() <= 1:
            continue
        labels, n = ndimage.label(present)
        if n <= 1:
            continue
        sizes = ndimage.sum(present, labels, range(1, n + 1))
        keep = labels == (int(np.argmax(sizes)) + 1)
        out[~keep] &= np.uint8(~(1 << i) & 0xFF)
    return out
