"""`read_header` parses DICOM bytes and decodes values itself (for speed); pydicom is the reference
it must agree with, on every file of both synthetic layouts and on encodings the synthetic writer
does not produce (implicit VR, big endian, a non-ASCII character set, undefined-length sequences,
long headers, no preamble)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from ct25d.dicom.elements import HEAD_BYTES, RawHeader, from_dataset, parse_file
from ct25d.dicom.headers import WANTED, read_header
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
        "rescale_type": str(ds.get("RescaleType", "")).upper(),
        "sop_class": str(ds.SOPClassUID),
        "samples_per_pixel": int(ds.SamplesPerPixel),
        "photometric": str(ds.PhotometricInterpretation),
        "kernel": str(ds.get("ConvolutionKernel", "")),
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
            read_hu(header.path, rescale, slow)
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
    read_hu(str(out), Rescale(header.rescale_slope, header.rescale_intercept, header.bits_stored,
                              header.pixel_representation), expected)  # fmt: skip
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


def raw_by_pydicom(path: Path) -> RawHeader:
    return from_dataset(pydicom.dcmread(path, defer_size=1024), WANTED)


@pytest.mark.parametrize("layout", ["rsna", "cq500"])
def test_byte_parser_reads_what_pydicom_reads(cohorts: dict[str, Path], layout: str) -> None:
    """Every file the parser follows gives pydicom's raw elements and pixel position; a file it
    does not follow (here: the truncated and garbled inputs) is left to pydicom."""
    parsed = 0
    for path in sorted(cohorts[layout].rglob("*.dcm")):
        raw = parse_file(str(path), WANTED)
        if raw is None:
            with pytest.raises(SeriesError, match="DICOM"):
                read_header(path, SALT)
            continue
        assert raw == raw_by_pydicom(path), path
        parsed += 1
    assert parsed > 0.9 * len(list(cohorts[layout].rglob("*.dcm")))


def test_byte_parser_skips_sequences_and_reads_long_headers(cohorts: dict[str, Path], tmp_path: Path) -> None:
    """Undefined-length sequences and items (nested) and a header longer than the first read."""
    ds = pydicom.dcmread(one_plain_file(cohorts))
    inner = Dataset()
    inner.CodeValue = "T-A0100"
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3.4"
    item.PurposeOfReferenceCodeSequence = Sequence([inner])
    ds.ReferencedImageSequence = Sequence([item, Dataset()])
    ds.add_new(0x00291010, "OB", bytes(3 * HEAD_BYTES))  # a vendor's private block before the pixels
    ds["ReferencedImageSequence"].is_undefined_length = True
    item.is_undefined_length_sequence_item = True
    ds["ReferencedImageSequence"].value[0]["PurposeOfReferenceCodeSequence"].is_undefined_length = True
    for syntax, implicit in ((ExplicitVRLittleEndian, False), (ImplicitVRLittleEndian, True)):
        ds.file_meta.TransferSyntaxUID = syntax
        out = tmp_path / f"sequences-{implicit}.dcm"
        ds.save_as(out, implicit_vr=implicit, little_endian=True)
        assert b"\xff\xff\xff\xff" in out.read_bytes()[:1000]  # really undefined lengths
        raw = parse_file(str(out), WANTED)
        assert raw is not None and raw.pixel_data is not None
        assert raw == raw_by_pydicom(out)
        assert raw.pixel_data[0] > HEAD_BYTES


def test_files_the_parser_does_not_follow_go_to_pydicom(cohorts: dict[str, Path], tmp_path: Path) -> None:
    source = one_plain_file(cohorts)
    no_preamble = tmp_path / "no-preamble.dcm"
    no_preamble.write_bytes(source.read_bytes()[132:])
    assert parse_file(str(no_preamble), WANTED) is None
    with pytest.raises(SeriesError, match="not a DICOM file"):
        read_header(no_preamble, SALT)
    cut = tmp_path / "cut-header.dcm"
    cut.write_bytes(source.read_bytes()[:700])
    assert parse_file(str(cut), WANTED) is None
    with pytest.raises(SeriesError) as caught:  # pydicom reads what is there; the rest is missing
        read_header(cut, SALT)
    assert caught.value.path == str(cut)


def test_byte_parser_follows_a_private_un_sequence(cohorts: dict[str, Path], tmp_path: Path) -> None:
    """Vendors write private sequences as explicit-VR `UN` of undefined length, whose items are
    implicit VR (PS3.5 6.2.2); the parser must step over them instead of giving up."""
    ds = pydicom.dcmread(one_plain_file(cohorts))
    ds.add_new(0x00090010, "LO", "ACME 1.0")  # private creator, so the block is well-formed
    plain = tmp_path / "plain.dcm"
    ds.save_as(plain)
    data = plain.read_bytes()
    creator = data.index(b"ACME 1.0")
    at = creator + len(b"ACME 1.0")  # right after the creator's value: still group 0009
    implicit_item = struct.pack("<HHI", 0x0008, 0x0100, 8) + b"T-A0100 "
    un_sequence = (
        struct.pack("<HH2sHI", 0x0009, 0x1001, b"UN", 0, 0xFFFFFFFF)
        + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + implicit_item
        + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
        + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    )  # fmt: skip
    out = tmp_path / "un-sequence.dcm"
    out.write_bytes(data[:at] + un_sequence + data[at:])
    raw = parse_file(str(out), WANTED)
    assert raw is not None, "the parser gave the file up to pydicom"
    assert raw == raw_by_pydicom(out)
    before = parse_file(str(plain), WANTED)
    assert before is not None and before.pixel_data is not None and raw.pixel_data is not None
    assert raw.pixel_data[0] == before.pixel_data[0] + len(un_sequence)
