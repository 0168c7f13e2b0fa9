"""Errors that name the thing at fault, so a user can act on the message alone."""

from __future__ import annotations


class Ct25dError(Exception):
    """Base class for every error ct25d raises on purpose."""


class ConfigError(Ct25dError):
    """A config key or value is wrong; the message names the key."""


class SeriesError(Ct25dError):
    """A DICOM series cannot become a volume; the message names the file or series and why."""

    def __init__(self, reason: str, path: str | None = None) -> None:
        self.reason = reason
        self.path = path
        super().__init__(f"{path}: {reason}" if path else reason)


class SliceError(SeriesError):
    """One file of a series cannot be decoded; the rest of the series may still form a volume."""
