"""Predicting on unlabelled scans (`role: predict` datasets, `snakemake predict`).

Such a dataset goes through the same ingest, resampling and stores as any other, and every fold
model scores it beside the external sets (split `predict`). This package combines the fold models
exactly as the comparison combines them on an external set (`ensemble`), and writes per chosen
approach `studies.csv`, `slices.parquet` and one picture per study (`write`, `figure`).
"""
