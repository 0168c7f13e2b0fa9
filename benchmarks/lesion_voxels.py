"""How many voxels a median lesion of each subtype occupies in what each family reads.

The 2D side (Stage 1, Stage 2, thickened 2D, 2.5CNN) reads the slice store; every 3D family reads
the volume store (`baselines.volume`). A lesion's size in the input is its volume
(`truth/lesions.parquet`, the synthetic cohort's ground truth) over the voxel volume of the store
(the median over the dataset's studies of the volume store's `spacing_zyx`). With
`baselines.volume.size: from_slices` both stores share the in-plane grid, so both columns agree;
a smaller volume shows what it costs. The last column is the same lesion at a network's deepest
feature map for a 3D ResNet (in-plane stride 32, depth stride 16 with `t_stride: 2`).

    .venv/bin/python benchmarks/lesion_voxels.py results-study [--dataset rsna]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import zarr


def store_voxel_mm3(results: Path, dataset: str) -> tuple[float, list[float]]:
    """Median voxel volume (mm^3) and median spacing (z, y, x) of the dataset's volume store."""
    index = pd.read_parquet(results / "index" / "volumes.parquet")
    index = index[index["dataset"] == dataset]
    spacings = []
    for store, rows in index.groupby("store"):
        group = zarr.open_group(str(store), mode="r")
        spacings += [group[study].attrs["spacing_zyx"] for study in rows["study_id"]]
    spacing = np.median(np.asarray(spacings, dtype=float), axis=0)
    return float(np.prod(spacing)), spacing.tolist()


def lesion_table(results: Path, dataset: str) -> pd.DataFrame:
    """One row per subtype: lesions, median and 10th-percentile volume, and voxels at each grid."""
    lesions = pd.read_parquet(results / "synthetic" / dataset / "truth" / "lesions.parquet")
    voxel, spacing = store_voxel_mm3(results, dataset)
    bottleneck = voxel * 32 * 32 * 16
    rows = []
    for kind, group in lesions.groupby("kind"):
        ml = group["volume_ml"].to_numpy()
        median, p10 = float(np.median(ml)), float(np.percentile(ml, 10))
        rows.append(
            {
                "subtype": kind,
                "lesions": len(group),
                "median ml": round(median, 2),
                "median slices": float(np.median(group["slices"])),
                "median voxels (store)": round(median * 1000 / voxel, 1),
                "p10 voxels (store)": round(p10 * 1000 / voxel, 1),
                "median cells (ResNet bottleneck)": round(median * 1000 / bottleneck, 3),
            }
        )
    table = pd.DataFrame(rows)
    table.attrs["spacing"] = spacing
    return table


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", type=Path, help="a results folder with index/volumes.parquet")
    parser.add_argument("--dataset", default="rsna")
    args = parser.parse_args()
    table = lesion_table(args.results, args.dataset)
    z, y, x = table.attrs["spacing"]
    print(f"{args.dataset}: volume store voxel {z:.2f} x {y:.2f} x {x:.2f} mm (median over studies)\n")
    print(table.to_markdown(index=False))


if __name__ == "__main__":
    main()
