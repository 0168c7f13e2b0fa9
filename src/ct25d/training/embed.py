"""Stage 1 embeddings: penultimate features and logits of every slice, for Stage 2 and evaluation.

One shard per slice store, each its own job in the workflow (`embed_shard`), so a killed job costs
one shard. Streamed: each shard's arrays are created at full size up front and filled chunk by
chunk, so peak memory is one loader's batches plus one chunk per array, whatever the dataset size.

Layout under `out_dir`:
    <shard>.zarr/embedding   (N, D) float16   rows of that shard, sorted by (study_id, z)
    <shard>.zarr/logits      (N, C) float32
    rows.parquet             the index rows with `shard` and `row` (position in that shard's arrays)
    settings.json            provenance
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import zarr
from tqdm import tqdm
from zarr.codecs import ZstdCodec

from ct25d.atomic import atomic_path, write_json, write_parquet
from ct25d.datasets.slice_dataset import SliceDataset
from ct25d.provenance import stamp
from ct25d.training.checkpoint import load_checkpoint
from ct25d.training.stage1 import Stage1Settings, build_model, iter_predictions, make_loader

log = logging.getLogger(__name__)
CHUNK_BYTES = 1 << 20  # zarr guidance: chunks of ~1 MB


def shard_names(stores: list[str]) -> dict[str, str]:
    """A short unique name per slice-store path: its stem, prefixed by as many parent folders as it
    takes to tell the stores apart (`rsna_000`; `rsna_slices_shard-0` beside `cq500_slices_shard-0`)."""
    parts = {store: Path(store).with_suffix("").parts for store in stores}
    for depth in range(1, max((len(p) for p in parts.values()), default=1) + 1):
        names = {store: "_".join(p[-depth:]) for store, p in parts.items()}
        if len(set(names.values())) == len(names):
            return names
    raise ValueError(f"slice stores listed twice: {sorted(stores)}")


class _ChunkWriter:
    """Append rows to a preallocated zarr array, writing whole chunks only (no read-modify-write)."""

    def __init__(self, array: zarr.Array) -> None:
        self.array = array
        self.chunk = array.chunks[0]
        self.pending: list[np.ndarray] = []
        self.n_pending = 0
        self.pos = 0

    def add(self, block: np.ndarray) -> None:
        self.pending.append(block.astype(self.array.dtype, copy=False))
        self.n_pending += len(block)
        if self.n_pending >= self.chunk:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        data = np.concatenate(self.pending)
        n = len(data) if final else len(data) // self.chunk * self.chunk
        self.array[self.pos : self.pos + n] = data[:n]
        self.pos += n
        rest = data[n:]
        self.pending, self.n_pending = ([rest] if len(rest) else []), len(rest)

    def close(self) -> None:
        if self.n_pending:
            self._flush(final=True)
        if self.pos != self.array.shape[0]:
            raise RuntimeError(f"wrote {self.pos} of {self.array.shape[0]} rows")


def _create(group: zarr.Group, name: str, n: int, width: int, dtype: type) -> _ChunkWriter:
    rows = max(1, min(CHUNK_BYTES // (width * np.dtype(dtype).itemsize), n))
    array = group.create_array(name, shape=(n, width), dtype=dtype, chunks=(rows, width),
                               compressors=ZstdCodec(level=3), fill_value=0)  # fmt: skip
    return _ChunkWriter(array)


def shard_rows(index: pd.DataFrame, store: str) -> pd.DataFrame:
    """The index rows of one slice store in embedding order, (study_id, z)."""
    rows = index[index["store"].astype(str) == str(store)]
    return rows.sort_values(["study_id", "z"], kind="stable").reset_index(drop=True)


def embed_shard(
    index: pd.DataFrame,
    store: str,
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    device: str = "cpu",
    tta_flip: bool = True,
    batch_size: int = 64,
    num_workers: int = 0,
) -> int:
    """Embed the rows of one slice store into `out` (a zarr group, written atomically: a killed job
    leaves no shard that looks complete, and a rerun redoes only the shards that are missing)."""
    payload = load_checkpoint(checkpoint)
    s = Stage1Settings.from_dict({**payload["settings"], "num_workers": num_workers})
    model = build_model(s, payload["num_classes"], pretrained=False)
    model.load_state_dict(payload["model"])
    meta = stamp(
        "embed", {"checkpoint": str(checkpoint), "tta_flip": tta_flip, "model": s.learning_settings()}
    )
    encoder = Encoder(model, model.num_features, payload["num_classes"], list(payload["class_names"]))
    return embed_rows(encoder, s, shard_rows(index, store), store, out, meta, device, tta_flip, batch_size)


@dataclasses.dataclass
class Encoder:
    """A Stage-1 network (`forward(images) -> (logits, embedding)`: the module or its TorchScript, as
    a bundle holds it) with the widths of its two outputs and its class names."""

    model: torch.nn.Module
    width: int
    num_classes: int
    class_names: list[str]


def embed_rows(
    encoder: Encoder,
    s: Stage1Settings,
    rows: pd.DataFrame,
    store: str,
    out: str | os.PathLike[str],
    meta: dict[str, Any],
    device: str = "cpu",
    tta_flip: bool = True,
    batch_size: int = 64,
) -> int:
    """Embed `rows` (one slice store's, `shard_rows` order) into the zarr group `out`, atomically."""
    model = encoder.model.to(device)
    cuda = device.startswith("cuda")
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    amp_dtype = torch.bfloat16 if cuda and s.amp else None
    name = Path(out).name.removesuffix(".zarr")
    loader = make_loader(SliceDataset(rows, None, s.image_size), s, device, batch_size=batch_size)
    with atomic_path(out) as tmp:
        group = zarr.open_group(tmp, mode="w", zarr_format=3)
        group.attrs.update({"provenance": meta, "store": str(store), "class_names": encoder.class_names,
                            "n_rows": len(rows)})  # fmt: skip
        embeddings = _create(group, "embedding", len(rows), encoder.width, np.float16)
        logits = _create(group, "logits", len(rows), encoder.num_classes, np.float32)
        expected = 0
        bar = tqdm(total=len(rows), desc=f"embed {name}", unit="slice", disable=None, leave=False)
        for positions, batch_logits, batch_embeddings in iter_predictions(
            model, loader, device, amp_dtype, tta_flip
        ):
            if positions[0] != expected:  # sequential loader: rows arrive in order
                raise RuntimeError(f"{name}: expected row {expected}, got {positions[0]}")
            expected += len(positions)
            embeddings.add(batch_embeddings.numpy())
            logits.add(batch_logits.numpy())
            bar.update(len(positions))
        bar.close()
        embeddings.close()
        logits.close()
    log.info("embedded %d slices of %s", len(rows), name)
    return len(rows)


def gather_rows(index: pd.DataFrame, out_dir: str | os.PathLike[str], shards: dict[str, str]) -> pd.DataFrame:
    """`rows.parquet` and `settings.json` of an embeddings folder from its shards ({name: store}, each
    `<out_dir>/<name>.zarr`): every index row with its `shard` and `row`; the shards must hold every
    store of the index, written from the same checkpoint and settings."""
    out = Path(out_dir)
    missing = sorted(set(index["store"].astype(str)) - set(shards.values()))
    if missing:
        raise ValueError(f"no embedding shard for slice store(s) {missing}")
    frames, provenance = [], []
    for name, store in sorted(shards.items()):
        attrs = read_embeddings(out, name)["attrs"]
        rows = shard_rows(index, store)
        if attrs["store"] != str(store) or attrs["n_rows"] != len(rows):
            raise ValueError(f"{out / name}.zarr: holds {attrs['n_rows']} rows of {attrs['store']}, "
                             f"the index has {len(rows)} of {store}")  # fmt: skip
        frames.append(rows.assign(shard=name, row=np.arange(len(rows), dtype=np.int64)))
        provenance.append(attrs["provenance"])
    settings = {json.dumps(p["settings"], sort_keys=True) for p in provenance}
    if len(settings) != 1:
        raise ValueError(f"{out}: shards embedded with different checkpoints or settings")
    frame = pd.concat(frames, ignore_index=True)
    write_parquet(out / "rows.parquet", frame, provenance[0])
    write_json(out / "settings.json", provenance[0])
    return frame


def extract_embeddings(
    index: pd.DataFrame,
    checkpoint: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    device: str = "cpu",
    tta_flip: bool = True,
    batch_size: int = 64,
    num_workers: int = 0,
) -> pd.DataFrame:
    """Embed every row of `index` (one shard per slice store), then gather; returns the rows table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = shard_names(sorted(index["store"].astype(str).unique()))
    for store, name in names.items():
        embed_shard(index, store, checkpoint, out / f"{name}.zarr", device, tta_flip, batch_size, num_workers)
    return gather_rows(index, out, {name: store for store, name in names.items()})


def read_embeddings(out_dir: str | os.PathLike[str], shard: str) -> dict[str, Any]:
    """`{"embedding", "logits"}` zarr arrays of one shard (lazy: slice them to read)."""
    group = zarr.open_group(Path(out_dir) / f"{shard}.zarr", mode="r", zarr_format=3)
    return {"embedding": group["embedding"], "logits": group["logits"], "attrs": dict(group.attrs)}
