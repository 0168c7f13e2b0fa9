"""Datasets across archives: patient-level splits (`splits`), the slice index and study table every
training stage reads (`index`), and the torch view of them (`slice_dataset`). Import the submodules
directly; this package init stays empty so that importing one does not pull in the others."""
