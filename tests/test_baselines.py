"""The baselines: each family trains on a tiny cohort and writes what Stage 2 writes; a 3D model can
overfit; thickened input; memory and config checks that stop before training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from test_stage1_data import study_table, tiny_cohort

from ct25d.config_check import check_baselines
from ct25d.datasets.slice_dataset import SliceDataset
from ct25d.errors import ConfigError
from ct25d.labels import RSNA_LABELS
from ct25d.models.baselines import BASELINES
from ct25d.report.compare import write_comparison
from ct25d.shards import shard_writer
from ct25d.training.baseline import BaselineSettings, StudyLoss, train_baseline, train_thickened
from ct25d.training.embed import extract_embeddings
from ct25d.training.stage1 import train_stage1

STAGE1 = dict(backbone="test_resnet", image_size=32, batch_size=8, epochs=1, num_workers=0)
SETTINGS = dict(epochs=2, batch_size=4, seed=0)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Slice index, study table, Stage-1 run and embeddings, and a fixed volume store of the same studies
    (each volume: the study's slices, lesion masks where a blob was drawn)."""
    root = tmp_path_factory.mktemp("baselines")
    index = tiny_cohort(root, size=64, depth=32)
    studies = study_table(index)
    train_stage1(index, 0, STAGE1, root / "stage1")
    extract_embeddings(index, root / "stage1" / "best.pt", root / "emb", tta_flip=False, batch_size=16)
    rows = []
    from ct25d.slices.store import SliceReader

    with shard_writer(root / "volumes.zarr", {"test": True}) as writer:
        for (dataset, store, study_id), _ in index.groupby(["dataset", "store", "study_id"]):
            slices = SliceReader(store).read_study(study_id)  # (Z, 3, S, S)
            volume = slices.transpose(1, 0, 2, 3)
            mask = (volume[0] > 200).astype(np.uint8) * 255
            channels = ["brain", "subdural", "wide"]
            if dataset == "rsna":
                volume, channels = np.concatenate([volume, mask[None]]), [*channels, "mask"]
            attrs = {"channels": channels, "source_z": list(range(volume.shape[1]))}
            writer.write(study_id, np.ascontiguousarray(volume), attrs, chunks=volume.shape)
            rows.append(
                {
                    "dataset": dataset,
                    "study_id": study_id,
                    "store": str(root / "volumes.zarr"),
                    "depth": volume.shape[1],
                    "pad_to": 32,
                    "from_slices": True,
                    "has_mask": dataset == "rsna",
                }
            )
    return {"root": root, "index": index, "studies": studies, "volumes": pd.DataFrame(rows)}


def check_outputs(out: Path, studies: pd.DataFrame, method: str) -> dict:
    for name in (
        "best.pt",
        "last.pt",
        "metrics.json",
        "learning_curve.png",
        "predictions_studies.parquet",
        "predictions_slices.parquet",
    ):
        assert (out / name).is_file(), name
    predicted = pd.read_parquet(out / "predictions_studies.parquet")
    assert set(predicted["study_id"]) == set(studies["study_id"])
    assert set(predicted.query("dataset == 'cq500'")["split"]) == {"external"}
    assert predicted[[f"prob_{n}" for n in RSNA_LABELS]].notna().all().all()
    summary = json.loads((out / "metrics.json").read_text())
    assert {f"validation/rsna/volume/{method}", f"external/cq500/volume/{method}"} <= set(summary["results"])
    return summary


@pytest.mark.parametrize(
    "entry",
    [
        {"name": "resnet10", "conv1_t_stride": 2},
        {"name": "unet_dual", "features": [4, 4, 8, 8, 16, 4]},
        {"name": "acs", "backbone": "test_resnet", "mode": "acs", "init": "stage1"},
        {"name": "acs", "backbone": "test_resnet", "mode": "2.5d"},
    ],
    ids=lambda e: f"{e['name']}-{e.get('mode', '')}",
)
def test_volume_families_write_the_stage2_artifacts(cohort: dict, entry: dict, tmp_path: Path) -> None:
    summary = train_baseline(
        cohort["studies"],
        0,
        entry,
        {**SETTINGS, "bn_refresh": 4},
        tmp_path,
        volumes=cohort["volumes"],
        stage1_checkpoint=str(cohort["root"] / "stage1" / "best.pt"),
        method="run",
    )
    check_outputs(tmp_path, cohort["studies"], "run")
    assert summary["inputs"] == "volume" and summary["parameters"] > 0 and summary["best_epoch"] in (-1, 0, 1)
    assert 0.0 <= summary["train_auc_any_last"] <= 1.0 and "val_auc_any" in summary["before_training"]
    assert summary["bn_refresh_volumes"] == 4  # batch norm re-estimated before training
    assert pd.read_parquet(
        tmp_path / "predictions_slices.parquet"
    ).empty  # volume models have no slice scores


def test_acs_from_stage1_in_2p5d_gives_stage1_logits_on_every_slice(cohort: dict) -> None:
    """The transfer is exact before any 3D step: the converted Stage-1 network, fed the volume store's
    input, scores each slice as Stage 1 scores the slice store's slice (same pixels, same scaling)."""
    from ct25d.datasets.volume_dataset import VolumeDataset
    from ct25d.models.stage1 import SliceClassifier
    from ct25d.training.checkpoint import load_checkpoint

    best = cohort["root"] / "stage1" / "best.pt"
    acs = BASELINES.create("acs", in_channels=3, num_classes=6, backbone="test_resnet", mode="2.5d",
                           init="stage1", stage1_checkpoint=str(best),
                           supervision="slice").eval()  # fmt: skip
    stage1 = SliceClassifier("test_resnet", 6)
    stage1.load_state_dict(load_checkpoint(best)["model"])
    stage1.eval()
    state = acs.state_dict()
    for name, value in stage1.state_dict().items():  # every Stage-1 weight, encoder and head
        torch.testing.assert_close(
            state[name.replace("encoder.", "encoder.net.", 1).replace("head.", "head.classifier.", 1)], value
        )
    index = cohort["index"]
    volumes = cohort["volumes"].head(3)
    slices = SliceDataset(index, image_size=64)
    data = VolumeDataset(volumes, np.zeros((len(volumes), 6), dtype=np.float32), depth=32)
    with torch.no_grad():
        for i, study_id in enumerate(volumes["study_id"]):
            per_slice = acs(data[i]["x"][None])[0]  # (D, 6)
            rows = index.index[index["study_id"] == study_id]
            images = torch.stack([slices[int(r)][0] for r in rows])
            torch.testing.assert_close(per_slice, stage1(images)[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("crop_depth", [None, 8])
def test_slice_supervised_acs_starts_at_stage1s_score_and_writes_slice_predictions(
    cohort: dict, tmp_path: Path, crop_depth: int | None
) -> None:
    """`supervision: slice` end to end: the evaluation before any 3D step (epoch -1) of the 2.5D
    conversion scores the inner split as Stage 1 does (max over its slice-store slices), slice
    predictions land on the slice store's rows, and patience stops a run whose monitor stalls.
    With `crop_depth` the network trains on runs of 8 slices and still predicts whole studies."""
    from ct25d.datasets.splits import splits_by_study
    from ct25d.evaluation.metrics import auc_or_nan
    from ct25d.models.stage1 import SliceClassifier
    from ct25d.training.checkpoint import load_checkpoint

    best = cohort["root"] / "stage1" / "best.pt"
    entry = {
        "name": "acs",
        "backbone": "test_resnet",
        "mode": "2.5d",
        "init": "stage1",
        "supervision": "slice",
    }
    settings = {**SETTINGS, "epochs": 5, "patience": 1, "lr": 0.0, "monitor": "val_auc_any",
                "crop_depth": crop_depth}  # fmt: skip
    summary = train_baseline(cohort["studies"], 0, entry, settings, tmp_path, volumes=cohort["volumes"],
                             stage1_checkpoint=str(best), index=cohort["index"], method="run")  # fmt: skip
    check_outputs(tmp_path, cohort["studies"], "run")
    history = pd.read_csv(tmp_path / "metrics.csv")
    assert history["epoch"].iloc[0] == -1 and len(history) == summary["epochs_run"] + 1
    assert summary["epochs_run"] < 5  # an LR of 0 improves nothing: patience 1 stops the run
    assert summary["supervision"] == "slice"
    assert summary["volume_shape"][1] == 32 and summary["crop_depth"] == crop_depth
    slices = pd.read_parquet(tmp_path / "predictions_slices.parquet")
    index = cohort["index"]
    assert set(slices["slice_id"]) == set(index["slice_id"])  # every slice of every study, once
    assert len(slices) == len(index)

    stage1 = SliceClassifier("test_resnet", 6)
    stage1.load_state_dict(load_checkpoint(best)["model"])
    stage1.eval()
    split = splits_by_study(cohort["studies"], 0)
    inner = [key for key, value in split.items() if value == "inner"]
    data = SliceDataset(index, image_size=64)
    prob, truth = [], []
    with torch.no_grad():
        for dataset, study_id in inner:
            rows = index.index[(index["dataset"] == dataset) & (index["study_id"] == study_id)]
            logits = stage1(torch.stack([data[int(r)][0] for r in rows]))[0][:, RSNA_LABELS.index("any")]
            prob.append(float(torch.sigmoid(logits).max()))
            truth.append(
                float(cohort["studies"].set_index(["dataset", "study_id"]).loc[(dataset, study_id), "any"])
            )
    expected = auc_or_nan(np.array(truth), np.array(prob))
    assert summary["before_training"]["val_auc_any"] == pytest.approx(expected, abs=1e-6)

    # The comparison shows what the 3D row read and whether it learned anything on its training set.
    table = write_comparison([], [], tmp_path / "cmp", [tmp_path / "metrics.json"], replicates=20)
    assert table.iloc[0]["train AUC, last epoch"] == f"{summary['train_auc_any_last']:.2f}"
    header = (tmp_path / "cmp" / "comparison.md").read_text().splitlines()[0]
    assert (
        "3D rows read volumes of 3 x 32 x 64 x 64 (each study's own slices at the slice store's pixels"
        in header
    )
    assert ("trained on runs of 8 slices" in header) == (crop_depth == 8)


def test_2p5cnn_trains_on_frozen_embeddings(cohort: dict, tmp_path: Path) -> None:
    entry = {"name": "cnn25", "backbone": "test_resnet", "slices": 8, "hidden": 16}
    summary = train_baseline(
        cohort["studies"], 0, entry, SETTINGS, tmp_path, embeddings=str(cohort["root"] / "emb")
    )
    check_outputs(tmp_path, cohort["studies"], "cnn25")
    assert summary["inputs"] == "embeddings"


def test_thickened_2d_scores_studies_by_their_max_slice(cohort: dict, tmp_path: Path) -> None:
    entry = {"name": "thick2d", "k": 3, "multiplex": True, "slice_attention": True}
    summary = train_thickened(cohort["index"], cohort["studies"], 0, entry, STAGE1, 0.5, tmp_path)
    from ct25d.datasets.splits import study_splits

    scored = cohort["studies"][
        study_splits(cohort["studies"], 0) != "train"
    ]  # training slices: not predicted
    check_outputs(tmp_path, scored, "thick2d")
    assert "validation/rsna/slice/thick2d" in summary["results"]
    slices = pd.read_parquet(tmp_path / "predictions_slices.parquet")
    studies = pd.read_parquet(tmp_path / "predictions_studies.parquet").set_index("study_id")
    np.testing.assert_allclose(
        slices.groupby("study_id")["prob_any"].max(), studies["prob_any"].sort_index(), rtol=1e-6
    )


def test_thickened_2d_can_start_from_the_folds_stage1_weights(cohort: dict, tmp_path: Path) -> None:
    from ct25d.models.stage1 import SliceClassifier
    from ct25d.models.thick import ThickSliceClassifier
    from ct25d.training.baseline import stage1_encoder
    from ct25d.training.checkpoint import load_checkpoint

    checkpoint = cohort["root"] / "stage1" / "best.pt"
    stage1 = SliceClassifier("test_resnet", 6)
    stage1.load_state_dict(load_checkpoint(checkpoint)["model"])
    thick = ThickSliceClassifier(
        "test_resnet", 6, k=3, pretrained=stage1_encoder(checkpoint, "test_resnet", tmp_path)
    )
    image = torch.rand(1, 3, 32, 32)
    with torch.no_grad():  # k copies of one slice: the Stage-1 encoder's response
        torch.testing.assert_close(
            thick.encoder.eval()(image.repeat(1, 3, 1, 1)), stage1.encoder.eval()(image)
        )
    with pytest.raises(ConfigError, match="holds 'test_resnet'"):
        stage1_encoder(checkpoint, "resnet10t", tmp_path)
    entry = {"name": "thick2d", "k": 3, "init": "stage1"}
    summary = train_thickened(
        cohort["index"],
        cohort["studies"],
        0,
        entry,
        STAGE1,
        0.5,
        tmp_path / "run",
        stage1_checkpoint=checkpoint,
    )
    assert "validation/rsna/slice/thick2d" in summary["results"]
    assert (tmp_path / "run" / "stage1_encoder.pth").is_file()


def test_thickened_items_stack_neighbours_and_repeat_the_ends(cohort: dict) -> None:
    index = cohort["index"]
    one, three = SliceDataset(index, image_size=32), SliceDataset(index, image_size=32, thickness=3)
    first = int(index.index[(index["study_id"] == "rsna01") & (index["z"] == 0)][0])
    image = three.load(first)
    assert image.shape == (9, 32, 32)
    torch.testing.assert_close(image[3:6], one.load(first))  # the centre is the row's own slice
    torch.testing.assert_close(image[0:3], one.load(first))  # slice -1 repeats slice 0
    torch.testing.assert_close(image[6:9], one.load(first + 1))


def test_multiplexed_study_prediction_shares_stems_and_matches_each_window(cohort: dict) -> None:
    from ct25d.models.thick import ThickSliceClassifier
    from ct25d.training.stage1 import Stage1Settings, iter_predictions, prediction_loader

    torch.manual_seed(0)
    model = ThickSliceClassifier("resnet10t", 6, k=5, multiplex=True, slice_attention=True).eval()
    with torch.no_grad():
        model.attention.gamma.fill_(0.5)  # the attention path counts too
    frame = cohort["index"].sample(frac=1.0, random_state=0).reset_index(drop=True)  # any row order
    s = Stage1Settings(image_size=32, thickness=5, multiplex=True, num_workers=0, eval_batch_size=7)
    shared = np.zeros((len(frame), 6), dtype=np.float32)
    loader = prediction_loader(frame, None, s, "cpu")
    assert len(loader) == frame["study_id"].nunique()  # one study per batch
    for rows, logits, _ in iter_predictions(model, loader, "cpu", None, tta_flip=True):
        shared[rows] = logits.numpy()
    each = np.zeros_like(shared)  # every 5-slice window through the whole network
    windows = SliceDataset(frame, None, 32, thickness=5)
    with torch.no_grad():
        for row in range(len(frame)):
            x = windows[row][0][None]
            each[row] = ((model(x)[0] + model(torch.flip(x, dims=[-1]))[0]) / 2).numpy()
    np.testing.assert_allclose(shared, each, rtol=1e-4, atol=1e-5)


def _tiny_volumes(n: int = 16, depth: int = 16, size: int = 32) -> dict:
    """`n` noise volumes; positive studies carry their labels on a run of 6 slices (as a bleed
    spans neighbouring slices), the study label being their max."""
    rng = np.random.default_rng(0)
    y = torch.tensor(rng.integers(0, 2, size=(n, 6)), dtype=torch.float32)
    slice_y = torch.zeros(n, depth, 6)
    for b, start in enumerate(rng.integers(0, depth - 6, size=n)):
        slice_y[b, start : start + 6] = y[b]
    return {
        "x": torch.randn(n, 3, depth, size, size, generator=torch.Generator().manual_seed(0)),
        "y": y,
        "slice_y": slice_y,
        "valid": torch.ones(n, depth, dtype=torch.bool),
        "has_mask": torch.zeros(n, dtype=torch.bool),
    }


@pytest.mark.parametrize(
    "entry",
    [
        {"name": "resnet10", "conv1_t_stride": 2},
        {"name": "resnet10", "conv1_t_stride": 2, "supervision": "slice", "pooling": "max", "norm": "group"},
        {"name": "densenet121", "pooling": "attention", "depth": 32},
        {"name": "unet_dual", "features": [4, 4, 8, 8, 16, 4], "supervision": "slice", "lr": 1e-2},
        {"name": "acs", "backbone": "test_resnet", "mode": "acs", "depth": 32},
        {"name": "acs", "backbone": "test_resnet", "mode": "2.5d", "supervision": "slice"},
        {"name": "acs", "backbone": "test_resnet", "mode": "i3d", "pooling": "max", "depth": 32},
    ],
    ids=lambda e: "-".join(str(v) for k, v in e.items() if k not in ("features", "backbone", "depth", "lr")),
)
def test_every_3d_family_overfits_16_tiny_volumes(entry: dict) -> None:
    """The loss on 16 memorisable volumes falls below half the loss of predicting the prior within
    60 full-batch steps: the family, its head and the loss can learn at all (MONAI's instance-normed
    U-Net under an average-pooled head could not)."""
    from ct25d.training.baseline import _forward, _Outputs

    torch.manual_seed(0)
    entry = dict(entry)
    depth = entry.pop("depth", 16)  # families that stride z 32-fold need 32 slices
    lr = entry.pop("lr", 3e-3)
    batch = _tiny_volumes(depth=depth)
    model = BASELINES.create(**entry, in_channels=3, num_classes=6)
    loss_fn = StudyLoss(BaselineSettings())
    prior_logits = torch.logit(batch["y"].mean(0).clamp(0.05, 0.95))
    slice_prior = prior_logits.expand(16, depth, 6) if entry.get("supervision") == "slice" else None
    prior = loss_fn(_Outputs(prior_logits.expand(16, 6), batch["y"], slice_prior), batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(60):
        loss = loss_fn(_forward(model, batch, "volume", "cpu"), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if losses[-1] < float(prior) / 2:
            break
    assert losses[-1] < float(prior) / 2, (float(prior), losses[::10])


def test_a_depth_crop_is_a_run_of_real_slices_with_their_labels(cohort: dict) -> None:
    """`crop_depth`: every training item is `crop` consecutive stored slices (no padding) with
    those slices' labels; the draw is fixed per (seed, epoch, study) and moves between epochs."""
    from ct25d.datasets.volume_dataset import VolumeDataset
    from ct25d.volumes.fixed_store import read_fixed

    table = cohort["volumes"].head(3)
    n = len(table)
    slice_targets = [np.arange(32, dtype=np.float32)[:, None].repeat(6, 1) + 100 * i for i in range(n)]
    data = VolumeDataset(table, np.zeros((n, 6), np.float32), None, 0, 8, slice_targets, crop=8)
    whole = VolumeDataset(table, np.zeros((n, 6), np.float32), None, 0, None, slice_targets)
    starts = set()
    for epoch in range(4):
        item = data[(epoch, 1)]
        assert item["x"].shape[1] == 8 and bool(item["valid"].all())
        start = int(item["slice_y"][0, 0]) - 100
        np.testing.assert_array_equal(item["slice_y"][:, 0].numpy(), 100 + np.arange(start, start + 8))
        torch.testing.assert_close(item["x"], whole[1]["x"][:, start : start + 8])
        torch.testing.assert_close(item["x"], data[(epoch, 1)]["x"])  # the same draw again
        starts.add(start)
    assert len(starts) > 1
    assert whole[0]["x"].shape[1] == read_fixed(table["store"].iloc[0], table["study_id"].iloc[0])[0].shape[1]


@pytest.mark.parametrize(
    "entry",
    [
        {"name": "resnet10", "conv1_t_stride": 2},
        {"name": "densenet121"},
        {"name": "acs", "backbone": "test_resnet", "mode": "acs"},
        {"name": "acs", "backbone": "test_resnet", "mode": "i3d"},
    ],
    ids=lambda e: e.get("mode", e["name"]),
)
def test_slice_supervision_keeps_one_feature_position_per_slice(entry: dict) -> None:
    """Slice logits from a map that strided z 16-32-fold are one value interpolated over every
    slice (what the study's 3D runs had): with slice supervision the encoder keeps z (`keep_z`), so
    the map has one position per slice and the logits differ between slices; `keep_z: false`
    restores the strided network."""
    x = torch.randn(2, 3, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    kept = BASELINES.create(**entry, supervision="slice", in_channels=3, num_classes=6).eval()
    strided = BASELINES.create(**entry, supervision="slice", keep_z=False, in_channels=3, num_classes=6)
    with torch.no_grad():
        assert kept.encoder(x).shape[2] == 32
        assert strided.eval().encoder(x).shape[2] <= 2
        logits = kept(x)
    assert logits.shape == (2, 32, 6)
    assert float(logits.std(1).min()) > 1e-4  # not one value per study


def test_keep_z_refuses_a_layer_that_would_shrink_z() -> None:
    from ct25d.models.volume import keep_depth

    encoder = torch.nn.Sequential(torch.nn.Conv3d(3, 4, kernel_size=2, stride=2))
    with pytest.raises(ConfigError, match="0: kernel"):
        keep_depth(encoder)
    pooled = torch.nn.Sequential(torch.nn.Conv3d(3, 4, 3, stride=2, padding=1), torch.nn.AvgPool3d(2))
    assert keep_depth(pooled) == 2
    assert pooled(torch.zeros(1, 3, 8, 16, 16)).shape == (1, 4, 8, 4, 4)


@pytest.mark.parametrize("supervision", ["study", "slice"])
def test_a_few_voxel_lesion_moves_max_and_attention_pooling_more_than_avg(supervision: str) -> None:
    """One hot position of a 4 x 8 x 8 feature map changes a `max`- or `attention`-pooled logit far
    more than an `avg`-pooled one (diluted over 256 positions); the attention is first trained to
    look for it, as training would."""
    from ct25d.models.volume import VolumeHead

    torch.manual_seed(0)
    background = torch.rand(32, 8, 4, 8, 8) * 0.1
    lesion = background.clone()
    lesion[:, :, 2, 3, 4] += 1.0  # a lesion of one feature-map position (a few voxels of the input)
    change = {}
    for pooling in ("avg", "max", "attention"):
        head = VolumeHead(8, 1, pooling=pooling, supervision=supervision)
        with torch.no_grad():
            head.classifier.weight.fill_(1.0)
            head.classifier.bias.zero_()
        if pooling == "attention":  # learn where to look: lesion volumes positive, the rest negative
            optimizer = torch.optim.Adam(head.attention.parameters(), lr=1e-2)
            x, y = torch.cat([background, lesion]), torch.cat([torch.zeros(32, 1), torch.ones(32, 1)])
            for _ in range(100):
                out = head(x, 4)
                out = out.amax(1) if supervision == "slice" else out
                loss = F.binary_cross_entropy_with_logits(out - 1.0, y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        with torch.no_grad():
            a, b = head(background, 4), head(lesion, 4)
            if supervision == "slice":
                a, b = a.amax(1), b.amax(1)
            change[pooling] = float((b - a).mean())
    assert change["max"] > 10 * change["avg"] and change["attention"] > 10 * change["avg"], change


def test_too_little_memory_stops_before_training(cohort: dict, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^baselines\.mem_mb: resnet10 on volumes \(3, 32, 64, 64\)"):
        train_baseline(
            cohort["studies"],
            0,
            {"name": "resnet10"},
            {**SETTINGS, "mem_mb": 300},
            tmp_path,
            volumes=cohort["volumes"],
        )
    assert not (tmp_path / "last.pt").exists()


def test_resume_continues_from_last_pt(cohort: dict, tmp_path: Path, monkeypatch) -> None:
    import ct25d.training.baseline as baseline
    from ct25d.training.checkpoint import load_checkpoint

    entry = {"name": "cnn25", "backbone": "test_resnet", "slices": 8, "hidden": 16}
    emb = str(cohort["root"] / "emb")
    train_baseline(cohort["studies"], 0, entry, {**SETTINGS, "epochs": 3}, tmp_path / "full", embeddings=emb)
    payload = load_checkpoint(tmp_path / "full" / "last.pt")

    class Killed(Exception):
        pass

    def killed_after_second_epoch(out, history, *args):
        if history[-1]["epoch"] == 1:  # last.pt of epoch 1 is written: the job dies here
            raise Killed

    partial = tmp_path / "partial"
    with monkeypatch.context() as patch:
        patch.setattr(baseline, "write_history", killed_after_second_epoch)
        with pytest.raises(Killed):
            train_baseline(cohort["studies"], 0, entry, {**SETTINGS, "epochs": 3}, partial, embeddings=emb)
    assert not (partial / "metrics.json").exists()
    summary = train_baseline(cohort["studies"], 0, entry, {**SETTINGS, "epochs": 3}, partial, embeddings=emb)
    resumed = load_checkpoint(partial / "last.pt")
    assert [row["epoch"] for row in resumed["state"]["history"]] == [-1, 0, 1, 2]  # -1: before training
    assert summary["best_epoch"] >= -1
    for name, value in payload["model"].items():  # weights, optimizer and schedule all resumed
        torch.testing.assert_close(resumed["model"][name], value)


def test_a_finished_run_or_a_run_on_other_studies_is_not_resumed(cohort: dict, tmp_path: Path) -> None:
    """`ct25d sweep` reruns a baseline at another training fraction in the same folder: a `last.pt`
    of a run that stopped early (patience spent) on the other studies must not be handed back."""
    from ct25d.datasets.splits import LEFT_OUT, study_splits
    from ct25d.training.checkpoint import load_checkpoint, save_checkpoint

    entry = {"name": "cnn25", "backbone": "test_resnet", "slices": 8, "hidden": 16}
    emb = str(cohort["root"] / "emb")
    # lr 0: the inner loss cannot improve, so patience 1 stops the run after epoch 0 of 4
    settings = {**SETTINGS, "epochs": 4, "patience": 1, "lr": 0.0}
    train_baseline(cohort["studies"], 0, entry, settings, tmp_path / "run", embeddings=emb)
    first = load_checkpoint(tmp_path / "run" / "last.pt")["state"]
    assert first["epoch"] == 1 and [row["epoch"] for row in first["history"]] == [-1, 0]

    fewer = cohort["studies"].copy()  # a smaller training fraction: two training studies left out
    fewer.loc[fewer.index[study_splits(fewer, 0) == "train"][:2], "inner_for"] = LEFT_OUT
    train_baseline(fewer, 0, entry, settings, tmp_path / "run", embeddings=emb)
    train_baseline(fewer, 0, entry, settings, tmp_path / "fresh", embeddings=emb)
    rerun, fresh = (load_checkpoint(tmp_path / d / "last.pt")["state"] for d in ("run", "fresh"))
    assert rerun["history"][1]["train_loss"] == fresh["history"][1]["train_loss"]
    assert rerun["history"][1]["train_loss"] != first["history"][1]["train_loss"]

    # The same run finished: Snakemake reruns it only to redo it (new code, say), so it trains again
    payload = load_checkpoint(tmp_path / "run" / "last.pt")
    payload["state"]["history"][1]["train_loss"] = -1.0  # what the old run left behind
    save_checkpoint(tmp_path / "run" / "last.pt", payload)
    train_baseline(fewer, 0, entry, settings, tmp_path / "run", embeddings=emb)
    redone = load_checkpoint(tmp_path / "run" / "last.pt")["state"]
    assert redone["history"][1]["train_loss"] == fresh["history"][1]["train_loss"]


def test_config_check_names_bad_baseline_keys() -> None:
    config = {
        "preprocess": {"windows": [{"name": "brain"}, {"name": "subdural"}, {"name": "wide"}]},
        "stage1": {"backbones": ["resnet10t"]},
        "baselines": {
            "volume": {"windows": ["brain", "bone"]},
            "models": {
                "a": {"name": "acs", "backbone": "resnet18", "init": "stage1"},
                "b": {"name": "resnet10", "widht": 2},
                "c": {"name": "thick2d", "k": 4},
                "d": {"name": "cnn25", "backbone": "resnet50"},
                "e": {"name": "resnet10", "crop_depth": 16},
                "f": {"name": "cnn25", "keep_z": True},
                "ok": {"name": "unet_dual"},
                "ok2": {"name": "resnet10", "supervision": "slice", "crop_depth": 16},
            },
        },
    }
    problems = "\n".join(check_baselines(config))
    assert "baselines.volume.windows: ['bone'] not in preprocess.windows" in problems
    assert "baselines.models.a.backbone: 'resnet18' has no Stage-1 run" in problems
    assert "baselines.models.b: TypeError" in problems and "widht" in problems
    assert "baselines.models.c: ConfigError: thick2d k: an odd number" in problems
    assert "baselines.models.d.backbone: 'resnet50' has no Stage-1 run" in problems
    assert "baselines.models.e.crop_depth: needs supervision: slice" in problems
    assert "baselines.models.f: ['keep_z'] apply to the volume families" in problems
    assert "models.ok" not in problems


def test_comparison_lists_the_baselines_by_family(cohort: dict, tmp_path: Path) -> None:
    entry = {"name": "cnn25", "backbone": "test_resnet", "slices": 8, "hidden": 16}
    emb = str(cohort["root"] / "emb")
    train_baseline(cohort["studies"], 0, entry, SETTINGS, tmp_path / "run", embeddings=emb, method="cnn")
    table = write_comparison([], [], tmp_path / "out", [tmp_path / "run" / "metrics.json"], replicates=100)
    row = table.iloc[0]
    assert row["approach"] == "2.5D stacked embeddings: cnn" and row["stage"] == "baseline"
    assert row["parameters"] > 0 and "volume F1 (cq500)" in table


def test_medicalnet_weights_load_into_a_windowed_resnet(tmp_path: Path) -> None:
    """A MedicalNet file (single channel, `module.` prefixes, no classifier) starts every layer of the
    3-window model; its stem is spread over the windows."""
    from monai.networks.nets import resnet10

    source = resnet10(spatial_dims=3, n_input_channels=1, num_classes=6, conv1_t_stride=2,
                      shortcut_type="B", bias_downsample=False)  # fmt: skip
    state = {f"module.{k}": v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    torch.save({"state_dict": state}, tmp_path / "resnet_10_23dataset.pth")
    model = BASELINES.create(
        "resnet10",
        in_channels=3,
        num_classes=6,
        conv1_t_stride=2,
        pretrained=str(tmp_path / "resnet_10_23dataset.pth"),
    )
    net = model.encoder.net
    torch.testing.assert_close(net.conv1.weight, source.conv1.weight.repeat(1, 3, 1, 1, 1) / 3)
    torch.testing.assert_close(net.layer4[0].conv1.weight, source.layer4[0].conv1.weight)
    with pytest.raises(ConfigError, match="not a MedicalNet ResNet of this depth"):
        BASELINES.create(
            "resnet18", in_channels=3, num_classes=6, pretrained=str(tmp_path / "resnet_10_23dataset.pth")
        )


def test_thickened_stem_spreads_the_pretrained_weights_over_the_slices(tmp_path: Path) -> None:
    import timm

    from ct25d.models.thick import ThickSliceClassifier

    reference = timm.create_model("resnet10t", num_classes=0)
    torch.save(reference.state_dict(), tmp_path / "weights.pth")
    thick = ThickSliceClassifier("resnet10t", 6, k=3, pretrained=tmp_path / "weights.pth")
    stem = reference.conv1[0].weight
    torch.testing.assert_close(thick.encoder.conv1[0].weight, stem.repeat(1, 3, 1, 1) / 3)
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():  # k copies of one slice: the widened stem gives the 2D response
        torch.testing.assert_close(thick.encoder.eval()(image.repeat(1, 3, 1, 1)), reference.eval()(image))


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    from ct25d.models.baselines import enable_checkpointing

    torch.manual_seed(0)
    plain = BASELINES.create("resnet10", in_channels=1, num_classes=6, conv1_t_stride=2)
    checkpointed = BASELINES.create("resnet10", in_channels=1, num_classes=6, conv1_t_stride=2)
    checkpointed.load_state_dict(plain.state_dict())
    assert enable_checkpointing(checkpointed) == 4  # layer1..layer4
    x = torch.randn(2, 1, 16, 32, 32)
    for model in (plain, checkpointed):
        model(x).square().sum().backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, msg=name)
    assert set(plain.state_dict()) == set(checkpointed.state_dict())  # names unchanged


def test_every_registered_baseline_says_what_it_reads() -> None:
    """The torch-free table the DAG is planned from names exactly the registered baselines."""
    from ct25d.models.baselines import BASELINES
    from ct25d.models.families import BASELINE_INPUTS

    assert set(BASELINES.names()) == set(BASELINE_INPUTS)
