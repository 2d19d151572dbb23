"""On a GPU the training loop never waits for the device between steps: torch's sync debug mode turns
every host sync inside the epoch's loop into an error, except the one lagged read of a batch's numbers."""
from __future__ import annotations

import pytest
import torch

import resnets
from resnets.training import steps as steps_module
from resnets.training import trainer as trainer_module

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: host syncs exist only there")


@pytest.mark.parametrize("options", [
    dict(in_memory=True),  # the GPU-resident pipeline: crops and flips drawn on the host, applied on the GPU
    dict(in_memory=False, ema_decay=0.99, mixup=0.2, clip_grad=1.0, opt="adamw"),  # DataLoader, pinned batches
    dict(in_memory=True, skip_nonfinite=3, accum_steps=2),
], ids=["resident", "loader-ema-mixup-clip-adamw", "accumulate"])
def test_the_step_loop_has_no_host_sync(tmp_path, monkeypatch, options):
    real_epoch, real_values = trainer_module.train_one_epoch, steps_module._StepReport.values

    def strict_epoch(*args, **kwargs):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return real_epoch(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    def lagged_read(report):  # the loop's one wait: for the batch before the one just queued
        torch.cuda.set_sync_debug_mode("default")
        try:
            return real_values(report)
        finally:
            torch.cuda.set_sync_debug_mode("error")

    monkeypatch.setattr(trainer_module, "train_one_epoch", strict_epoch)
    monkeypatch.setattr(steps_module._StepReport, "values", lagged_read)
    result = resnets.train(output=str(tmp_path), device="cuda", epochs=2, img_size=32, batch_size=64, workers=0,
                           progress=False, **options)
    assert result.metrics["global_steps"] > 10
