"""One rank of a 2-process Stage-1 training on the CPU, killed after step `kill` (0: never).

Started by `torchrun` from tests/test_distributed.py: the `on_step` hook that simulates a killed
job is only reachable from Python, not from `ct25d train-slices`.
"""

from __future__ import annotations

import json
import logging
import sys

import pandas as pd

from ct25d.training.distributed import Ranks
from ct25d.training.stage1 import train_stage1


def main(index: str, settings: str, out: str, kill: str) -> None:
    logging.basicConfig(level=logging.INFO)
    ranks = Ranks.from_env()
    ranks.start("cpu")

    def on_step(step: int) -> None:
        if step == int(kill):
            raise SystemExit(3)

    try:
        train_stage1(pd.read_parquet(index), 0, json.loads(settings), out, "cpu", on_step, ranks)
    finally:
        ranks.stop()


if __name__ == "__main__":
    main(*sys.argv[1:])
