"""Training machinery shared by every model family: devices, seeding, checkpoints, loops."""
