"""Helpers shared by the subcommand modules."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ct25d.errors import ConfigError


def json_object(text: str) -> dict[str, Any]:
    """argparse type: a JSON object (a rule's `params` arrive this way)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("settings must be a JSON object")
    return value


def require(settings: dict[str, Any], key: str, section: str) -> Any:
    """settings[key], or a ConfigError naming `section.key`."""
    if key not in settings:
        raise ConfigError(f"missing config key {section}.{key}")
    return settings[key]
