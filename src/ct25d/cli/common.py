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


def named(text: str) -> tuple[str, str]:
    """argparse type: `NAME=VALUE` (a dataset name and a path or value)."""
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def require(settings: dict[str, Any], key: str, section: str) -> Any:
    """settings[key], or a ConfigError naming `section.key`."""
    if key not in settings:
        raise ConfigError(f"missing config key {section}.{key}")
    return settings[key]


def add_runtime(p: argparse.ArgumentParser) -> None:
    """`--runtime`: settings that change how a job runs, never what it writes (a rule passes them
    outside its `params`, so changing them reruns nothing)."""
    p.add_argument(
        "--runtime",
        type=json_object,
        default={},
        help="runtime-only settings (device, inference batch sizes, checkpoint interval) as JSON",
    )


def add_run_inputs(p: argparse.ArgumentParser) -> None:
    """`--stage1`, `--stage2`, `--baselines`: the runs' metrics.json files, as `load_runs` reads them
    (compare, predict and export take the same runs the same way)."""
    p.add_argument(
        "--stage1", nargs="*", default=[], help="metrics.json of the Stage-1 rules (eval/head, eval/cosine)"
    )
    p.add_argument(
        "--stage2", nargs="*", type=named, default=[], help="BACKBONE:MODEL=metrics.json of each Stage-2 run"
    )
    p.add_argument("--baselines", nargs="*", default=[], help="baseline metrics.json files")
