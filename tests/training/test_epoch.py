"""The training step loop: no host sync per step, gradient accumulation, the device-side non-finite guard."""
from __future__ import annotations

import csv
import math

import pytest
import torch
from safetensors.torch import load_file

import resnets
from resnets.training import epoch as epoch_module
from resnets.training import step as step_module
from resnets.training.distributed import Distributed
from resnets.training.step import TrainStep
from resnets.training.checkpoint import list_checkpoints, load_checkpoint
from resnets.errors import TrainingError

SMALL = dict(epochs=1, img_size=16, batch_size=64, progress=False, workers=0)  # digits: 22 batches an epoch


def test_each_batch_is_read_on_the_host_only_after_the_next_one_is_queued(tmp_path, monkeypatch):
    events: list[tuple[str, int]] = []
    real_forward_backward, real_values = TrainStep.forward_backward, epoch_module.StepReport.values
    launched = [0]

    def forward_backward(*args, **kwargs):
        launched[0] += 1
        events.append(("queued", launched[0]))
        return real_forward_backward(*args, **kwargs)

    def values(report):
        events.append(("read", report.batch_in_epoch))
        return real_values(report)

    monkeypatch.setattr(TrainStep, "forward_backward", forward_backward)
    monkeypatch.setattr(epoch_module.StepReport, "values", values)
    result = resnets.train(output=str(tmp_path), **SMALL)
    reads = [batch for kind, batch in events if kind == "read"]
    assert reads == list(range(1, 23)) and launched[0] == 22  # every batch read once, in order
    for batch in range(1, 22):  # the last one is read after the loop
        assert events.index(("queued", batch + 1)) < events.index(("read", batch))
    assert result.metrics["global_steps"] == 22


def test_gradient_accumulation_steps_once_per_cycle_and_a_nonfinite_batch_skips_its_cycle(tmp_path, monkeypatch,
                                                                                        poison_losses):
    stepped = []
    real_step = step_module.step_unless
    monkeypatch.setattr(step_module, "step_unless", lambda *a: stepped.append(1) or real_step(*a))
    clean = resnets.train(output=str(tmp_path / "clean"), accum_steps=4, **SMALL)
    assert clean.metrics["global_steps"] == 6 and len(stepped) == 6  # 5 cycles of 4 batches, one of 2
    poison_losses({3})  # in the first cycle
    poisoned = resnets.train(output=str(tmp_path / "poisoned"), accum_steps=4, skip_nonfinite=1, **SMALL)
    assert poisoned.metrics["global_steps"] == 5 and len(stepped) == 12  # the step runs, changing nothing
    weights = load_file(str(poisoned.run_dir / "last.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_checkpoints_are_named_by_the_steps_taken_when_some_were_skipped(tmp_path, poison_losses):
    poison_losses({4, 9})  # their steps are skipped: 20 steps in 22 batches
    result = resnets.train(output=str(tmp_path), skip_nonfinite=1, checkpoint_every=5, keep_checkpoints=10, **SMALL)
    assert result.metrics["global_steps"] == 20
    names = [p.name for p in list_checkpoints(result.run_dir)]
    # mid-epoch at steps 5, 10 and 15, reached at batches 6, 12 and 17; the epoch's end state starts epoch 2
    assert names == [*(f"checkpoint-0001-{s:09d}.pt" for s in (5, 10, 15)), "checkpoint-0002-000000020.pt"]
    for step, batch in ((5, 6), (10, 12), (15, 17)):
        state = load_checkpoint(result.run_dir / f"checkpoint-0001-{step:09d}.pt")
        assert state["progress"]["global_step"] == step and state["batch_in_epoch"] == batch
        # the metrics are over the steps taken; the img/s over every image the time went on
        assert state["progress"]["seen"] == 64 * step and state["progress"]["trained"] == 64 * batch


def test_the_nonfinite_limit_counts_skipped_steps_and_a_skipped_cycle_counts_no_numbers(tmp_path, monkeypatch,
                                                                                       poison_losses):
    # the first batch of every 2-batch cycle is NaN: every step is skipped, finite batches in between or not
    poison_losses(set(range(1, 23, 2)))
    with pytest.raises(TrainingError, match=r"step 1 \(batch 3\)"):  # the second skipped step in a row
        resnets.train(output=str(tmp_path / "a"), accum_steps=2, skip_nonfinite=1, **SMALL)
    poison_losses({2})  # the second batch of the first cycle
    values, real_values = {}, epoch_module.StepReport.values
    monkeypatch.setattr(epoch_module.StepReport, "values",
                        lambda report: values.setdefault(report.batch_in_epoch, real_values(report)))
    result = resnets.train(output=str(tmp_path / "b"), accum_steps=2, skip_nonfinite=1, **SMALL)
    assert result.metrics["global_steps"] == 10
    # the epoch's train loss averages the batches of the 10 steps taken: not batch 1, finite as it was
    taken = [values[b] for b in range(3, 23)]
    expected = sum(v[0] for v in taken) / sum(v[3] for v in taken)
    with open(result.run_dir / "summary.csv") as f:
        assert float(next(csv.DictReader(f))["train_loss"]) == pytest.approx(expected, rel=1e-5)


def test_a_skipped_step_leaves_no_trace_in_the_batchnorm_statistics(tmp_path, monkeypatch, poison_losses):
    # A forward that goes non-finite writes NaN into BN's running statistics; a skipped step puts them back.
    # So a run whose third batch has NaN images ends exactly as one whose third batch has a NaN loss after a
    # finite forward: same weights, statistics and EMA, and a finite validation.
    real_forward_backward = TrainStep.forward_backward
    calls = [0]

    def nan_images_in_batch_3(step, *args, **kwargs):
        calls[0] += 1
        if calls[0] != 3:
            return real_forward_backward(step, *args, **kwargs)
        hook = step.model.register_forward_pre_hook(lambda module, inputs: (inputs[0] * float("nan"),))
        try:
            return real_forward_backward(step, *args, **kwargs)
        finally:
            hook.remove()

    settings = dict(skip_nonfinite=1, ema_decay=0.9, **SMALL)
    monkeypatch.setattr(TrainStep, "forward_backward", nan_images_in_batch_3)
    nan_images = resnets.train(output=str(tmp_path / "images"), **settings)
    monkeypatch.setattr(TrainStep, "forward_backward", real_forward_backward)
    poison_losses({3})
    nan_loss = resnets.train(output=str(tmp_path / "loss"), **settings)
    assert calls[0] == 22 and nan_images.metrics["global_steps"] == nan_loss.metrics["global_steps"] == 21
    final = list_checkpoints(nan_images.run_dir)[-1].name  # the end-of-epoch state: the bare model
    models = [load_checkpoint(r.run_dir / final)["model"] for r in (nan_images, nan_loss)]
    emas = [load_file(str(r.run_dir / "last.safetensors")) for r in (nan_images, nan_loss)]  # the EMA
    for a, b in (models, emas):
        assert any("running_var" in k for k in a)
        assert all(torch.isfinite(v).all() for v in a.values() if v.is_floating_point())
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert nan_images.metrics["best_top1"] == nan_loss.metrics["best_top1"]
    assert math.isfinite(nan_images.metrics["best_val_loss"])


def test_with_the_loss_scaler_a_nonfinite_loss_gives_nonfinite_gradients():
    # fp16 skips by the gradients; an infinite loss can have finite ones (an infinite logit under label
    # smoothing): the loop must not let such a step through while it counts it as skipped
    from resnets.data.transforms import DeviceNormalize
    from resnets.models.pretrained_cfg import PretrainedCfg

    model = torch.nn.Linear(4, 3)
    floats_as_they_are = DeviceNormalize(PretrainedCfg())  # it normalises uint8 batches only
    step = TrainStep(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                     criterion=lambda logits, y: logits.mean() + float("inf"), normalize=floats_as_they_are,
                     device=torch.device("cpu"), amp="off", base_lr=0.1, scaler=torch.amp.GradScaler("cpu"))
    stats = step.forward_backward(torch.randn(8, 4), torch.randint(0, 3, (8,)), cycle_end=True)
    assert stats[4] == 1  # flagged non-finite
    assert all(not torch.isfinite(p.grad).any() for p in model.parameters())


def test_only_a_loader_of_files_makes_the_processes_agree_on_empty_batches(tmp_path, monkeypatch):
    # A batch of nothing but broken files is skipped by every process alike, which costs a host-side
    # exchange per step; the GPU-resident store cannot hand out such a batch and is spared it.
    asked = []
    real_any = Distributed.any
    monkeypatch.setattr(Distributed, "any", lambda self, flag: asked.append(flag) or real_any(self, flag))
    resnets.train(output=str(tmp_path / "files"), **SMALL, recipe="imagenet")  # the recipe would pick --in-memory
    assert len(asked) == 22 and not any(asked)
    asked.clear()
    resident = resnets.train(output=str(tmp_path / "resident"), in_memory=True, **SMALL)
    assert asked == [] and resident.metrics["global_steps"] == 22
