"""Shared fixtures for the model-zoo tests.

Helpers are handed out as fixtures (rather than imported from this file) so that test modules
depend on nothing but pytest's own discovery.
"""
from __future__ import annotations

from typing import Callable

import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True)
def _seed() -> None:
    # Every test sees the same random weights and inputs, so a failure reproduces.
    torch.manual_seed(0)


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random affine parameters and running statistics.

    With the default init (weight 1, bias 0, mean 0, var 1) a BN in eval mode is the identity, and
    zero_init_last makes each residual branch output exactly zero: two networks could then agree
    even if their blocks computed different things. Random values make every layer count.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)  # keep activations O(1) in deep nets
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
    return model


@pytest.fixture
def randomize_bn() -> Callable[..., nn.Module]:
    return _randomize_bn


def _input_size(model: nn.Module) -> int:
    """Small test resolution: 32 for the CIFAR models (their native size), 64 for ImageNet-style ones.

    64 is the smallest size at which an ImageNet network's last stage still has 2x2 positions, so
    spatial bugs (padding, strides, dilation) change the output.
    """
    return 32 if model.pretrained_cfg["input_size"][-1] == 32 else 64


def _make_input(model: nn.Module, batch: int = 2) -> torch.Tensor:
    chans = model.pretrained_cfg["input_size"][0]
    size = _input_size(model)
    return torch.randn(batch, chans, size, size)


@pytest.fixture
def make_input() -> Callable[..., torch.Tensor]:
    return _make_input


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5) -> None:
    """Equal to within `rtol` of the expected output's scale (float32 sums reorder between kernels)."""
    assert actual.shape == expected.shape
    assert torch.isfinite(expected).all()
    scale = expected.abs().max().clamp_min(1e-12)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale.item())


@pytest.fixture
def assert_close() -> Callable[[torch.Tensor, torch.Tensor], None]:
    return _assert_close


@pytest.fixture
def poison_losses(monkeypatch) -> Callable[[set[int]], None]:
    """`poison_losses({3, 4})`: in the training runs that follow, the loss of those (1-based) batches is NaN.
    A second call replaces the first."""
    from resnets.training import step

    real = step.make_criterion

    def poison(batches: set[int]) -> None:
        def poisoned(cfg, class_counts, device):
            criterion, calls = real(cfg, class_counts, device), [0]

            def loss(logits, labels):
                calls[0] += 1
                value = criterion(logits, labels)
                return value * float("nan") if calls[0] in batches else value

            return loss

        monkeypatch.setattr(step, "make_criterion", poisoned)

    return poison
