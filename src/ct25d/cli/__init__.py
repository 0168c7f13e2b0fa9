"""The `ct25d` command line: one subcommand per workflow step, so a step runs the same by hand,
in a test and inside a Snakemake rule. Settings arrive as JSON (the rule's `params`, which are
also what Snakemake compares to decide reruns). Each stage's subcommands live in their own module
with a `register(subparsers)` function."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ct25d.cli import baselines, bundle, ingest, predict, preprocess, saliency, stage1, stage2, sweep
from ct25d.errors import Ct25dError

log = logging.getLogger("ct25d")
STAGES = (ingest, preprocess, stage1, stage2, baselines, predict, bundle, saliency, sweep)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ct25d", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for stage in STAGES:
        stage.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what a multi-rank run starts again
    rank = f"[rank {os.environ['RANK']}] " if "WORLD_SIZE" in os.environ else ""
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format=f"%(asctime)s %(levelname)s {rank}%(name)s: %(message)s",
    )
    try:
        args.func(args)
    except Ct25dError as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
