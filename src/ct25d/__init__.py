"""ct25d: head-CT DICOM archives to 2D / 2.5D / 3D classifiers, as one Snakemake workflow."""

__version__ = "0.1.0"
