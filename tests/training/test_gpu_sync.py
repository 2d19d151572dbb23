"""On a GPU the training loop never waits for the device between steps: torch's sync debug mode turns
every host sync inside the epoch's loop into an error, except the one lagged read of a batch's numbers."""
from __future__ import annotations

import pytest
import torch

import resnets
from resnets.training import epoch as epoch_module
from resnets.training import trainer as trainer_module

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: host syncs exist only there")


@pytest.mark.parametrize("options", [
    dict(in_memory=True),  # the GPU-resident pipeline: crops and flips drawn on the host, applied on the GPU
    dict(in_memory=False, ema_decay=0.99, mixup=0.2, clip_grad=1.0, opt="adamw"),  # DataLoader, pinned batches
    dict(in_memory=True, skip_nonfinite=3, accum_steps=2, checkpoint_every=4, ema_decay=0.9, poisoned={3, 4, 9}),
], ids=["resident", "loader-ema-mixup-clip-adamw", "accumulate-skip-checkpoint"])
def test_the_step_loop_has_no_host_sync(tmp_path, monkeypatch, poison_losses, options):
    real_epoch, real_values = trainer_module.train_one_epoch, epoch_module.StepReport.values
    options = dict(options)
    if "poisoned" in options:
        poison_losses(options.pop("poisoned"))

    def allowed(fn):  # the loop's waits: the lagged read of a batch's numbers, and a checkpoint
        def unchecked(*args, **kwargs):
            torch.cuda.set_sync_debug_mode("default")
            try:
                return fn(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode("error")

        return unchecked

    def strict_epoch(step, loader, cfg, progress, checkpoint, batches_per_epoch, stop=None):
        torch.cuda.set_sync_debug_mode("error")
        try:  # the stop check reads a host-side flag: no wait
            return real_epoch(step, loader, cfg, progress, allowed(checkpoint), batches_per_epoch, stop)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(trainer_module, "train_one_epoch", strict_epoch)
    monkeypatch.setattr(epoch_module.StepReport, "values", allowed(real_values))
    result = resnets.train(output=str(tmp_path), device="cuda", epochs=2, img_size=32, batch_size=64, workers=0,
                           progress=False, **options)
    assert result.metrics["global_steps"] > 10
