"""Stage 1 on several devices (DDP via torchrun): 2 CPU ranks over gloo learn what one process
learns from the same global batch, and resume from a kill like one process does."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_devices import _start
from test_stage1_data import tiny_cohort
from test_stage1_train import assert_same_weights

from ct25d.cli import main
from ct25d.datasets.slice_dataset import EpochBatchSampler
from ct25d.errors import Ct25dError
from ct25d.training.checkpoint import load_checkpoint
from ct25d.training.devices import lease_devices
from ct25d.training.distributed import RankBatchSampler, Ranks

# 24 training slices; batch 7 gives global batches 7, 7, 7, 3, so the two shares differ in size
# (4 + 3, 2 + 1): the loss must be the global batch's, not the mean of the ranks' means.
SETTINGS = {"backbone": "test_resnet", "image_size": 32, "batch_size": 7, "epochs": 2, "drop_rate": 0.0,
            "num_workers": 0, "device": "cpu", "checkpoint_every_steps": 2}  # fmt: skip


@pytest.fixture(scope="module")
def index_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    tiny_cohort(root).to_parquet(root / "index.parquet")
    return root / "index.parquet"


def train(index_file: Path, out: Path, gpus: int, **changes: object) -> Path:
    settings = json.dumps({**SETTINGS, **changes})
    argv = ["train-slices", "--index", str(index_file), "--fold", "0", "--settings", settings,
            "--out", str(out), "--gpus", str(gpus)]  # fmt: skip
    assert main(argv) == 0
    return out


def test_rank_shares_are_the_global_batch_in_order() -> None:
    for world in (2, 3):
        batches = EpochBatchSampler(23, 7, seed=1, min_last=world)
        shares = [RankBatchSampler(batches, Ranks(rank, world, rank)) for rank in range(world)]
        for share in shares:
            share.start(1)
        steps = [list(share) for share in shares]
        batches.start(1)
        for step, batch in enumerate(batches):
            assert [key for s in steps for key in s[step]] == batch
            assert all(s[step] for s in steps), "every rank gets part of every batch"
        assert len({len(s) for s in steps}) == 1 == len({len(share) for share in shares})


def test_two_ranks_compute_the_single_process_gradient(index_file: Path, tmp_path: Path) -> None:
    # One step: AdamW's first moment is (1 - beta1) x the gradient of the global batch.
    one_step = {"epochs": 1, "samples_per_epoch": 7}
    one = train(index_file, tmp_path / "one", 1, **one_step)
    two = train(index_file, tmp_path / "two", 2, **one_step)
    a, b = (load_checkpoint(run / "last.pt")["optimizer"]["state"] for run in (one, two))
    assert a.keys() == b.keys()
    for key in a:
        grad_a, grad_b = a[key]["exp_avg"], b[key]["exp_avg"]
        assert float((grad_a - grad_b).norm()) <= 1e-4 * float(grad_a.norm()) + 1e-12, key


def test_two_ranks_learn_the_single_process_weights(index_file: Path, tmp_path: Path) -> None:
    one = train(index_file, tmp_path / "one", 1)
    two = train(index_file, tmp_path / "two", 2)
    wa, wb = (load_checkpoint(run / "best.pt")["model"] for run in (one, two))
    assert wa.keys() == wb.keys()
    # 8 AdamW steps of lr 1e-3 move weights by up to ~1e-2; float rounding leaves ~1e-4. Per-rank
    # batch norm (no global statistics) differs by ~1e-2 in weights and ~1 in running variances.
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], atol=1e-3, rtol=0, msg=key)
    metrics = [pd.read_csv(run / "metrics.csv") for run in (one, two)]
    np.testing.assert_allclose(metrics[1][["train_loss", "val_loss"]], metrics[0][["train_loss", "val_loss"]],
                               rtol=1e-4)  # fmt: skip
    assert load_checkpoint(two / "best.pt")["meta"]["processes"] == 2


def _ranks(index_file: Path, out: Path, kill: int, **changes: object) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               str(Path(__file__).with_name("ddp_rank.py")), str(index_file),
               json.dumps({**SETTINGS, **changes}), str(out), str(kill)]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_a_killed_two_rank_run_resumes_to_the_same_weights(index_file: Path, tmp_path: Path) -> None:
    # Dropout on: each rank's own RNG stream is saved in last.pt and restored on its rank.
    full = _ranks(index_file, tmp_path / "full", 0, drop_rate=0.5)
    assert full.returncode == 0, full.stderr[-3000:]
    killed = _ranks(index_file, tmp_path / "resumed", 5, drop_rate=0.5)
    assert killed.returncode != 0 and not (tmp_path / "resumed" / "best.pt").exists()
    saved = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert saved["state"]["global_step"] == 4 and len(saved["rng"]) == 2
    resumed = _ranks(index_file, tmp_path / "resumed", 0, drop_rate=0.5)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr
    assert_same_weights(tmp_path / "full" / "last.pt", tmp_path / "resumed" / "last.pt")
    assert_same_weights(tmp_path / "full" / "best.pt", tmp_path / "resumed" / "best.pt")


def test_a_failing_rank_fails_the_command_with_its_reason(
    index_file: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    argv = ["train-slices", "--index", str(index_file), "--fold", "7", "--settings", json.dumps(SETTINGS),
            "--out", str(tmp_path), "--gpus", "2"]  # fmt: skip
    assert main(argv) == 2
    assert "[rank 1] ct25d: fold 7: 72 training and 0 inner-validation slices" in capfd.readouterr().err
    assert "2-rank run failed" in caplog.text


def test_a_multi_device_lease_takes_all_or_waits(tmp_path: Path) -> None:
    holder = _start(tmp_path, 3.0)  # holds one of 2 devices
    assert holder.stdout.readline().strip() in {"cuda:0", "cuda:1"}
    t0 = time.monotonic()
    with lease_devices(2, lock_dir=tmp_path, n_devices=2, poll_s=0.05) as devices:
        waited = time.monotonic() - t0
    assert sorted(devices) == ["cuda:0", "cuda:1"] and waited > 1.0
    holder.wait(10)
    too_many = "3 GPUs asked for, but this machine has 2"
    with pytest.raises(Ct25dError, match=too_many), lease_devices(3, n_devices=2):
        pass
