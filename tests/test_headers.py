"""`read_header` decodes raw element bytes itself (for speed); pydicom's own value conversion is the
reference it must agree with, on every file of both synthetic layouts and on encodings the
synthetic writer does not produce (implicit VR, big endian, a non-ASCII character set)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian

from ct25d.dicom.headers import read_header
from ct25d.dicom.pixels import Rescale, read_hu, read_hu_native
from ct25d.errors import SeriesError, SliceError

SALT = "test-salt"


def pydicom_values(path: Path) -> dict:
    """The header fields as pydicom's full conversion reads them."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)

    def floats(keyword: str) -> tuple[float, ...]:
        return tuple(float(v) for v in ds[keyword].value)

    return {
        "sop_uid": str(ds.SOPInstanceUID),
        "modality": str(ds.Modality).upper(),
        "series_description": str(ds.get("SeriesDescription", "")),
        "series_number": int(ds.get("SeriesNumber", 0) or 0),
        "instance_number": int(ds.get("InstanceNumber", 0) or 0),
        "image_type": "\\".join(str(v) for v in ds.get("ImageType", [])),
        "contrast_agent": str(ds.get("ContrastBolusAgent", "")).strip(),
        "rows": int(ds.Rows),
        "columns": int(ds.Columns),
        "position": floats("ImagePositionPatient"),
        "orientation": floats("ImageOrientationPatient"),
        "pixel_spacing": floats("PixelSpacing"),
        "slice_thickness": float(ds.get("SliceThickness", 0) or 0),
        "bits_allocated": int(ds.BitsAllocated),
        "bits_stored": int(ds.BitsStored),
        "pixel_representation": int(ds.PixelRepresentation),
        "rescale_slope": float(ds.get("RescaleSlope", 1) or 1),
        "rescale_intercept": float(ds.get("RescaleIntercept", 0) or 0),
    }


@pytest.mark.parametrize("layout", ["rsna", "cq500"])
def test_every_readable_file_matches_pydicom_conversion(cohorts: dict[str, Path], layout: str) -> None:
    paths = sorted(p for p in cohorts[layout].rglob("*.dcm"))
    checked = compressed = 0
    for path in paths:
        try:
            header = read_header(path, SALT)
        except SeriesError:
            continue  # the broken inputs; their reports are tested in test_ingest
        if not header.has_pixels or header.position is None:
            continue
        got = {key: getattr(header, key) for key in pydicom_values(path)}
        assert got == pydicom_values(path), path
        compressed += header.pixel_offset < 0
        checked += 1
    assert checked > 0.8 * len(paths)
    assert 0 < compressed < checked  # both the offset path and the decoder path are covered


def test_native_offset_reads_the_same_pixels_as_pydicom(cohorts: dict[str, Path]) -> None:
    for path in sorted(cohorts["cq500"].rglob("*.dcm"))[:40]:
        try:
            header = read_header(path, SALT)
        except SeriesError:
            continue
        if header.pixel_offset < 0:
            continue
        rescale = Rescale(header.rescale_slope, header.rescale_intercept, header.bits_stored,
                          header.pixel_representation)  # fmt: skip
        fast = np.empty((header.rows, header.columns), np.int16)
        slow = np.empty_like(fast)
        try:
            read_hu(header.path, slow)
        except SliceError:  # a truncated file among the broken inputs: both readers must refuse it
            with pytest.raises(SliceError, match="truncated"):
                read_hu_native(header.path, header.pixel_offset, rescale, fast)
            continue
        read_hu_native(header.path, header.pixel_offset, rescale, fast)
        np.testing.assert_array_equal(fast, slow)


def one_plain_file(cohorts: dict[str, Path]) -> Path:
    for path in sorted(cohorts["cq500"].rglob("*.dcm")):
        try:
            if read_header(path, SALT).pixel_offset >= 0:
                return path
        except SeriesError:
            continue
    raise AssertionError("no uncompressed file in the cohort")


def test_implicit_vr_and_latin1_description(cohorts: dict[str, Path], tmp_path: Path) -> None:
    ds = pydicom.dcmread(one_plain_file(cohorts))
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SeriesDescription = "Schädel nativ"
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    out = tmp_path / "implicit.dcm"
    ds.save_as(out, implicit_vr=True, little_endian=True)
    assert b"Sch\xe4del" in out.read_bytes()  # really written as Latin-1
    header = read_header(out, SALT)
    assert header.series_description == "Schädel nativ"
    assert {k: getattr(header, k) for k in pydicom_values(out)} == pydicom_values(out)
    hu = np.empty((header.rows, header.columns), np.int16)
    read_hu_native(str(out), header.pixel_offset, Rescale(header.rescale_slope, header.rescale_intercept,
                   header.bits_stored, header.pixel_representation), hu)  # fmt: skip
    expected = np.empty_like(hu)
    read_hu(str(out), expected)
    np.testing.assert_array_equal(hu, expected)


def test_big_endian_binary_values(cohorts: dict[str, Path], tmp_path: Path) -> None:
    ds = pydicom.dcmread(one_plain_file(cohorts))
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    out = tmp_path / "big.dcm"
    pydicom.dcmwrite(out, ds, implicit_vr=False, little_endian=False, force_encoding=True)
    header = read_header(out, SALT)
    assert (header.rows, header.columns, header.bits_allocated) == (int(ds.Rows), int(ds.Columns), 16)
    assert header.pixel_offset == -1  # not a little-endian native syntax: pydicom's decoder reads it


def test_malformed_rescale_value_names_the_file_and_tag(cohorts: dict[str, Path], tmp_path: Path) -> None:
    ds = pydicom.dcmread(one_plain_file(cohorts))
    ds.RescaleSlope = "7.123456"
    out = tmp_path / "bad-slope.dcm"
    ds.save_as(out)
    out.write_bytes(out.read_bytes().replace(b"7.123456", b"7.1x3456"))  # pydicom refuses to write it
    with pytest.raises(SeriesError, match="RescaleSlope") as caught:
        read_header(out, SALT)
    assert caught.value.path == str(out)
