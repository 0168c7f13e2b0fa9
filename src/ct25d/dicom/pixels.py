"""Pixel data to Hounsfield units, including the RSNA 12-bit wrap repair."""

from __future__ import annotations

import numpy as np
import pydicom

from ct25d.errors import SliceError

HU_MIN, HU_MAX = -32768, 32767


def is_wrapped_12bit(ds: pydicom.Dataset) -> bool:
    """The RSNA 2019 quirk: 12-bit unsigned storage of HU that wrapped at 4096, intercept ~0."""
    return (
        int(ds.get("BitsStored", 16)) == 12
        and int(ds.get("PixelRepresentation", 0)) == 0
        and float(ds.get("RescaleIntercept", -1024)) > -100
    )


def to_hu(ds: pydicom.Dataset, path: str) -> np.ndarray:
    """Decode one slice (compressed syntaxes too) to int16 HU; raise SeriesError naming the file."""
    try:
        stored = ds.pixel_array
    except Exception as exc:  # decoders raise assorted types on short or corrupt pixel data
        raise SliceError(f"cannot decode pixel data ({type(exc).__name__}: {exc})", path) from exc
    if stored.ndim != 2:
        raise SliceError(f"expected one 2-D frame, got pixel array of shape {stored.shape}", path)
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    values = stored.astype(np.int32)
    if int(ds.get("PixelRepresentation", 0)) == 0:
        values &= (1 << int(ds.get("BitsStored", 16))) - 1  # bits above HighBit are not pixel data
    if is_wrapped_12bit(ds):
        # Known repair for the wrapped files: shift by +1000, wrap values >= 4096, intercept -1000.
        values += 1000
        values[values >= 4096] -= 4096
        intercept = -1000.0
    if slope == 1.0 and intercept.is_integer():
        hu = values + int(intercept)
    else:
        hu = np.rint(values * slope + intercept)
    return np.clip(hu, HU_MIN, HU_MAX).astype(np.int16)


def read_hu(path: str) -> tuple[np.ndarray, pydicom.Dataset]:
    """Read one file fully and return (HU slice, dataset)."""
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise SliceError(f"unreadable DICOM file ({type(exc).__name__}: {exc})", path) from exc
    if "PixelData" not in ds:
        raise SliceError("no pixel data", path)
    return to_hu(ds, path), ds
