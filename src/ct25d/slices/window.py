"""CT windowing: Hounsfield units -> 3-channel uint8 "pseudo-RGB" slices.

Every later stage reads the windowed slices, so the mapping is specified exactly (see
`apply_windows`) and computed in float32 with one IEEE operation per step: the same HU volume
gives bit-identical bytes on every run and machine.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

import numpy as np

from ct25d.errors import ConfigError


@dataclass(frozen=True)
class Window:
    """A display window: HU in [low, high] maps linearly onto 0..255, outside it saturates."""

    name: str
    center: float
    width: float

    def __post_init__(self) -> None:
        if not self.width > 0:
            raise ConfigError(f"window {self.name!r}: width must be > 0, got {self.width}")

    @property
    def low(self) -> float:
        return self.center - self.width / 2

    @property
    def high(self) -> float:
        return self.center + self.width / 2

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], where: str = "window") -> Window:
        """Build from `{name, center, width}`; errors name the offending key as `<where>.<key>`."""
        if not isinstance(cfg, Mapping):
            raise ConfigError(f"{where}: expected a mapping with name, center, width; got {cfg!r}")
        for key in ("name", "center", "width"):
            if key not in cfg:
                raise ConfigError(f"{where}.{key}: missing")
        name = cfg["name"]
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}.name: must be a non-empty string, got {name!r}")
        values = {}
        for key in ("center", "width"):
            value = cfg[key]
            if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
                raise ConfigError(f"{where}.{key}: must be a finite number, got {value!r}")
            values[key] = float(value)
        if values["width"] <= 0:
            raise ConfigError(f"{where}.width: must be > 0, got {cfg['width']!r}")
        return cls(name=name, center=values["center"], width=values["width"])


# The main design's three windows; "wide" is -100..400 HU.
DEFAULT_WINDOWS: tuple[Window, Window, Window] = (
    Window("brain", 40.0, 80.0),
    Window("subdural", 75.0, 215.0),
    Window("wide", 150.0, 500.0),
)


def apply_windows(hu: np.ndarray, windows: Sequence[Window] = DEFAULT_WINDOWS) -> np.ndarray:
    """Window a (Z, H, W) HU volume into (Z, len(windows), H, W) uint8, one channel per window.

    Rounding rule, every step a float32 IEEE operation in this order (HU are first cast to float32,
    exact for int16):

        v = floor((clip(hu, low, high) - low) * 255 / width + 0.5)

    i.e. round half up of the exact linear map wherever the intermediate values are representable
    (integer HU with integer or half-integer `low` always are, up to the final division). `low`,
    `high` and `width` are taken as float32. The result lies in 0..255 by construction.
    """
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ValueError(f"apply_windows: expected a (Z, H, W) volume, got shape {hu.shape}")
    if not (np.issubdtype(hu.dtype, np.integer) or np.issubdtype(hu.dtype, np.floating)):
        raise TypeError(f"apply_windows: expected integer or float HU, got dtype {hu.dtype}")
    if not windows:
        raise ValueError("apply_windows: no windows given")
    src = hu.astype(np.float32)  # one copy; integer HU are exact in float32
    if np.issubdtype(hu.dtype, np.floating) and not np.isfinite(src).all():
        raise ValueError("apply_windows: HU volume contains NaN or infinite values")
    out = np.empty((hu.shape[0], len(windows), *hu.shape[1:]), dtype=np.uint8)
    buf = np.empty_like(src)
    for channel, window in enumerate(windows):
        low, high, width = (np.float32(v) for v in (window.low, window.high, window.width))
        np.clip(src, low, high, out=buf)
        buf -= low
        buf *= np.float32(255)
        buf /= width
        buf += np.float32(0.5)
        np.floor(buf, out=buf)
        out[:, channel] = buf  # values are whole numbers in 0..255: the cast is exact
    return out
