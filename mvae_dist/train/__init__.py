"""Training: the DDP step, cross-rank collectives, checkpoints, and the Ray Train glue."""
