"""Multi-frame Enhanced CT files: one header per frame, from the functional groups.

Current scanners export a whole series as one Enhanced CT Image Storage file. Position,
orientation, pixel spacing and rescale then live per frame in PerFrameFunctionalGroupsSequence, or
once for all frames in SharedFunctionalGroupsSequence (PS3.3 C.7.6.16), not at the top level where
single-frame files keep them. Each frame becomes a `SliceHeader` like a single-frame file's, so the
same sorting, checks and decoding build the volume.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pydicom

from ct25d.dicom.headers import NATIVE_SYNTAXES, SliceHeader
from ct25d.errors import SeriesError


def _item(group: Any, sequence: str) -> Any:
    """The first item of a functional-group macro (e.g. PlanePositionSequence), or None."""
    items = getattr(group, sequence, None) if group is not None else None
    return items[0] if items else None


class FrameGroups:
    """Values of one frame: its own functional groups first, then the shared ones, then the top level."""

    def __init__(self, ds: pydicom.Dataset, frame: Any, shared: Any) -> None:
        self._groups = [g for g in (frame, shared) if g is not None]
        self._ds = ds

    def get(self, sequence: str, keyword: str) -> Any:
        for group in self._groups:
            item = _item(group, sequence)
            if item is not None and keyword in item and item[keyword].value not in (None, ""):
                return item[keyword].value
        return self._ds.get(keyword)


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return values if len(values) == n else None


def _administered_contrast(groups: FrameGroups) -> str:
    """`ContrastBolusAgentAdministered=YES` from the Contrast/Bolus Usage macro, when a frame has it."""
    administered = groups.get("ContrastBolusUsageSequence", "ContrastBolusAgentAdministered")
    return f"ContrastBolusAgentAdministered={administered}" if str(administered).upper() == "YES" else ""


def frame_headers(ds: pydicom.Dataset, file_header: SliceHeader) -> list[SliceHeader]:
    """One header per frame of a multi-frame file; `file_header` holds what all frames share."""
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    if per_frame and len(per_frame) != n_frames:
        raise SeriesError(
            f"PerFrameFunctionalGroupsSequence has {len(per_frame)} items for NumberOfFrames {n_frames}",
            file_header.path,
        )
    frame_bytes = file_header.rows * file_header.columns * file_header.bits_allocated // 8
    native = file_header.transfer_syntax in NATIVE_SYNTAXES and file_header.bits_allocated == 16
    pixels = ds.get_item("PixelData", keep_deferred=True) if "PixelData" in ds else None
    start = getattr(pixels, "value_tell", None)
    headers = []
    for k in range(n_frames):
        groups = FrameGroups(ds, per_frame[k] if per_frame else None, shared)
        slope = groups.get("PixelValueTransformationSequence", "RescaleSlope")
        intercept = groups.get("PixelValueTransformationSequence", "RescaleIntercept")
        rescale_type = groups.get("PixelValueTransformationSequence", "RescaleType")
        contrast = "; ".join(v for v in (file_header.contrast_tags, _administered_contrast(groups)) if v)
        headers.append(
            dataclasses.replace(
                file_header,
                position=_floats(groups.get("PlanePositionSequence", "ImagePositionPatient"), 3),
                orientation=_floats(groups.get("PlaneOrientationSequence", "ImageOrientationPatient"), 6),
                pixel_spacing=_floats(groups.get("PixelMeasuresSequence", "PixelSpacing"), 2),
                slice_thickness=float(groups.get("PixelMeasuresSequence", "SliceThickness") or 0.0),
                rescale_slope=float(slope) if slope not in (None, "") else 1.0,
                rescale_intercept=float(intercept) if intercept not in (None, "") else 0.0,
                rescale_type=str(rescale_type or "").strip().upper(),
                kernel=str(groups.get("CTReconstructionSequence", "ConvolutionKernel") or file_header.kernel),
                contrast_tags=contrast,
                instance_number=k + 1,
                frame=k,
                pixel_offset=start + k * frame_bytes if native and start is not None else -1,
            )
        )
    return headers
