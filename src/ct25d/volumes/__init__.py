"""HU volumes: the zarr store of converted series and the ingest that fills it."""
