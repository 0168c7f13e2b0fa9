"""What each registered baseline reads (volume | embeddings | slices), without importing torch.

The workflow needs this to plan a DAG (which store a baseline job depends on), and planning must not
pay for importing torch, MONAI and timm on every `snakemake -n`. The registry in
`ct25d.models.baselines` is the source of the models themselves; a test keeps the two name sets equal.
"""

from __future__ import annotations

from ct25d.errors import ConfigError

BASELINE_INPUTS = {
    **{f"resnet{depth}": "volume" for depth in (10, 18, 34, 50)},
    "densenet121": "volume",
    "unet_dual": "volume",
    "acs": "volume",
    "cnn25": "embeddings",
    "thick2d": "slices",
}


def inputs_of(name: str) -> str:
    """What the registered baseline `name` reads: volume | embeddings | slices."""
    if name not in BASELINE_INPUTS:
        raise ConfigError(f"unknown baseline {name!r}; registered: {sorted(BASELINE_INPUTS)}")
    return BASELINE_INPUTS[name]
