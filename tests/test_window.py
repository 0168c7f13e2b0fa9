"""CT windowing: exact values worked out by hand from floor((clip(hu) - low) * 255 / width + 0.5)."""

from __future__ import annotations

import numpy as np
import pytest

from ct25d.errors import ConfigError
from ct25d.slices import DEFAULT_WINDOWS, Window, apply_windows

BRAIN, SUBDURAL, WIDE = DEFAULT_WINDOWS


def window_row(hu: list[int], window: Window) -> list[int]:
    volume = np.array(hu, dtype=np.int16).reshape(1, 1, -1)
    return apply_windows(volume, [window])[0, 0, 0].tolist()


def test_defaults_match_design() -> None:
    assert [(w.name, w.low, w.high) for w in DEFAULT_WINDOWS] == [
        ("brain", 0, 80),
        ("subdural", -32.5, 182.5),
        ("wide", -100, 400),
    ]


def test_brain_window_edges_and_centre() -> None:
    # low 0, width 80: 255/80 = 3.1875 per HU.
    # -1000,-1 -> clipped to 0 -> 0; 1 -> 3.1875+.5 -> 3; 40 -> 127.5+.5 -> 128 (half up);
    # 79 -> 251.8125+.5 -> 252; 80 and above -> 255.
    assert window_row([-1000, -1, 0, 1, 40, 79, 80, 81, 3000], BRAIN) == [0, 0, 0, 3, 128, 252, 255, 255, 255]


def test_subdural_window_half_integer_low() -> None:
    # low -32.5, width 215. -33 -> clipped -> 0; -32 -> 0.5*255/215 = 0.593+.5 -> 1;
    # 75 -> 107.5*255/215 = 127.5 exactly -> 128; 182 -> 214.5*255/215 = 254.41+.5 -> 254; 183 -> 255.
    assert window_row([-33, -32, 75, 182, 183], SUBDURAL) == [0, 1, 128, 254, 255]


def test_wide_window() -> None:
    # low -100, width 500: 255/500 = 0.51 per HU. -1024 -> 0; -100 -> 0; 0 -> 51+.5 -> 51;
    # 150 -> 127.5 -> 128; 399 -> 254.49+.5 -> 254; 400 -> 255.
    assert window_row([-1024, -100, 0, 150, 399, 400], WIDE) == [0, 0, 51, 128, 254, 255]


def test_shape_dtype_channel_order_and_float_input() -> None:
    hu = np.full((2, 4, 5), 40, dtype=np.int16)
    out = apply_windows(hu)
    assert out.shape == (2, 3, 4, 5) and out.dtype == np.uint8
    # 40 HU: brain 128; subdural 72.5*255/215 = 85.99 -> 86; wide 140*0.51 = 71.4 -> 71.
    assert out[:, 0].tolist() == np.full((2, 4, 5), 128).tolist()
    assert out[:, 1].tolist() == np.full((2, 4, 5), 86).tolist()
    assert out[:, 2].tolist() == np.full((2, 4, 5), 71).tolist()
    assert np.array_equal(apply_windows(hu.astype(np.float64)), out)


def test_bad_volumes_rejected() -> None:
    with pytest.raises(ValueError, match="Z, H, W"):
        apply_windows(np.zeros((4, 4), np.int16))
    with pytest.raises(ValueError, match="NaN"):
        apply_windows(np.full((1, 2, 2), np.nan))


def test_from_config() -> None:
    window = Window.from_config({"name": "brain", "center": 40, "width": 80})
    assert window == BRAIN


@pytest.mark.parametrize(
    ("cfg", "key"),
    [
        ({"center": 40, "width": 80}, "windows[0].name"),
        ({"name": "b", "width": 80}, "windows[0].center"),
        ({"name": "b", "center": 40}, "windows[0].width"),
        ({"name": "b", "center": 40, "width": 0}, "windows[0].width"),
        ({"name": "b", "center": 40, "width": -5}, "windows[0].width"),
        ({"name": "b", "center": "40", "width": 80}, "windows[0].center"),
        ({"name": "b", "center": 40, "width": True}, "windows[0].width"),
        ({"name": "", "center": 40, "width": 80}, "windows[0].name"),
    ],
)
def test_bad_config_names_key(cfg: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        Window.from_config(cfg, where="windows[0]")


def test_direct_construction_rejects_bad_width() -> None:
    with pytest.raises(ConfigError, match="width"):
        Window("x", 0, 0)
