"""One DICOM file's header, reduced to what grouping, choosing and sorting need.

Identifying fields (PatientID, UIDs) are replaced by keyed pseudonyms here, at the first step
that sees them, so no later artifact can carry them.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydicom
from pydicom.errors import InvalidDicomError

from ct25d.errors import SeriesError

# Archives carry values that break the standard (RSNA's SOP UIDs are `ID_<hex>`); reading must
# tolerate them instead of warning once per file. Checks that matter are made explicitly below.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE

# Tags without which a file cannot even be grouped into a study and series.
GROUPING_TAGS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def pseudonym(value: str, salt: str, prefix: str, length: int = 16) -> str:
    """Keyed hash (HMAC-SHA256) of an identifier: stable for one salt, not reversible without it."""
    digest = hmac.new(salt.encode(), value.encode(), hashlib.sha256).hexdigest()
    return f"{prefix}{digest[:length]}"


@dataclass(frozen=True)
class SliceHeader:
    """Header fields of one file; `*_id` fields are pseudonyms, `sop_uid` is kept only for label joins."""

    path: str
    study_id: str
    series_id: str
    patient_id: str
    sop_uid: str
    modality: str
    series_description: str
    series_number: int
    instance_number: int
    image_type: str
    contrast_agent: str
    rows: int
    columns: int
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    slice_thickness: float
    transfer_syntax: str
    has_pixels: bool
    # How to turn stored values into HU, and where native (uncompressed) pixels lie in the file, so
    # ingest can read them without parsing the file a second time. pixel_offset -1: use a decoder.
    bits_allocated: int = 16
    bits_stored: int = 16
    pixel_representation: int = 0
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    pixel_offset: int = -1

    @classmethod
    def from_row(cls, row: dict[str, Any], root: Path | None = None) -> SliceHeader:
        """Rebuild a header from a `files.parquet` row (paths there are relative to the archive root)."""
        values = {f.name: row.get(f.name) for f in fields(cls)}
        values["path"] = str(root / row["path"]) if root is not None else row["path"]
        values["sop_uid"] = row.get("slice_id", "")
        for key in ("position", "orientation", "pixel_spacing"):
            value = values[key]
            values[key] = None if value is None or (np.ndim(value) == 0 and pd.isna(value)) else tuple(value)
        return cls(**values)

    def as_row(self) -> dict[str, Any]:
        row = asdict(self)
        for key in ("position", "orientation", "pixel_spacing"):
            row[key] = list(row[key]) if row[key] is not None else None
        return row


def _floats(ds: pydicom.Dataset, keyword: str, n: int) -> tuple[float, ...] | None:
    value = ds.get(keyword)
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def _int(ds: pydicom.Dataset, keyword: str, default: int = 0) -> int:
    try:
        return int(ds.get(keyword, default))
    except (TypeError, ValueError):
        return default


NATIVE_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}  # implicit / explicit VR little endian


def _native_offset(ds: pydicom.Dataset, transfer_syntax: str) -> int:
    """File offset of uncompressed 16-bit single-channel pixel data, or -1 when a decoder is needed."""
    if "PixelData" not in ds or transfer_syntax not in NATIVE_SYNTAXES:
        return -1
    raw = ds.get_item("PixelData", keep_deferred=True)
    if (
        _int(ds, "BitsAllocated") != 16
        or _int(ds, "SamplesPerPixel", 1) != 1
        or _int(ds, "NumberOfFrames", 1) != 1
    ):
        return -1
    offset = getattr(raw, "value_tell", None)
    return int(offset) if offset is not None and raw.length != 0xFFFFFFFF else -1


def read_header(path: str | Path, salt: str) -> SliceHeader:
    """Read one file's header without loading pixel data; raise SeriesError naming the file.

    `defer_size` keeps PixelData on disk but still records whether the element exists.
    """
    path = str(path)
    try:
        ds = pydicom.dcmread(path, defer_size=1024)
    except InvalidDicomError as exc:
        raise SeriesError(f"not a DICOM file ({exc})", path) from exc
    except Exception as exc:  # pydicom raises many types on a truncated or garbled header
        raise SeriesError(f"unreadable DICOM header ({type(exc).__name__}: {exc})", path) from exc
    missing = [tag for tag in GROUPING_TAGS if not str(ds.get(tag, "")).strip()]
    if missing:
        raise SeriesError(f"missing required tag(s) {', '.join(missing)}", path)
    study_uid = str(ds.StudyInstanceUID)
    transfer_syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    position = _floats(ds, "ImagePositionPatient", 3)
    spacing = _floats(ds, "PixelSpacing", 2)
    return SliceHeader(
        path=path,
        study_id=pseudonym(study_uid, salt, "st-"),
        series_id=pseudonym(str(ds.SeriesInstanceUID), salt, "se-"),
        patient_id=pseudonym(str(ds.get("PatientID", study_uid)), salt, "pt-"),
        sop_uid=str(ds.SOPInstanceUID),
        modality=str(ds.get("Modality", "")).upper(),
        series_description=str(ds.get("SeriesDescription", "")),
        series_number=_int(ds, "SeriesNumber"),
        instance_number=_int(ds, "InstanceNumber"),
        image_type="\\".join(str(v) for v in ds.get("ImageType", [])),
        contrast_agent=str(ds.get("ContrastBolusAgent", "")).strip(),
        rows=_int(ds, "Rows"),
        columns=_int(ds, "Columns"),
        position=position,  # type: ignore[arg-type]
        orientation=_floats(ds, "ImageOrientationPatient", 6),
        pixel_spacing=spacing,  # type: ignore[arg-type]
        slice_thickness=float(ds.get("SliceThickness", 0) or 0),
        transfer_syntax=transfer_syntax,
        has_pixels="PixelData" in ds,
        bits_allocated=_int(ds, "BitsAllocated", 16),
        bits_stored=_int(ds, "BitsStored", 16),
        pixel_representation=_int(ds, "PixelRepresentation"),
        rescale_slope=float(ds.get("RescaleSlope", 1) or 1),
        rescale_intercept=float(ds.get("RescaleIntercept", 0) or 0),
        pixel_offset=_native_offset(ds, transfer_syntax),
    )
