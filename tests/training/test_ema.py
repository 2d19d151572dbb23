"""The weight EMA: torch's AveragedModel's average and state layout, without reading device tensors per step."""
from __future__ import annotations

import pytest
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import resnets
from resnets.training.ema import ModelEma


def _train_a_little(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    model.train()
    model(torch.randn(4, 3, 32, 32, generator=g)).sum().backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.1 * p.grad


def _host_reads_fail(monkeypatch) -> None:
    def refuse(self, *args, **kwargs):
        raise AssertionError("a tensor was read on the host")

    for name in ("__bool__", "item", "tolist", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)


def test_the_average_and_its_state_layout_are_averaged_models():
    model = resnets.create_model("cifar_resnet20", num_classes=3)
    reference = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    ema = ModelEma(model, 0.9)
    for step in range(4):
        _train_a_little(model, step)
        reference.update_parameters(model)
        ema.update_parameters(model)
    ours, theirs = ema.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys() and torch.equal(ours["n_averaged"], theirs["n_averaged"])
    floats = [k for k in ours if ours[k].is_floating_point()]  # a + w (b - a) here, torch's lerp there
    assert len(floats) > 60 and all(torch.allclose(ours[k], theirs[k], rtol=1e-6, atol=1e-7) for k in floats)
    # the counters follow the model (AveragedModel blends integers as floats and truncates)
    assert torch.equal(ours["module.bn1.num_batches_tracked"], model.bn1.num_batches_tracked)
    assert not torch.equal(ours["module.conv1.weight"], model.conv1.weight)  # an average, not a copy


def test_an_update_reads_no_tensor_on_the_host(monkeypatch):
    model = resnets.create_model("cifar_resnet20", num_classes=3)
    ema, reference = ModelEma(model, 0.9), AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    _host_reads_fail(monkeypatch)
    for _ in range(2):
        ema.update_parameters(model)
    with pytest.raises(AssertionError, match="read on the host"):  # the detector sees torch's own syncs
        reference.update_parameters(model)


@pytest.mark.parametrize("updates", [0, 3])
def test_a_loaded_state_goes_on_where_it_stopped(updates):
    model = resnets.create_model("cifar_resnet20", num_classes=3)
    saved = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.5), use_buffers=True)  # older resnets
    for step in range(updates):
        _train_a_little(model, step)
        saved.update_parameters(model)
    ema = ModelEma(resnets.create_model("cifar_resnet20", num_classes=3), 0.5)
    ema.load_state_dict(saved.state_dict())
    _train_a_little(model, 9)
    saved.update_parameters(model)
    ema.update_parameters(model)
    assert torch.allclose(ema.module.fc.weight, saved.module.fc.weight, rtol=1e-6, atol=1e-7)
    if updates:  # an average of several
        assert not torch.allclose(ema.module.fc.weight, model.fc.weight)
    else:  # the first update takes the weights
        assert torch.allclose(ema.module.fc.weight, model.fc.weight, rtol=1e-6, atol=1e-7)


def test_the_counter_lives_on_the_models_device():
    # AveragedModel keeps it on the CPU unless told: with a CUDA model the in-place count then fails
    model = resnets.create_model("cifar_resnet20", num_classes=3).to("meta")
    assert ModelEma(model, 0.9).n_averaged.device.type == "meta"


def test_a_skipped_step_leaves_the_average_as_it_is_and_a_kept_one_updates_it():
    model = resnets.create_model("cifar_resnet20", num_classes=3)
    ema, plain = ModelEma(model, 0.9), ModelEma(model, 0.9)
    for seed in range(3):
        _train_a_little(model, seed)
        before = {k: v.clone() for k, v in ema.state_dict().items()}
        ema.update_parameters(model, skip=torch.tensor(1.0))  # the step before it was skipped
        after = ema.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before if after[k].is_floating_point())
        assert torch.equal(before["n_averaged"], after["n_averaged"])
        ema.update_parameters(model, skip=torch.tensor(0.0))
        plain.update_parameters(model)
        assert all(torch.allclose(a, b) for a, b in zip(ema.state_dict().values(), plain.state_dict().values()))
