"""Write CT slices as standard DICOM files, with the header variety of real archives: storage
conventions, the RSNA 12-bit wrap, compressed transfer syntaxes, gantry tilt; whole series as one
multi-frame Enhanced CT file (what current scanners export); and secondary captures that claim
Modality CT but hold rendered grey levels or colour.

Files are byte-identical for identical inputs: no timestamps, UIDs are passed in by the caller.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    MRImageStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
)

# Storage conventions: (PixelRepresentation, BitsStored, RescaleIntercept).
STORAGE: dict[str, tuple[int, int, float]] = {
    "u1024": (0, 12, -1024.0),  # unsigned 12-bit, intercept -1024 (most scanners)
    "u1000": (0, 16, -1000.0),  # unsigned 16-bit, intercept -1000
    "s0": (1, 16, 0.0),  # signed, intercept 0
    "wrap": (0, 12, 0.0),  # RSNA quirk: HU mod 4096 in 12 unsigned bits, intercept 0
}
TRANSFER_SYNTAX = {"explicit": ExplicitVRLittleEndian, "rle": RLELossless, "j2k": JPEG2000Lossless}
WRAP_HU_RANGE = (-1000.0, 3095.0)


@dataclass(frozen=True)
class SeriesHeader:
    """Everything that is constant across the slices of one series."""

    study_uid: str
    series_uid: str
    frame_uid: str
    patient_id: str
    patient_name: str
    patient_birth_date: str
    patient_sex: str
    study_date: str
    study_time: str
    accession: str
    study_id: str
    study_description: str
    series_description: str
    series_number: int
    manufacturer: str
    model: str
    institution: str
    kernel: str
    kvp: float
    slice_thickness: float
    tilt_deg: float = 0.0
    storage: str = "u1024"
    transfer_syntax: str = "explicit"
    window_center: tuple[float, ...] = (40.0,)
    window_width: tuple[float, ...] = (80.0,)
    contrast_agent: str = ""
    modality: str = "CT"  # "MR" / "OT" for deliberately non-CT files


@dataclass(frozen=True)
class SliceGeometry:
    """Where one slice lies: top-left pixel centre and the row/column directions (LPS)."""

    position: Sequence[float]
    row_dir: Sequence[float]
    col_dir: Sequence[float]
    spacing: float


def _ds(values: Sequence[float], digits: int) -> list[str]:
    """Decimal strings with a fixed number of digits (no '-0'), always within the 16-char DS limit."""
    out = []
    for v in values:
        s = f"{float(v):.{digits}f}".rstrip("0").rstrip(".")
        out.append("0" if s in ("-0", "") else s)
    return out


def _window_value(values: tuple[float, ...]) -> float | list[str]:
    """A window setting as DICOM holds it: one number, or a multi-valued DS for several presets."""
    return _ds(values, 1) if len(values) > 1 else values[0]


def _set_position(ds: Dataset, position: Sequence[float]) -> None:
    """ImagePositionPatient and the SliceLocation (its z) set together, so they always agree."""
    ds.ImagePositionPatient = _ds(position, 4)
    ds.SliceLocation = _ds([position[2]], 4)[0]


def _pixel_bytes(stored: np.ndarray, rep: int) -> bytes:
    """PixelData bytes: 16-bit little-endian, signed iff PixelRepresentation is 1."""
    return np.ascontiguousarray(stored).astype("<u2" if rep == 0 else "<i2").tobytes()


def hu_range(storage: str) -> tuple[float, float]:
    """HU values a storage convention can represent (what a round trip clips to)."""
    rep, bits, intercept = STORAGE[storage]
    if storage == "wrap":
        return WRAP_HU_RANGE
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if rep == 1 else (0, (1 << bits) - 1)
    return lo + intercept, hi + intercept


def encode_hu(hu: np.ndarray, storage: str) -> np.ndarray:
    """HU -> stored integers: round half to even, clip to the storage range (wrap: HU mod 4096).

    Rounding happens in HU (before the integer intercept is removed), so decoding gives back
    exactly `clip(rint(hu), *hu_range(storage))`.
    """
    rep, _, intercept = STORAGE[storage]
    v = np.clip(np.rint(hu.astype(np.float64)), *hu_range(storage))
    if storage == "wrap":
        return np.mod(v.astype(np.int32), 4096).astype(np.uint16)
    return (v - intercept).astype(np.int16 if rep == 1 else np.uint16)


def decode_hu(ds: Dataset) -> np.ndarray:
    """Reference decoder: stored values -> HU, including the known repair of the 12-bit wrap."""
    arr = ds.pixel_array.astype(np.float64)
    slope = float(ds.get("RescaleSlope", 1.0))
    intercept = float(ds.get("RescaleIntercept", 0.0))
    if int(ds.BitsStored) == 12 and int(ds.PixelRepresentation) == 0 and intercept > -100:
        x = arr + 1000
        x[x >= 4096] -= 4096
        return x * slope - 1000
    return arr * slope + intercept


def build_dataset(
    header: SeriesHeader,
    geometry: SliceGeometry,
    stored: np.ndarray | None,
    sop_uid: str,
    instance_number: int,
) -> Dataset:
    """The full dataset of one slice (uncompressed); `stored=None` builds one with no PixelData."""
    rep, bits, intercept = STORAGE[header.storage]
    sop_class = {"CT": CTImageStorage, "MR": MRImageStorage}.get(
        header.modality, SecondaryCaptureImageStorage
    )
    rows, cols = stored.shape if stored is not None else (256, 256)
    with pydicom_config.disable_value_validation():
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = (
            ["ORIGINAL", "PRIMARY", "AXIAL"] if header.modality == "CT" else ["DERIVED", "SECONDARY"]
        )
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = header.study_date
        ds.SeriesDate = header.study_date
        ds.StudyTime = header.study_time
        ds.SeriesTime = header.study_time
        ds.AccessionNumber = header.accession
        ds.Modality = header.modality
        ds.Manufacturer = header.manufacturer
        ds.InstitutionName = header.institution
        ds.ReferringPhysicianName = "SYNTH^REFERRER"
        ds.StudyDescription = header.study_description
        ds.SeriesDescription = header.series_description
        ds.ManufacturerModelName = header.model
        ds.PatientName = header.patient_name
        ds.PatientID = header.patient_id
        ds.PatientBirthDate = header.patient_birth_date
        ds.PatientSex = header.patient_sex
        if header.contrast_agent:
            ds.ContrastBolusAgent = header.contrast_agent
        ds.SliceThickness = _ds([header.slice_thickness], 4)[0]
        if header.modality == "CT":
            ds.KVP = _ds([header.kvp], 1)[0]
            ds.GantryDetectorTilt = _ds([header.tilt_deg], 3)[0]
            ds.ConvolutionKernel = header.kernel
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = header.study_uid
        ds.SeriesInstanceUID = header.series_uid
        ds.StudyID = header.study_id
        ds.SeriesNumber = header.series_number
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = instance_number
        _set_position(ds, geometry.position)
        ds.ImageOrientationPatient = _ds([*geometry.row_dir, *geometry.col_dir], 6)
        ds.FrameOfReferenceUID = header.frame_uid
        ds.PositionReferenceIndicator = ""
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = rows
        ds.Columns = cols
        ds.PixelSpacing = _ds([geometry.spacing, geometry.spacing], 6)
        ds.BitsAllocated = 16
        ds.BitsStored = bits
        ds.HighBit = bits - 1
        ds.PixelRepresentation = rep
        ds.WindowCenter = _window_value(header.window_center)
        ds.WindowWidth = _window_value(header.window_width)
        ds.RescaleIntercept = _ds([intercept], 1)[0]
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        if stored is not None:
            ds.PixelData = _pixel_bytes(stored, rep)
    return ds


class SeriesWriter:
    """Writes the slices of one series from one reused header dataset.

    Building a 60-element dataset per slice costs more than writing it, so only the per-slice
    elements (UIDs, InstanceNumber, position, pixels, transfer syntax) change between files.
    """

    def __init__(
        self,
        header: SeriesHeader,
        row_dir: Sequence[float],
        col_dir: Sequence[float],
        spacing: float,
        rows: int,
        cols: int,
    ) -> None:
        self.header = header
        geometry = SliceGeometry((0.0, 0.0, 0.0), row_dir, col_dir, spacing)
        self._ds = build_dataset(header, geometry, np.zeros((rows, cols), dtype=np.uint16), "1.2", 1)

    def write(
        self,
        path: str | Path,
        hu: np.ndarray,
        sop_uid: str,
        instance_number: int,
        position: Sequence[float],
        *,
        defect: str = "",
    ) -> None:
        """Encode HU per the header's storage convention and write one file.

        `defect`: "" (valid file), "truncated" (PixelData cut short, like RSNA's ID_6431af929.dcm)
        or "no_pixels" (no PixelData element). Defective files are always written uncompressed.
        """
        ds = self._ds
        rep = STORAGE[self.header.storage][0]
        stored = encode_hu(hu, self.header.storage)
        with warnings.catch_warnings(), pydicom_config.disable_value_validation():
            warnings.simplefilter("ignore")
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
            ds.SOPInstanceUID = sop_uid
            ds.InstanceNumber = instance_number
            _set_position(ds, position)
            if "PixelData" in ds:
                del ds.PixelData
            raw = _pixel_bytes(stored, rep)
            if defect == "truncated":
                raw = raw[: (len(raw) * 3 // 5) & ~1]
            if defect != "no_pixels":
                ds.add_new(0x7FE00010, "OW", raw)
            if not defect and self.header.transfer_syntax != "explicit":
                ds.compress(
                    TRANSFER_SYNTAX[self.header.transfer_syntax],
                    stored,
                    encoding_plugin="pylibjpeg",
                    generate_instance_uid=False,
                )
            ds.save_as(Path(path), enforce_file_format=True)


def write_slice(
    path: str | Path,
    header: SeriesHeader,
    geometry: SliceGeometry,
    hu: np.ndarray,
    sop_uid: str,
    instance_number: int,
    *,
    defect: str = "",
) -> None:
    """Write one slice as its own file (see SeriesWriter.write for `defect`)."""
    writer = SeriesWriter(header, geometry.row_dir, geometry.col_dir, geometry.spacing, *hu.shape)
    writer.write(path, hu, sop_uid, instance_number, geometry.position, defect=defect)


def _item(**values: object) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


ENHANCED_IMAGE_TYPE = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]


def write_enhanced_series(
    path: str | Path,
    header: SeriesHeader,
    geometry: SliceGeometry,
    hu: np.ndarray,
    positions: np.ndarray,
    sop_uid: str,
) -> None:
    """Write a whole series (Z, Y, X) as one multi-frame Enhanced CT Image Storage file.

    Orientation, pixel spacing and rescale go into SharedFunctionalGroupsSequence, each frame's
    ImagePositionPatient into PerFrameFunctionalGroupsSequence, and nothing of it at the top level:
    a reader that looks only there finds no geometry. Frames are stored in reverse order of
    position when the header's numbering is reversed, as some scanners do.
    """
    rep, _, intercept = STORAGE[header.storage]
    z, rows, cols = hu.shape
    with pydicom_config.disable_value_validation():
        ds = build_dataset(header, geometry, None, sop_uid, 1)
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
                        "SliceLocation", "RescaleIntercept", "RescaleSlope", "RescaleType", "WindowCenter",
                        "WindowWidth"):  # fmt: skip
            delattr(ds, keyword)
        ds.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
        ds.SOPClassUID = EnhancedCTImageStorage
        ds.ImageType = ENHANCED_IMAGE_TYPE
        ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, z
        ds.DimensionOrganizationSequence = DicomSequence(
            [_item(DimensionOrganizationUID=header.frame_uid + ".1")]
        )
        ds.SharedFunctionalGroupsSequence = DicomSequence([_item(
            PixelMeasuresSequence=DicomSequence([_item(
                PixelSpacing=_ds([geometry.spacing, geometry.spacing], 6),
                SliceThickness=_ds([header.slice_thickness], 4)[0],
            )]),
            PlaneOrientationSequence=DicomSequence([_item(
                ImageOrientationPatient=_ds([*geometry.row_dir, *geometry.col_dir], 6),
            )]),
            PixelValueTransformationSequence=DicomSequence([_item(
                RescaleIntercept=_ds([intercept], 1)[0], RescaleSlope="1", RescaleType="HU",
            )]),
            CTImageFrameTypeSequence=DicomSequence([_item(FrameType=ENHANCED_IMAGE_TYPE)]),
        )])  # fmt: skip
        frames = []
        for k in range(z):
            frames.append(_item(
                PlanePositionSequence=DicomSequence([_item(ImagePositionPatient=_ds(positions[k], 4))]),
                FrameContentSequence=DicomSequence([_item(
                    StackID="1", InStackPositionNumber=k + 1, DimensionIndexValues=[1, k + 1],
                )]),
            ))  # fmt: skip
        ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
        stored = encode_hu(hu, header.storage)
        ds.PixelData = _pixel_bytes(stored, rep)
        ds["PixelData"].VR = "OW"
        if header.transfer_syntax != "explicit":
            ds.compress(TRANSFER_SYNTAX[header.transfer_syntax], stored, encoding_plugin="pylibjpeg",
                        generate_instance_uid=False)  # fmt: skip
        ds.save_as(Path(path), enforce_file_format=True)


def write_secondary_capture(
    path: str | Path,
    header: SeriesHeader,
    geometry: SliceGeometry,
    hu: np.ndarray,
    sop_uid: str,
    *,
    colour: bool,
) -> None:
    """A screenshot-like secondary capture that still says Modality CT: the brain window rendered to
    8-bit grey levels (MONOCHROME2, BitsStored 8, RescaleIntercept -1024, so a converter that trusts
    the rescale reads -1024..-769 "HU"), or as an RGB colour image (SamplesPerPixel 3)."""
    grey = np.clip((hu.astype(np.float64) - 0.0) / 80.0 * 255.0, 0, 255).astype(np.uint8)
    with pydicom_config.disable_value_validation():
        ds = build_dataset(replace(header, modality="CT"), geometry, None, sop_uid, 1)
        ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        ds.SOPClassUID = SecondaryCaptureImageStorage
        ds.ImageType = ["DERIVED", "SECONDARY", "SCREEN SAVE"]
        ds.Rows, ds.Columns = grey.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        if colour:
            ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
            pixels = np.stack([grey, grey, (grey // 2)], axis=-1)  # tinted, as a 3D rendering is
            del ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType
        else:
            ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
            pixels = grey
        ds.add_new(0x7FE00010, "OB", np.ascontiguousarray(pixels).tobytes())
        ds.save_as(Path(path), enforce_file_format=True)
