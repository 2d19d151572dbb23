"""Training: the config (`config.py`), the run assembled (`run.py`) and fitted (`trainer.py`), one epoch
(`epoch.py`) of optimizer steps (`step.py`), checkpoints and resuming, several processes (`distributed.py`)."""
