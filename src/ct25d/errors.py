"""Errors that name the thing at fault, so a user can act on the message alone."""

from __future__ import annotations

from collections.abc import Sequence


class Ct25dError(Exception):
    """Base class for every error ct25d raises on purpose."""


class ConfigError(Ct25dError):
    """A config key or value is wrong; the message names the key."""


class SeriesError(Ct25dError):
    """A DICOM series cannot become a volume; the message names the file or series and why.

    `dropped` holds the files set aside on the way (each with its own reason), so a report can name
    them even though the series failed.
    """

    def __init__(self, reason: str, path: str | None = None, dropped: Sequence[SliceError] = ()) -> None:
        self.reason = reason
        self.path = path
        self.dropped = list(dropped)
        super().__init__(f"{path}: {reason}" if path else reason)


class SliceError(SeriesError):
    """One image of a series is set aside (cannot be decoded, or duplicates another); the rest of
    the series may still form a volume. `frame` is its frame in a multi-frame file (-1: none)."""

    def __init__(self, reason: str, path: str | None = None, frame: int = -1) -> None:
        super().__init__(reason, path)
        self.frame = frame
