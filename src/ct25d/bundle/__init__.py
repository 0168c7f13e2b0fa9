"""A trained approach as a portable folder (MONAI bundle layout): export it from a workflow run
(`ct25d export`), predict from it on a machine with only the package (`ct25d predict-bundle`)."""
