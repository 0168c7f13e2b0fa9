"""A tiny timm-style registry: one decorator per model class, one factory per model family.

Why: the workflow config names a model and its keyword arguments (`{name: bilstm, hidden: 256}`);
adding a model must touch only the file that defines it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

T = TypeVar("T", bound=Callable[..., Any])


class Registry:
    """Maps names to model constructors (classes or factory functions) for one model family."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Class/function decorator: `@STAGE2.register("bilstm")`. Duplicate names are an error."""

        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} model {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return decorator

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def get(self, name: str) -> Callable[..., Any]:
        """The constructor registered under `name`; `KeyError` listing the available names if none."""
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(
                f"unknown {self.kind} model {name!r}; available: {', '.join(self.names()) or '(none)'}"
            ) from None

    def create(self, name: str, **kwargs: Any) -> Any:
        """Build the model registered under `name` with `kwargs`."""
        return self.get(name)(**kwargs)

    def from_config(self, config: Mapping[str, Any], **overrides: Any) -> Any:
        """Build from a config entry `{name: ..., **kwargs}`; `overrides` (e.g. data-derived
        `in_dim`, `num_classes`) win over the config's values."""
        if "name" not in config:
            raise KeyError(f"{self.kind} model config needs a 'name' key; got keys {sorted(config)}")
        kwargs = {k: v for k, v in config.items() if k != "name"}
        return self.create(config["name"], **{**kwargs, **overrides})

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()})"
