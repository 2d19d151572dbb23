"""Shared fixtures: of the model-zoo tests, and the tiny classifier of the inference and serve tests.

Helpers are handed out as fixtures (rather than imported from this file) so that test modules
depend on nothing but pytest's own discovery.
"""
from __future__ import annotations

import shutil
from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from resnets import create_model
from resnets.data import eval_transform


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


# The tiny classifier of the inference and serve tests: three synthetic classes (listed in an order that is also
# their sorted order), and a cifar_resnet20 whose classifier is fitted to them.
TINY_CLASSES = ("apple", "banana", "cherry")


def _synthetic_image(label: int, rng: np.random.Generator, size: int = 40) -> np.ndarray:
    """(size, size, 3) uint8: a red disc, a yellow horizontal bar or a dark checkerboard, on noise."""
    img = rng.integers(90, 160, (size, size, 3)).astype(np.float64)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.integers(size // 3, 2 * size // 3, 2)
    if label == 0:
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < (size // 5) ** 2
        img[mask] = (220, 30, 30)
    elif label == 1:
        mask = np.abs(yy - cy) < size // 8
        img[mask] = (240, 220, 40)
    else:
        mask = ((yy // 5 + xx // 5) % 2 == 0) & (np.abs(yy - cy) < size // 3) & (np.abs(xx - cx) < size // 3)
        img[mask] = (20, 20, 60)
    return img.clip(0, 255).astype(np.uint8)



def _train_tiny_classifier(num_images: int = 48, steps: int = 150) -> torch.nn.Module:
    """Random backbone, classifier fitted on its pooled features: a model whose outputs depend on the image,
    in ~1 s (full training of even cifar_resnet20 costs ~0.5 s a step on 2 busy cores)."""
    torch.manual_seed(0)
    model = create_model("cifar_resnet20", num_classes=len(TINY_CLASSES), zero_init_last=False).eval()
    transform = eval_transform(model.pretrained_cfg)
    rng = np.random.default_rng(1)
    labels = torch.arange(num_images) % len(TINY_CLASSES)
    images = torch.stack([transform(Image.fromarray(_synthetic_image(int(y), rng))) for y in labels])
    with torch.inference_mode():
        feats = model.forward_head(model.forward_features(images), pre_logits=True)  # (N, num_features)
    opt = torch.optim.Adam(model.fc.parameters(), lr=0.05)
    for _ in range(steps):
        loss = F.cross_entropy(model.fc(feats.clone()), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.class_names = list(TINY_CLASSES)
    return model


@pytest.fixture(scope="session")
def synthetic_image() -> Callable[[int, np.random.Generator], np.ndarray]:
    """`synthetic_image(label, rng, size=40)`: an image of class `label` (0-2) of the tiny classifier."""
    return _synthetic_image


@pytest.fixture(scope="session")
def tiny_classifier() -> nn.Module:
    """cifar_resnet20 fitted to the three synthetic classes (`TINY_CLASSES`), trained once a session: save it or
    copy it, never change it."""
    return _train_tiny_classifier()


@pytest.fixture
def chromium_binary() -> str:
    """Debian's headless Chromium, for the tests of pages; they skip where it is missing."""
    path = shutil.which("chromium")
    if path is None:
        pytest.skip("no chromium on PATH: `make test` installs Debian's package where apt-get can; install it to "
                    "check the pages in a browser")
    return path
