"""HU or nothing: images that cannot hold Hounsfield units are refused at scan time with the tag and
value that say so; MONOCHROME1 is read as GDCM (SimpleITK) reads it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import ct_header, write_ct_series

from ct25d.dicom.headers import read_header
from ct25d.dicom.hu import hu_problem
from ct25d.dicom.series import decode_image
from ct25d.synth.dicom_writer import SliceGeometry, write_secondary_capture


@pytest.fixture
def plain(tmp_path: Path):
    return read_header(write_ct_series(tmp_path / "ct", n=1)[0], "salt")


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({}, ""),
        ({"modality": "MR"}, "Modality MR: not CT"),
        (
            {"samples_per_pixel": 3, "photometric": "YBR_FULL_422"},
            "SamplesPerPixel 3 (YBR_FULL_422): a colour",
        ),
        ({"photometric": "PALETTE COLOR"}, "PhotometricInterpretation PALETTE COLOR"),
        ({"sop_class": "1.2.840.10008.5.1.4.1.1.7"}, "Secondary Capture"),
        ({"sop_class": "1.2.840.10008.5.1.4.1.1.7.2"}, "Secondary Capture"),  # multi-frame grey
        ({"image_type": "DERIVED\\SECONDARY", "sop_class": "1.2.840.10008.5.1.4.1.1.4"}, "ImageType DERIVED"),
        # a CT reformat: derived, but CT storage with a 16-bit HU rescale holds real HU
        ({"image_type": "DERIVED\\SECONDARY\\REFORMATTED"}, ""),
        (
            {"bits_stored": 8, "pixel_representation": 0, "rescale_intercept": -1024.0},
            "BitsStored 8 (PixelRepresentation 0) with RescaleSlope 1 and RescaleIntercept -1024 holds only "
            "-1024..-769",
        ),
        ({"bits_stored": 12, "pixel_representation": 0, "rescale_intercept": 0.0}, ""),  # RSNA wrap: repaired
        ({"bits_stored": 12, "pixel_representation": 0, "rescale_intercept": -1024.0}, ""),
        ({"photometric": "MONOCHROME1"}, ""),
        # a perfusion map whose RescaleType says it is not HU; the same type on an axial image is kept
        (
            {"image_type": "DERIVED\\PRIMARY\\PERFUSION\\RCBF", "rescale_type": "US"},
            "RescaleType US with ImageType DERIVED\\PRIMARY\\PERFUSION\\RCBF: a derived map",
        ),
        ({"image_type": "DERIVED\\PRIMARY\\SUBTRACTION", "rescale_type": "US"}, "RescaleType US"),
        ({"image_type": "ORIGINAL\\PRIMARY\\AXIAL", "rescale_type": "US"}, ""),
        ({"image_type": "DERIVED\\PRIMARY\\MIP"}, ""),  # HU: a series-level matter (choice: derived)
    ],
)
def test_hu_problem_names_the_tag_and_value(plain, changes: dict, reason: str) -> None:
    problem = hu_problem(dataclasses.replace(plain, **changes))
    assert reason in problem if reason else problem == ""


@pytest.mark.parametrize("colour", [False, True])
def test_secondary_captures_written_as_ct_are_refused(tmp_path: Path, colour: bool) -> None:
    geometry = SliceGeometry((0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), 0.8)
    path = tmp_path / "capture.dcm"
    hu = np.linspace(-100, 200, 256).reshape(16, 16)
    write_secondary_capture(path, ct_header(), geometry, hu, "2.25.77", colour=colour)
    header = read_header(path, "salt")
    assert header.modality == "CT"
    assert "not HU" in hu_problem(header)
    # what ingest used to do with the 8-bit one: "HU" of -1024..-769, dropped later as all air
    if not colour:
        assert pydicom.dcmread(path).pixel_array.max() <= 255


@pytest.mark.parametrize("storage", ["s0", "u1024"])
def test_monochrome1_is_read_as_gdcm_reads_it(tmp_path: Path, storage: str) -> None:
    path = write_ct_series(tmp_path / "m1", n=1, header=ct_header(storage=storage))[0]
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(path)
    header = read_header(path, "salt")
    ours = np.empty((header.rows, header.columns), np.int16)
    decode_image(header, ours)
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))[0]
    np.testing.assert_array_equal(ours, reference)
    assert not np.array_equal(ours, ds.pixel_array.astype(np.int32) + int(ds.RescaleIntercept))
