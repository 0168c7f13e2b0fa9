"""Windowed pseudo-RGB slices and the zarr store every training stage reads them from."""

from ct25d.slices.store import DEFAULT_ZSTD_LEVEL, SliceReader, SliceStoreWriter
from ct25d.slices.window import DEFAULT_WINDOWS, Window, apply_windows

__all__ = [
    "DEFAULT_WINDOWS",
    "DEFAULT_ZSTD_LEVEL",
    "SliceReader",
    "SliceStoreWriter",
    "Window",
    "apply_windows",
]
