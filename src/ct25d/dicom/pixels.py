"""Pixel data to Hounsfield units, including the RSNA 12-bit wrap repair."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.pixels import pixel_array

from ct25d.errors import SliceError

HU_MIN, HU_MAX = -32768, 32767


@dataclass(frozen=True)
class Rescale:
    """What turns one file's stored values into HU."""

    slope: float = 1.0
    intercept: float = 0.0
    bits_stored: int = 16
    pixel_representation: int = 0
    # MONOCHROME1 stores grey levels inverted; they are inverted back within BitsStored before the
    # rescale, as GDCM (and so SimpleITK) reads them.
    inverted: bool = False

    @property
    def wrapped_12bit(self) -> bool:
        """The RSNA 2019 quirk: 12-bit unsigned storage of HU that wrapped at 4096, intercept ~0."""
        return self.bits_stored == 12 and self.pixel_representation == 0 and self.intercept > -100

    def hu_bounds(self) -> tuple[float, float]:
        """The lowest and highest HU this storage can represent (after the wrap repair)."""
        if self.wrapped_12bit:
            return -1000.0, 3095.0
        bits = self.bits_stored
        low, high = (
            (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if self.pixel_representation else (0, (1 << bits) - 1)
        )
        ends = (low * self.slope + self.intercept, high * self.slope + self.intercept)
        return min(ends), max(ends)


def _bounds(stored: np.ndarray, rescale: Rescale, intercept: int) -> tuple[int, int]:
    """Bounds of the stored values: those BitsStored and the dtype allow when they already keep
    stored + intercept inside int16 (no pass over the pixels), else the actual min and max."""
    if (stored.dtype.kind == "u" and rescale.bits_stored < 16) or rescale.wrapped_12bit:  # masked
        low, high = 0, (1 << rescale.bits_stored) - 1
    else:
        info = np.iinfo(stored.dtype)
        low, high = int(info.min), int(info.max)
    if low + intercept >= HU_MIN and high + intercept <= HU_MAX:
        return low, high
    return int(stored.min()), int(stored.max())


def stored_to_hu(stored: np.ndarray, rescale: Rescale, out: np.ndarray) -> None:
    """Write HU (int16) for `stored` into `out`, clipped to the int16 range; `stored` may be `out`'s
    own memory viewed as the stored dtype (it is then converted in place) and is otherwise left as is.

    The common case (slope 1, integer intercept, values that cannot overflow) is one int16 add with
    no temporaries: it is the hot loop of ingest.
    """
    slope, intercept = rescale.slope, rescale.intercept
    masked = (rescale.pixel_representation == 0 and rescale.bits_stored < 16) or rescale.wrapped_12bit
    into = out.view(stored.dtype) if stored.dtype.itemsize == out.dtype.itemsize else None
    if rescale.inverted:
        stored = np.invert(stored, out=into)  # unsigned: max - v; signed: -v - 1 (the mask below trims)
    if masked:
        mask = stored.dtype.type((1 << rescale.bits_stored) - 1)  # bits above HighBit are not pixel
        stored = np.bitwise_and(stored, mask, out=into)
    if rescale.wrapped_12bit:
        # Known repair for the wrapped files: shift by +1000, wrap values >= 4096, intercept -1000.
        values = stored.astype(np.int32) + 1000
        values[values >= 4096] -= 4096
        stored, intercept = values, -1000.0
    if slope == 1.0 and intercept.is_integer() and HU_MIN <= intercept <= HU_MAX:
        low, high = _bounds(stored, rescale, int(intercept))
        if low + intercept >= HU_MIN and high + intercept <= HU_MAX:
            if stored.dtype.itemsize == 2 and low >= HU_MIN and high <= HU_MAX:
                np.add(stored.view(np.int16), np.int16(intercept), out=out)  # same values as int16
            else:
                np.add(stored, np.int32(intercept), out=out, casting="unsafe")
            return
    hu = np.rint(stored.astype(np.float64) * slope + intercept)
    out[...] = np.clip(hu, HU_MIN, HU_MAX)


def read_hu(path: str, rescale: Rescale, out: np.ndarray, frame: int = -1) -> None:
    """Decode one file, or one frame of a multi-frame file (any transfer syntax pydicom's decoders
    handle), into `out` as HU with the rescale the scan read for it."""
    try:
        stored = pixel_array(path, index=None if frame < 0 else frame)
    except Exception as exc:  # decoders raise assorted types on short or corrupt pixel data
        raise SliceError(f"cannot decode pixel data ({type(exc).__name__}: {exc})", path) from exc
    if stored.shape != out.shape:
        raise SliceError(f"pixel array {stored.shape} does not match Rows/Columns {out.shape}", path)
    stored_to_hu(stored, rescale, out)


def read_hu_native(path: str, offset: int, rescale: Rescale, out: np.ndarray) -> None:
    """Read uncompressed little-endian 16-bit pixels straight from `offset` into `out` as HU.

    pydicom would re-parse the whole header for this; the scan already recorded where the bytes lie.
    """
    expected = out.nbytes
    with open(path, "rb") as file:
        file.seek(offset)
        got = file.readinto(memoryview(out).cast("B"))  # straight into the volume: no temporary
    if got < expected:
        raise SliceError(f"cannot decode pixel data: truncated ({got} of {expected} bytes)", path)
    stored_to_hu(out.view("<i2" if rescale.pixel_representation else "<u2"), rescale, out)
