"""Training: configuration, the loop, checkpoints and the run directory."""
