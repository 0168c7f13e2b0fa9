"""Stage 1 training: a job killed mid-epoch and restarted ends with the same weights, bit for bit."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from test_stage1_data import tiny_cohort

from ct25d.errors import ConfigError
from ct25d.training.checkpoint import load_checkpoint
from ct25d.training.stage1 import train_stage1

# 24 training slices, batch 8: 3 steps per epoch, 6 in all; dropout exercises the global RNG.
SETTINGS = dict(backbone="test_resnet", image_size=32, batch_size=8, epochs=2, drop_rate=0.5,
                checkpoint_every_steps=2, num_workers=0, eval_batch_size=16)  # fmt: skip


class Killed(Exception):
    pass


def kill_at(step: int):
    def on_step(global_step: int) -> None:
        if global_step == step:
            raise Killed

    return on_step


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    return tiny_cohort(tmp_path_factory.mktemp("stage1_train"))


@pytest.fixture(scope="module")
def uninterrupted(index: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("full")
    train_stage1(index, 0, SETTINGS, out)
    return out


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    diff = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not diff, f"weights differ in {diff[:5]}"


def test_outputs(uninterrupted: Path) -> None:
    for name in ("last.pt", "best.pt", "metrics.csv", "learning_curve.png", "settings.json"):
        assert (uninterrupted / name).is_file(), name
    metrics = pd.read_csv(uninterrupted / "metrics.csv")
    assert list(metrics["epoch"]) == [0, 1]
    assert {"train_loss", "val_loss", "val_auc_any", "val_f1_any", "lr"} <= set(metrics.columns)
    assert metrics["val_auc_any"].notna().all()


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_is_bit_identical(
    index: pd.DataFrame, uninterrupted: Path, tmp_path: Path, workers: int
) -> None:
    # Killed at step 5 (mid epoch 1): the restart resumes from the step-4 checkpoint and redoes step 5.
    with pytest.raises(Killed):
        train_stage1(index, 0, {**SETTINGS, "num_workers": workers}, tmp_path, on_step=kill_at(5))
    state = load_checkpoint(tmp_path / "last.pt")["state"]
    assert (state["epoch"], state["step"], state["global_step"]) == (1, 1, 4)
    # The restart may use another worker count: order and augmentation do not depend on it.
    train_stage1(index, 0, {**SETTINGS, "num_workers": 2 - workers}, tmp_path)
    assert_same_weights(uninterrupted / "last.pt", tmp_path / "last.pt")
    assert_same_weights(uninterrupted / "best.pt", tmp_path / "best.pt")
    pd.testing.assert_frame_equal(
        pd.read_csv(uninterrupted / "metrics.csv"), pd.read_csv(tmp_path / "metrics.csv")
    )


def test_resume_after_snakemake_removed_the_outputs(index: pd.DataFrame, tmp_path: Path) -> None:
    """Snakemake deletes a killed job's declared outputs (best.pt, metrics.csv, ...); the resumed run
    still delivers the best epoch's weights, even when that epoch ended before the kill."""
    settings = {**SETTINGS, "monitor": "val_auc_any"}  # epoch 1 does not beat epoch 0 here
    train_stage1(index, 0, settings, tmp_path / "full")
    assert load_checkpoint(tmp_path / "full" / "best.pt")["epoch"] == 0  # the case this test needs
    with pytest.raises(Killed):
        train_stage1(index, 0, settings, tmp_path / "run", on_step=kill_at(5))
    for name in ("best.pt", "metrics.csv", "learning_curve.png"):
        (tmp_path / "run" / name).unlink(missing_ok=True)  # best.pt only appears when training ends
    train_stage1(index, 0, settings, tmp_path / "run")
    assert load_checkpoint(tmp_path / "run" / "best.pt")["epoch"] == 0
    assert_same_weights(tmp_path / "full" / "best.pt", tmp_path / "run" / "best.pt")


def test_augmenting_whole_batches_on_the_device_gives_the_same_weights(
    index: pd.DataFrame, uninterrupted: Path, tmp_path: Path
) -> None:
    """`augment_on: device` (what a GPU gets) applies the loader's own draws to the whole batch:
    on the CPU the run is bit-identical to augmenting in the loader."""
    train_stage1(index, 0, {**SETTINGS, "augment_on": "device"}, tmp_path)
    assert_same_weights(uninterrupted / "last.pt", tmp_path / "last.pt")
    with pytest.raises(ConfigError, match=r"stage1\.augment_on"):
        train_stage1(index, 0, {**SETTINGS, "augment_on": "gpu"}, tmp_path / "bad")


def test_compiled_training_keeps_the_checkpoint_names_and_learns_the_same(
    index: pd.DataFrame, tmp_path: Path
) -> None:
    """`compile: true` (torch.compile of the training step; inductor builds C++ kernels on the CPU):
    the checkpoint keeps the model's own parameter names and the weights match the eager run."""
    settings = {**SETTINGS, "epochs": 1, "drop_rate": 0.0}
    train_stage1(index, 0, settings, tmp_path / "eager")
    from torch._dynamo.utils import counters

    counters.clear()
    train_stage1(index, 0, {**settings, "compile": True}, tmp_path / "compiled")
    assert counters["stats"]["unique_graphs"] > 0  # the step did go through torch.compile
    eager, compiled = weights(tmp_path / "eager" / "last.pt"), weights(tmp_path / "compiled" / "last.pt")
    assert compiled.keys() == eager.keys()
    # Fused kernels sum in another order and Adam scales the tiny differences up to ~2e-4; a step
    # that computed nothing would leave weights ~3e-3 (3 steps at lr 1e-3) from the eager ones.
    for name in eager:
        torch.testing.assert_close(compiled[name], eager[name], rtol=1e-3, atol=5e-4, msg=name)


def test_a_different_seed_changes_the_weights(
    index: pd.DataFrame, uninterrupted: Path, tmp_path: Path
) -> None:
    """Guards the test above against passing trivially (e.g. nothing being trained)."""
    train_stage1(index, 0, {**SETTINGS, "epochs": 1, "seed": 1}, tmp_path)
    a, b = weights(uninterrupted / "last.pt"), weights(tmp_path / "last.pt")
    assert any(not torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda idx: ({**SETTINGS, "lr": 0.01}, idx), id="settings"),
        pytest.param(lambda idx: (SETTINGS, idx.assign(any=1 - idx["any"])), id="data"),
    ],
)
def test_stale_checkpoint_is_not_resumed(index: pd.DataFrame, tmp_path: Path, change) -> None:
    """A partial run of other settings or data is discarded: the result equals a fresh run."""
    with pytest.raises(Killed):
        train_stage1(index, 0, SETTINGS, tmp_path / "run", on_step=kill_at(2))
    settings, data = change(index)
    train_stage1(data, 0, settings, tmp_path / "run")
    train_stage1(data, 0, settings, tmp_path / "fresh")
    assert_same_weights(tmp_path / "fresh" / "last.pt", tmp_path / "run" / "last.pt")


def test_a_finished_run_is_redone_not_resumed(
    index: pd.DataFrame, uninterrupted: Path, tmp_path: Path
) -> None:
    """Snakemake reruns a finished job only to redo it (e.g. --forcerun)."""
    train_stage1(index, 0, SETTINGS, tmp_path)
    steps: list[int] = []
    train_stage1(index, 0, SETTINGS, tmp_path, on_step=steps.append)
    assert steps == list(range(1, 7))  # 2 epochs x 3 steps, all done again
    assert_same_weights(uninterrupted / "last.pt", tmp_path / "last.pt")


def test_unknown_setting_is_an_error(index: pd.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown stage1 setting"):
        train_stage1(index, 0, {**SETTINGS, "epoch": 3}, tmp_path)


def test_multiclass_task_trains_on_a_label_column(index: pd.DataFrame, tmp_path: Path) -> None:
    labelled = index.assign(label=index["any"].astype("Int64") + index["subdural"].astype("Int64"))
    settings = {
        **SETTINGS,
        "task": "multiclass",
        "epochs": 1,
        "balanced_sampling": True,
        "monitor": "val_f1_macro",
    }
    result = train_stage1(labelled, 0, settings, tmp_path)
    assert result.history[0]["val_f1_macro"] >= 0
    assert load_checkpoint(result.best)["class_names"] == ["class_0", "class_1", "class_2"]
