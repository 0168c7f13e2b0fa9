"""Models: Stage-1 slice encoders, Stage-2 sequence models, volumetric baselines.

Each family has one `Registry` (see `ct25d.models.registry`), so a config names a model and its
keyword arguments and a new model is one class plus one decorator.
"""

from ct25d.models.registry import Registry

__all__ = ["Registry"]
