"""Device leases: concurrent jobs get different devices; a released or killed job frees its device."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from ct25d.training.devices import lease_device

HOLDER = """
import sys, time
from pathlib import Path
from ct25d.training.devices import lease_device
with lease_device(lock_dir=Path(sys.argv[1]), n_devices=2, poll_s=0.05) as device:
    print(device, flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _start(lock_dir: Path, hold_s: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock_dir), str(hold_s)], stdout=subprocess.PIPE, text=True
    )


def test_two_concurrent_jobs_get_different_devices(tmp_path: Path) -> None:
    first, second = _start(tmp_path, 3.0), _start(tmp_path, 3.0)
    devices = {first.stdout.readline().strip(), second.stdout.readline().strip()}
    assert devices == {"cuda:0", "cuda:1"}
    # A third job waits until one of them ends, then gets the freed device.
    t0 = time.monotonic()
    with lease_device(lock_dir=tmp_path, n_devices=2, poll_s=0.05) as device:
        waited = time.monotonic() - t0
    assert device in {"cuda:0", "cuda:1"}
    assert waited > 1.0
    first.wait(10)
    second.wait(10)


def test_killed_job_releases_its_device(tmp_path: Path) -> None:
    holder = _start(tmp_path, 60.0)
    taken = holder.stdout.readline().strip()
    holder.kill()
    holder.wait(10)
    with lease_device(lock_dir=tmp_path, n_devices=1, poll_s=0.05, timeout_s=5) as device:
        assert device == taken == "cuda:0"


def test_cpu_when_no_gpu_or_asked(tmp_path: Path) -> None:
    with lease_device(lock_dir=tmp_path, n_devices=0) as device:
        assert device == "cpu"
    with lease_device(prefer="cpu", lock_dir=tmp_path, n_devices=2) as device:
        assert device == "cpu"
