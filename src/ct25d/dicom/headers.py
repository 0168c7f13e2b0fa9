"""One DICOM file's header, reduced to what grouping, choosing and sorting need.

Identifying fields (PatientID, UIDs) are replaced by keyed pseudonyms here, at the first step
that sees them, so no later artifact can carry them.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydicom
from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import tag_for_keyword
from pydicom.errors import InvalidDicomError
from pydicom.uid import EnhancedCTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from ct25d.dicom.elements import UNDEFINED, RawHeader, from_dataset, parse_file
from ct25d.errors import SeriesError

# Archives carry values that break the standard (RSNA's SOP UIDs are `ID_<hex>`); reading must
# tolerate them instead of warning once per file. Checks that matter are made explicitly below.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE

# Tags without which a file cannot even be grouped into a study and series.
GROUPING_TAGS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


@functools.lru_cache(maxsize=1 << 16)  # every file of a series repeats its study, series and patient
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
    rescale_type: str = ""  # absent means HU (CT Image module); Enhanced CT writes HU or US
    pixel_offset: int = -1
    # What says whether the pixels hold HU at all, and what kind of series this is.
    sop_class: str = ""
    samples_per_pixel: int = 1
    photometric: str = "MONOCHROME2"
    kernel: str = ""
    contrast_tags: str = ""  # other contrast/bolus tags present, as `Keyword=value` joined by "; "
    frame: int = -1  # frame index within a multi-frame (Enhanced CT) file; -1: a single-frame file

    @property
    def key(self) -> tuple[str, int]:
        """What identifies one image: the file, and the frame within a multi-frame file."""
        return (self.path, self.frame)

    @property
    def name(self) -> str:
        """The image as a report names it: the file, plus the frame of a multi-frame file."""
        return self.path if self.frame < 0 else f"{self.path} [frame {self.frame + 1}]"

    @classmethod
    def from_table(cls, table: pd.DataFrame, root: Path | None = None) -> list[SliceHeader]:
        """Rebuild headers from `files.parquet` rows (paths there are relative to the archive root).

        Built column by column: pandas' row access costs ~70 us a row, more than reading the header.
        """
        n = len(table)
        columns = {name: table[name].tolist() if name in table else [None] * n for name in FIELD_NAMES}
        if root is not None:
            columns["path"] = [os.path.join(root, p) for p in columns["path"]]
        columns["sop_uid"] = table["slice_id"].tolist() if "slice_id" in table else [""] * n
        for key in ("position", "orientation", "pixel_spacing"):
            columns[key] = [_vector(v) for v in columns[key]]
        return [cls(*values) for values in zip(*(columns[name] for name in FIELD_NAMES), strict=True)]

    def as_row(self) -> dict[str, Any]:
        row = {name: getattr(self, name) for name in FIELD_NAMES}
        for key in ("position", "orientation", "pixel_spacing"):
            row[key] = list(row[key]) if row[key] is not None else None
        return row


FIELD_NAMES = tuple(f.name for f in fields(SliceHeader))


def _vector(value: Any) -> tuple[float, ...] | None:
    """A stored position/orientation/spacing (array or list), or None where the header had none."""
    return None if value is None or (np.ndim(value) == 0 and pd.isna(value)) else tuple(value)


NATIVE_SYNTAXES = {ImplicitVRLittleEndian, ExplicitVRLittleEndian}
# Tags that record a contrast injection besides ContrastBolusAgent; vendors fill different ones.
CONTRAST_TAGS = (
    "ContrastBolusRoute", "ContrastBolusVolume", "ContrastBolusTotalDose", "ContrastBolusIngredient",
    "ContrastBolusStartTime", "ContrastFlowRate",
)  # fmt: skip
_KEYWORDS = (
    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "PatientID", "Modality",
    "SeriesDescription", "SeriesNumber", "InstanceNumber", "ImageType", "ContrastBolusAgent", "Rows",
    "Columns", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
    "BitsAllocated", "BitsStored", "PixelRepresentation", "SamplesPerPixel", "NumberOfFrames",
    "RescaleSlope", "RescaleIntercept", "RescaleType", "SpecificCharacterSet", "SOPClassUID",
    "PhotometricInterpretation", "ConvolutionKernel", *CONTRAST_TAGS,
)  # fmt: skip
TAGS = {keyword: tag_for_keyword(keyword) for keyword in _KEYWORDS}
WANTED = frozenset(TAGS.values())


class RawValues:
    """Values decoded straight from the elements' raw bytes.

    Written by hand because pydicom's per-element conversion (a DataElement per access, with
    validation and VR and charset handling) costs ~14 us per tag, which was 60% of the header scan.
    The tags read here are numbers, codes and UIDs in DICOM's default ASCII repertoire, whose
    decoding is a split and an int()/float(); free text (LO) that is not ASCII goes through
    pydicom's own charset decoder.
    """

    def __init__(self, header: RawHeader) -> None:
        self._elements = header.elements
        self._byteorder = "little" if header.little_endian else "big"

    def _raw(self, keyword: str) -> bytes:
        return self._elements.get(TAGS[keyword], b"")

    def strings(self, keyword: str) -> list[str]:
        raw = self._raw(keyword)
        if not raw:
            return []
        if raw.isascii():
            text = raw.decode("ascii")
        else:
            encodings = convert_encodings(self.strings("SpecificCharacterSet") or None)
            text = decode_bytes(raw, encodings, set())
        return [v.strip(" \0") for v in text.split("\\")]

    def text(self, keyword: str) -> str:
        return "\\".join(self.strings(keyword))

    def floats(self, keyword: str, n: int) -> tuple[float, ...] | None:
        """All `n` values of a DS element, or None when it is missing, malformed or has another count."""
        try:
            values = tuple(float(v) for v in self.strings(keyword))
        except ValueError:
            return None
        return values if len(values) == n else None

    def number(self, keyword: str, default: float) -> float:
        """First value of a DS element; `default` when it is missing, empty or zero."""
        values = self.strings(keyword)
        try:
            return float(values[0]) or default if values and values[0] else default
        except ValueError as exc:
            raise ValueError(f"malformed {keyword} {values[0]!r}") from exc

    def integer(self, keyword: str, default: int = 0) -> int:
        """First value of an IS element; `default` when it is missing or malformed."""
        values = self.strings(keyword)
        try:
            return int(float(values[0])) if values and values[0] else default
        except ValueError:
            return default

    def ushort(self, keyword: str, default: int = 0) -> int:
        """A US element (binary, in the dataset's byte order)."""
        raw = self._raw(keyword)
        return int.from_bytes(raw[:2], self._byteorder) if len(raw) >= 2 else default


def _native_offset(header: RawHeader, values: RawValues) -> int:
    """File offset of uncompressed 16-bit single-channel pixel data, or -1 when a decoder is needed."""
    if header.pixel_data is None or header.transfer_syntax not in NATIVE_SYNTAXES:
        return -1
    if (
        values.ushort("BitsAllocated") != 16
        or values.ushort("SamplesPerPixel", 1) != 1
        or values.integer("NumberOfFrames", 1) != 1
    ):
        return -1
    offset, length = header.pixel_data
    return offset if length != UNDEFINED else -1


def file_headers(path: str | Path, salt: str) -> list[SliceHeader]:
    """The headers of one file's images without loading pixel data; raise SeriesError naming the file.

    One header for a single-frame file; one per frame for a multi-frame (Enhanced CT) file, whose
    per-frame geometry and rescale pydicom reads from the functional groups. The fast byte parser
    reads what it follows; pydicom reads the rest (`defer_size` keeps PixelData on disk but still
    records whether the element exists and where it lies).
    """
    path = str(path)
    raw = parse_file(path, WANTED)
    dataset = None
    if raw is None:
        dataset = _dcmread(path)
        raw = from_dataset(dataset, WANTED)
    try:
        header = _header(raw, path, salt)
        if header.sop_class != EnhancedCTImageStorage and RawValues(raw).integer("NumberOfFrames", 1) <= 1:
            return [header]
        from ct25d.dicom.enhanced import frame_headers

        return frame_headers(dataset or _dcmread(path), header)
    except (ValueError, UnicodeDecodeError, LookupError, AttributeError, TypeError) as exc:
        raise SeriesError(f"malformed header value ({type(exc).__name__}: {exc})", path) from exc


def read_header(path: str | Path, salt: str) -> SliceHeader:
    """The header of a single-frame file (see `file_headers`)."""
    headers = file_headers(path, salt)
    if len(headers) != 1:
        raise SeriesError(
            f"a multi-frame file ({len(headers)} frames) where one image was expected", str(path)
        )
    return headers[0]


def _dcmread(path: str) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path, defer_size=1024)
    except InvalidDicomError as exc:
        raise SeriesError(f"not a DICOM file ({exc})", path) from exc
    except Exception as exc:  # pydicom raises many types on a truncated or garbled header
        raise SeriesError(f"unreadable DICOM header ({type(exc).__name__}: {exc})", path) from exc


def _header(raw: RawHeader, path: str, salt: str) -> SliceHeader:
    values = RawValues(raw)
    missing = [keyword for keyword in GROUPING_TAGS if not values.text(keyword)]
    if missing:
        raise SeriesError(f"missing required tag(s) {', '.join(missing)}", path)
    study_uid = values.text("StudyInstanceUID")
    return SliceHeader(
        path=path,
        study_id=pseudonym(study_uid, salt, "st-"),
        series_id=pseudonym(values.text("SeriesInstanceUID"), salt, "se-"),
        patient_id=pseudonym(values.text("PatientID") or study_uid, salt, "pt-"),
        sop_uid=values.text("SOPInstanceUID"),
        modality=values.text("Modality").upper(),
        series_description=values.text("SeriesDescription"),
        series_number=values.integer("SeriesNumber"),
        instance_number=values.integer("InstanceNumber"),
        image_type=values.text("ImageType"),
        contrast_agent=values.text("ContrastBolusAgent"),
        rows=values.ushort("Rows"),
        columns=values.ushort("Columns"),
        position=values.floats("ImagePositionPatient", 3),  # type: ignore[arg-type]
        orientation=values.floats("ImageOrientationPatient", 6),
        pixel_spacing=values.floats("PixelSpacing", 2),  # type: ignore[arg-type]
        slice_thickness=values.number("SliceThickness", 0.0),
        transfer_syntax=raw.transfer_syntax,
        has_pixels=raw.pixel_data is not None,
        bits_allocated=values.ushort("BitsAllocated", 16),
        bits_stored=values.ushort("BitsStored", 16),
        pixel_representation=values.ushort("PixelRepresentation"),
        rescale_slope=values.number("RescaleSlope", 1.0),
        rescale_intercept=values.number("RescaleIntercept", 0.0),
        rescale_type=values.text("RescaleType").upper(),
        pixel_offset=_native_offset(raw, values),
        sop_class=values.text("SOPClassUID"),
        samples_per_pixel=values.ushort("SamplesPerPixel", 1),
        photometric=values.text("PhotometricInterpretation").upper() or "MONOCHROME2",
        kernel=values.text("ConvolutionKernel"),
        contrast_tags="; ".join(f"{k}={values.text(k)}" for k in CONTRAST_TAGS if values.text(k)),
    )
