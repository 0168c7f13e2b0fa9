"""stored -> HU: the in-place integer fast path must give what plain float arithmetic gives, also
where stored values would overflow int16 (there it must fall back and clip)."""

from __future__ import annotations

import numpy as np
import pytest

from ct25d.dicom.pixels import HU_MAX, HU_MIN, Rescale, stored_to_hu


def reference(stored: np.ndarray, rescale: Rescale) -> np.ndarray:
    values = stored.astype(np.int64)
    if rescale.pixel_representation == 0 and rescale.bits_stored < 16:
        values &= (1 << rescale.bits_stored) - 1
    return np.clip(np.rint(values * rescale.slope + rescale.intercept), HU_MIN, HU_MAX).astype(np.int16)


CASES = [
    ("uint16 12-bit, intercept -1024", np.uint16, 0, 4095, Rescale(1.0, -1024.0, 12, 0)),
    ("uint16 12-bit with junk above HighBit", np.uint16, 0, 65535, Rescale(1.0, -1024.0, 12, 0)),
    ("uint16 16-bit, would overflow", np.uint16, 0, 65535, Rescale(1.0, -1024.0, 16, 0)),
    ("uint16 16-bit, in range", np.uint16, 0, 30000, Rescale(1.0, -1024.0, 16, 0)),
    ("int16, intercept 0", np.int16, -32768, 32767, Rescale(1.0, 0.0, 16, 1)),
    ("int16, would underflow", np.int16, -32768, 32767, Rescale(1.0, -1024.0, 16, 1)),
    ("int16, in range", np.int16, -2000, 3000, Rescale(1.0, -1024.0, 16, 1)),
    ("slope 0.5, fractional intercept", np.uint16, 0, 4095, Rescale(0.5, -1024.5, 12, 0)),
]


@pytest.mark.parametrize(("name", "dtype", "low", "high", "rescale"), CASES, ids=[c[0] for c in CASES])
def test_matches_float_arithmetic(name: str, dtype: type, low: int, high: int, rescale: Rescale) -> None:
    rng = np.random.default_rng(0)
    stored = rng.integers(low, high, size=(32, 32), endpoint=True).astype(dtype)
    out = np.empty(stored.shape, np.int16)
    stored_to_hu(stored, rescale, out)
    np.testing.assert_array_equal(out, reference(stored, rescale))


@pytest.mark.parametrize(("name", "dtype", "low", "high", "rescale"), CASES, ids=[c[0] for c in CASES])
def test_in_place_on_the_output_buffer(name: str, dtype: type, low: int, high: int, rescale: Rescale) -> None:
    """The native reader puts the file's bytes in `out` and converts them there."""
    rng = np.random.default_rng(1)
    stored = rng.integers(low, high, size=(32, 32), endpoint=True).astype(dtype)
    out = stored.view(np.int16).copy()
    stored_to_hu(out.view(dtype), rescale, out)
    np.testing.assert_array_equal(out, reference(stored, rescale))


def test_input_is_left_untouched() -> None:
    stored = np.arange(60000, 60000 + 1024, dtype=np.uint16).reshape(32, 32)
    before = stored.copy()
    stored_to_hu(stored, Rescale(1.0, -1024.0, 12, 0), np.empty((32, 32), np.int16))
    np.testing.assert_array_equal(stored, before)
