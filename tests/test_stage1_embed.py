"""Stage 1 embeddings: every index row gets exactly its own embedding, in the documented layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import zarr
from test_stage1_data import tiny_cohort

from ct25d.datasets.slice_dataset import SliceDataset
from ct25d.training import embed
from ct25d.training.checkpoint import load_checkpoint
from ct25d.training.embed import extract_embeddings, read_embeddings
from ct25d.training.stage1 import Stage1Settings, build_model, train_stage1

SETTINGS = dict(backbone="test_resnet", image_size=32, batch_size=8, epochs=1, num_workers=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, Path]:
    root = tmp_path_factory.mktemp("stage1_embed")
    index = tiny_cohort(root)
    return index, train_stage1(index, 0, SETTINGS, root / "train").best


def reference(index: pd.DataFrame, checkpoint: Path, rows: list[int], flip: bool) -> tuple[np.ndarray, ...]:
    """Embeddings/logits of index rows computed directly, one slice at a time."""
    payload = load_checkpoint(checkpoint)
    model = build_model(Stage1Settings.from_dict(payload["settings"]), payload["num_classes"], False)
    model.load_state_dict(payload["model"])
    model.eval()
    data = SliceDataset(index, None, image_size=32)
    images = torch.stack([data[r][0] for r in rows])
    with torch.no_grad():
        logits, emb = model(images)
        if flip:
            flip_logits, flip_emb = model(images.flip(-1))
            logits, emb = (logits + flip_logits) / 2, (emb + flip_emb) / 2
    return emb.numpy(), logits.numpy()


@pytest.mark.parametrize("tta", [False, True])
def test_rows_align_with_the_index(
    trained: tuple[pd.DataFrame, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tta: bool
) -> None:
    index, checkpoint = trained
    monkeypatch.setattr(embed, "CHUNK_BYTES", 700)  # several chunks per shard, not batch-aligned
    shuffled = index.sample(frac=1.0, random_state=3)  # the index's own order must not matter
    rows = extract_embeddings(shuffled, checkpoint, tmp_path, tta_flip=tta, batch_size=5)

    written = pd.read_parquet(tmp_path / "rows.parquet")
    assert sorted(written["slice_id"]) == sorted(index["slice_id"])
    pd.testing.assert_frame_equal(written, rows)
    for shard, group in written.groupby("shard"):
        assert list(group["row"]) == list(range(len(group)))
        assert group[["study_id", "z"]].equals(group.sort_values(["study_id", "z"])[["study_id", "z"]])
        arrays = read_embeddings(tmp_path, shard)
        emb, logits = arrays["embedding"], arrays["logits"]
        assert emb.dtype == np.float16 and logits.dtype == np.float32
        assert emb.shape[0] == logits.shape[0] == len(group) and logits.shape[1] == 6
        assert emb.chunks[0] < len(group)
        # Compare stored rows against slices embedded one by one from the original index positions.
        pick = group.iloc[[0, len(group) // 2, len(group) - 1]]
        positions = [int(index.index[index["slice_id"] == s][0]) for s in pick["slice_id"]]
        ref_emb, ref_logits = reference(index, checkpoint, positions, tta)
        got = np.asarray(emb[:])[pick["row"].to_numpy()].astype(np.float32)
        np.testing.assert_allclose(got, ref_emb, rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(
            np.asarray(logits[:])[pick["row"].to_numpy()], ref_logits, rtol=1e-4, atol=1e-4
        )
    assert (
        zarr.open_group(tmp_path / "rsna_000.zarr", mode="r").attrs["n_rows"]
        == (index["dataset"] == "rsna").sum()
    )


def test_tta_changes_the_embedding(trained: tuple[pd.DataFrame, Path], tmp_path: Path) -> None:
    index, checkpoint = trained
    plain = index[index["dataset"] == "cq500"]
    extract_embeddings(plain, checkpoint, tmp_path / "a", tta_flip=False)
    extract_embeddings(plain, checkpoint, tmp_path / "b", tta_flip=True)
    a = np.asarray(read_embeddings(tmp_path / "a", "cq500_000")["embedding"][:])
    b = np.asarray(read_embeddings(tmp_path / "b", "cq500_000")["embedding"][:])
    assert a.shape == b.shape and not np.array_equal(a, b)


def test_shard_names_tell_every_store_apart() -> None:
    stores = [
        "results/rsna/slices/shard-0.zarr",
        "results/cq500/slices/shard-0.zarr",
        "results/rsna/slices/shard-1.zarr",
    ]
    names = embed.shard_names(stores)
    assert len(set(names.values())) == 3
    assert names["results/rsna/slices/shard-1.zarr"] == "rsna_slices_shard-1"
    assert embed.shard_names(["a/000.zarr", "b/001.zarr"]) == {"a/000.zarr": "000", "b/001.zarr": "001"}


def test_shards_embedded_one_by_one_gather_to_the_whole_run(
    trained: tuple[pd.DataFrame, Path], tmp_path: Path
) -> None:
    index, checkpoint = trained
    whole = extract_embeddings(index, checkpoint, tmp_path / "whole", tta_flip=False)
    names = {"first": str(index["store"].iloc[0])}
    names["second"] = next(str(s) for s in index["store"].unique() if str(s) != names["first"])
    out = tmp_path / "shards"
    for name, store in names.items():  # one job per shard, in any order
        embed.embed_shard(index, store, checkpoint, out / f"{name}.zarr", tta_flip=False)
    two = index[index["store"].astype(str).isin(names.values())]
    rows = embed.gather_rows(two, out, names)
    for name, store in names.items():
        mine = rows[rows["shard"] == name].drop(columns="shard").reset_index(drop=True)
        theirs = whole[whole["store"].astype(str) == store]
        ref = np.asarray(read_embeddings(tmp_path / "whole", theirs["shard"].iloc[0])["embedding"][:])
        np.testing.assert_array_equal(np.asarray(read_embeddings(out, name)["embedding"][:]), ref)
        pd.testing.assert_frame_equal(mine, theirs.drop(columns="shard").reset_index(drop=True))
    with pytest.raises(ValueError, match="no embedding shard for slice store"):
        embed.gather_rows(two, out, {"first": names["first"]})  # the index has a store no shard holds
    with pytest.raises(ValueError, match=r"holds \d+ rows of"):
        embed.gather_rows(two, out, {"first": names["second"], "second": names["first"]})


def test_a_store_with_no_indexed_slices_gives_an_empty_shard(
    trained: tuple[pd.DataFrame, Path], tmp_path: Path
) -> None:
    index, checkpoint = trained
    store = str(index["store"].iloc[0])
    assert (
        embed.embed_shard(index[index["store"].astype(str) != store], store, checkpoint, tmp_path / "e.zarr")
        == 0
    )
    assert read_embeddings(tmp_path, "e")["embedding"].shape[0] == 0
