"""Stage 1 embeddings: penultimate features and logits of every slice, for Stage 2 and evaluation.

Streamed: each shard's arrays are created at full size up front and filled chunk by chunk, so peak
memory is one loader's batches plus one chunk per array, whatever the dataset size.

Layout under `out_dir`:
    <shard>.zarr/embedding   (N, D) float16   rows of that shard, sorted by (study_id, z)
    <shard>.zarr/logits      (N, C) float32
    rows.parquet             the index rows with `shard` and `row` (position in that shard's arrays)
    settings.json            provenance
"""

from __future__ import annotations

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
    """A short unique name per slice-store path: its stem, prefixed by its folder where stems clash."""
    stems = {store: Path(store).name.removesuffix(".zarr") for store in stores}
    clash = {stem for stem in stems.values() if list(stems.values()).count(stem) > 1}
    return {s: f"{Path(s).parent.name}_{stem}" if stem in clash else stem for s, stem in stems.items()}


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
    rows = int(min(max(1, CHUNK_BYTES // (width * np.dtype(dtype).itemsize)), n))
    array = group.create_array(name, shape=(n, width), dtype=dtype, chunks=(rows, width),
                               compressors=ZstdCodec(level=3), fill_value=0)  # fmt: skip
    return _ChunkWriter(array)


def extract_embeddings(
    index: pd.DataFrame,
    checkpoint: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    device: str = "cpu",
    tta_flip: bool = True,
    batch_size: int = 64,
    num_workers: int = 0,
) -> pd.DataFrame:
    """Embed every row of `index` with the model in `checkpoint`; returns the written `rows` table."""
    payload = load_checkpoint(checkpoint)
    s = Stage1Settings.from_dict({**payload["settings"], "num_workers": num_workers})
    model = build_model(s, payload["num_classes"], pretrained=False)
    model.load_state_dict(payload["model"])
    model = model.to(device)
    cuda = device.startswith("cuda")
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    amp_dtype = torch.bfloat16 if cuda and s.amp else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"checkpoint": str(checkpoint), "tta_flip": tta_flip, "model": s.learning_settings()}
    meta = stamp("embed", settings)

    frame = index.reset_index(drop=True)
    names = shard_names(sorted(frame["store"].astype(str).unique()))
    frame["shard"] = frame["store"].astype(str).map(names)
    frame = frame.sort_values(["shard", "study_id", "z"], kind="stable").reset_index(drop=True)
    frame["row"] = frame.groupby("shard").cumcount().astype(np.int64)

    for store, shard in names.items():
        rows = frame[frame["shard"] == shard]
        loader = make_loader(SliceDataset(rows, None, s.image_size), s, device, batch_size=batch_size)
        with atomic_path(out / f"{shard}.zarr") as tmp:
            group = zarr.open_group(tmp, mode="w", zarr_format=3)
            group.attrs.update({"provenance": meta, "store": store, "class_names": payload["class_names"],
                                "n_rows": len(rows)})  # fmt: skip
            embeddings = _create(group, "embedding", len(rows), model.num_features, np.float16)
            logits = _create(group, "logits", len(rows), payload["num_classes"], np.float32)
            expected = 0
            bar = tqdm(total=len(rows), desc=f"embed {shard}", unit="slice", disable=None, leave=False)
            for positions, batch_logits, batch_embeddings in iter_predictions(
                model, loader, device, amp_dtype, tta_flip
            ):
                if positions[0] != expected:  # sequential loader: rows arrive in order
                    raise RuntimeError(f"{shard}: expected row {expected}, got {positions[0]}")
                expected += len(positions)
                embeddings.add(batch_embeddings.numpy())
                logits.add(batch_logits.numpy())
                bar.update(len(positions))
            bar.close()
            embeddings.close()
            logits.close()
        log.info("embedded %d slices of %s", len(rows), shard)

    write_parquet(out / "rows.parquet", frame, meta)
    write_json(out / "settings.json", meta)
    return frame


def read_embeddings(out_dir: str | os.PathLike[str], shard: str) -> dict[str, Any]:
    """`{"embedding", "logits"}` zarr arrays of one shard (lazy: slice them to read)."""
    group = zarr.open_group(Path(out_dir) / f"{shard}.zarr", mode="r", zarr_format=3)
    return {"embedding": group["embedding"], "logits": group["logits"], "attrs": dict(group.attrs)}
