"""Stage 1 data: a tiny slice-store cohort (shared by the other stage-1 tests) and the dataset's
determinism: a sample's augmentation and an epoch's order depend only on (seed, epoch, row)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ct25d.datasets.slice_dataset import Augment, EpochBatchSampler, SliceDataset, multilabel_targets
from ct25d.labels import RSNA_LABELS
from ct25d.slices.store import SliceStoreWriter


def inner_for(s: int, role: str) -> int:
    """Studies 8-11 are the other fold's inner split (one bleed, one not each); 0-7 never are."""
    if role != "train":
        return -1
    fold = (s // 2) % 2
    return 1 - fold if s >= 8 else fold


def tiny_cohort(
    root: Path, size: int = 32, n_train: int = 12, n_external: int = 3, depth: int = 6
) -> pd.DataFrame:
    """A slice index over two real slice stores: `n_train` train-role studies in 2 folds (one patient
    per study, each fold with both classes) and `n_external` external studies with study labels
    only (slice labels NA).

    Hemorrhage slices carry a bright blob; its side decides the subtype (left: subdural, right:
    intraparenchymal), so a small CNN can learn something in a few steps.
    """
    rng = np.random.default_rng(0)
    rows, yy, xx = [], *np.mgrid[:size, :size]
    for dataset, n, role in (("rsna", n_train, "train"), ("cq500", n_external, "external")):
        store = root / f"{dataset}_000.zarr"
        with SliceStoreWriter(store, {"test": True}) as writer:
            for s in range(n):
                study_id = f"{dataset}{s:02d}"
                bleed = s % 2 == 1
                side = "subdural" if (s // 4) % 2 == 0 else "intraparenchymal"
                volume = rng.integers(20, 60, size=(depth, 3, size, size), dtype=np.uint8)
                for z in range(depth):
                    label = dict.fromkeys(RSNA_LABELS, 0)
                    if bleed and 1 <= z <= 3:
                        cx = size // 4 if side == "subdural" else 3 * size // 4
                        blob = (yy - size // 2) ** 2 + (xx - cx) ** 2 < (size // 6) ** 2
                        volume[z][:, blob] = 220
                        label.update({side: 1, "any": 1})
                    if role == "external":
                        label = dict.fromkeys(RSNA_LABELS, pd.NA)
                    rows.append({
                        "dataset": dataset, "role": role, "site": "A" if role == "train" else "B",
                        "study_id": study_id, "patient_id": f"p{dataset}{s}", "z": z,
                        "slice_id": f"{study_id}_{z}", "position_mm": 5.0 * z, "store": str(store),
                        "fold": (s // 2) % 2 if role == "train" else -1, "inner_for": inner_for(s, role),
                        **label,
                    })  # fmt: skip
                writer.write_study(study_id, volume, {"spacing": [5.0, 1.0, 1.0]})
    index = pd.DataFrame(rows)
    return index.astype({label: "Int8" for label in RSNA_LABELS})


def study_table(index: pd.DataFrame) -> pd.DataFrame:
    """Study-level labels: the max over slices, and for external studies the 'reads' (bleed = odd id)."""
    keys = ["dataset", "role", "study_id", "patient_id", "fold", "inner_for"]
    studies = index.groupby(keys, sort=True).agg(n_slices=("z", "size")).reset_index()
    for label in RSNA_LABELS:
        truth = index.groupby("study_id")[label].max()
        studies[label] = studies["study_id"].map(truth).astype("Int8")
    external = studies["role"] == "external"
    odd = studies["study_id"].str[-1].astype(int) % 2 == 1
    studies.loc[external, "any"] = odd[external].astype(int)
    return studies


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    return tiny_cohort(tmp_path_factory.mktemp("stage1_data"))


def test_items_are_normalised_images_targets_and_rows(index: pd.DataFrame) -> None:
    data = SliceDataset(index, multilabel_targets(index, RSNA_LABELS), image_size=24)
    image, target, row = data[3]
    assert image.shape == (3, 24, 24) and image.dtype == torch.float32
    assert target.shape == (6,) and row == 3
    external = index.index[index["role"] == "external"][0]
    assert torch.isnan(data[int(external)][1]).all()


@pytest.mark.parametrize("channels", [3, 9])  # one slice, or a thickened stack of 3
def test_batch_augmentation_equals_each_row_augmented_alone(channels: int) -> None:
    augment = Augment(rotate_deg=15.0, brightness=0.3, contrast=0.3)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(12, channels, 40, 36, generator=g)
    draws = torch.rand(12, 4, generator=g, dtype=torch.float64)
    draws[3, 1] = 0.5  # no rotation
    draws[4, 0] = 0.9  # no flip
    one_by_one = [
        augment.intensity(
            augment.geometry(images[i].view(-1, 3, 40, 36), draws[i].tolist()), draws[i].tolist()
        )
        for i in range(12)
    ]
    expected = torch.stack([x.clamp(0, 1).flatten(0, 1) for x in one_by_one])
    assert torch.equal(augment.batch(images, draws), expected)


def test_augmentation_is_a_function_of_seed_epoch_and_row(index: pd.DataFrame) -> None:
    targets = multilabel_targets(index, RSNA_LABELS)
    data = SliceDataset(index, targets, image_size=32, augment=Augment(), seed=5)
    again = SliceDataset(index, targets, image_size=32, augment=Augment(), seed=5)
    plain = SliceDataset(index, targets, image_size=32)
    torch.manual_seed(123)  # global RNG state must not matter
    a = data[(2, 9)][0]
    torch.manual_seed(999)
    assert torch.equal(a, again[(2, 9)][0])
    assert not torch.equal(a, data[(3, 9)][0]), "a new epoch must draw new augmentations"
    assert not torch.equal(a, SliceDataset(index, targets, 32, Augment(), seed=6)[(2, 9)][0])
    assert not torch.equal(a, plain[9][0])
    differs = [not torch.equal(data[(0, r)][0], plain[r][0]) for r in range(10)]
    assert all(differs)


def test_sampler_orders_and_resumes(index: pd.DataFrame) -> None:
    sampler = EpochBatchSampler(len(index), batch_size=4, seed=1)
    sampler.start(2)
    full = list(sampler)
    assert sorted(row for batch in full for _, row in batch) == list(range(len(index)))
    assert {e for batch in full for e, _ in batch} == {2}
    sampler.start(2, skip_batches=3)
    assert list(sampler) == full[3:]
    sampler.start(3)
    assert list(sampler) != full
    classes = (np.arange(len(index)) < 5).astype(int)  # 5 rare rows vs the rest
    weights = 1.0 / np.bincount(classes)[classes]
    balanced = EpochBatchSampler(len(index), 4, seed=1, weights=weights, num_samples=4000).order(0)
    assert 0.45 < classes[balanced].mean() < 0.55


@pytest.mark.parametrize(("n", "sizes"), [(17, [8, 9]), (16, [8, 8]), (18, [8, 8, 2]), (1, [1])])
def test_a_lone_last_sample_joins_the_previous_batch(n: int, sizes: list[int]) -> None:
    sampler = EpochBatchSampler(n, 8, seed=0)
    batches = list(sampler)
    assert [len(b) for b in batches] == sizes == [len(b) for b in batches[: len(sampler)]]
    assert sorted(row for batch in batches for _, row in batch) == list(range(n))
