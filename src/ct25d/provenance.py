"""What made an artifact: the stage's settings and the versions of the code that ran.

Stamps carry no timestamps or host names so that rerunning a stage gives byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from importlib import metadata
from typing import Any

from ct25d import __version__

_PACKAGES = ("numpy", "pydicom", "SimpleITK", "zarr", "pandas", "pyarrow", "torch", "timm", "monai")


@cache
def versions() -> dict[str, str]:
    """Versions of ct25d and the libraries whose behaviour shapes the artifacts."""
    found = {"ct25d": __version__}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


def settings_key(settings: dict[str, Any]) -> str:
    """Short stable hash of a stage's settings, used to name artifacts by what made them."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:10]


def stamp(stage: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Provenance record stored in every artifact's metadata."""
    return {
        "stage": stage,
        "settings": settings,
        "settings_key": settings_key(settings),
        "versions": versions(),
    }
