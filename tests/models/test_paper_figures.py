"""Parameter counts and multiply-accumulates against the figures the papers and reference weights give.

Counted on the meta device (shapes only), so even the 68M-parameter CIFAR ResNeXt costs milliseconds.
ResNet-50 / ResNeXt-50 / Res2Net-50 counts are those of torchvision's and the official Res2Net weights;
the papers round them to 25.6M / 25.0M / 25.7M. The CIFAR ResNeXt-29 counts are the 34.4M and 68.1M of
Xie et al. (2017) Table 7; the CIFAR ResNets the 0.27M ... 1.7M of He et al. (2016) Table 6. The widths that
keep ResNeXt-50's complexity at each cardinality are those of Xie et al. (2017) Table 2.
"""
from __future__ import annotations

import pytest
import torch

from resnets.analysis import count_macs, design_widths
from resnets import create_model
from resnets.models import cifar_resnet, cifar_resnext


def _meta(name: str, **overrides) -> torch.nn.Module:
    with torch.device("meta"):
        return create_model(name, **overrides)


def _num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, params", [
    ("resnet50", 25_557_032),
    ("resnext50_32x4d", 25_028_904),
    ("res2net50_26w_4s", 25_699_120),
    ("cifar_resnext29_8x64d", 34_426_698),
    ("cifar_resnext29_16x64d", 68_155_210),
    ("cifar_resnet20", 269_722),
    ("cifar_resnet32", 464_154),
    ("cifar_resnet44", 658_586),
    ("cifar_resnet56", 853_018),
    ("cifar_resnet110", 1_727_962),
])
def test_parameter_count(name, params):
    model = _meta(name)
    assert _num_params(model) == params
    if name.startswith("cifar_"):
        assert model.num_classes == 10


def test_cifar_constructors_give_the_named_models():
    depth = {"cifar_resnet20": 20, "cifar_resnet56": 56, "cifar_resnet110": 110}
    with torch.device("meta"):
        for name, d in depth.items():
            assert _num_params(cifar_resnet(d)) == _num_params(create_model(name))
        assert _num_params(cifar_resnext(29, cardinality=16)) == 68_155_210
        assert _num_params(cifar_resnext(29, cardinality=8)) == 34_426_698


@pytest.mark.parametrize("name, gmacs", [
    ("resnet50", 4.09),
    ("resnext50_32x4d", 4.23),
    ("res2net50_26w_4s", 4.26),
])
def test_gmacs_at_224(name, gmacs):
    model = _meta(name)
    macs, per_module = count_macs(model, (3, 224, 224))
    assert round(macs / 1e9, 2) == gmacs
    assert per_module["fc"] == 2048 * 1000  # one MAC per weight of the classifier
    # Per-stage split is what the papers' complexity budgets hold fixed (ResNeXt Table 1).
    assert sum(per_module[f"layer{i}"] for i in range(1, 5)) + per_module["conv1"] + per_module["fc"] == macs


def test_macs_scale_with_resolution():
    model = _meta("resnet50")
    macs_224, _ = count_macs(model, (3, 224, 224))
    macs_448, _ = count_macs(model, (3, 448, 448))
    # Every feature map has 4x the pixels (448 / 32 = 14 = 2 x 7, no rounding); the classifier does not grow.
    assert macs_448 - 2048 * 1000 == 4 * (macs_224 - 2048 * 1000)


def test_design_reproduces_resnext_table_2():
    rows = design_widths("resnext50", [1, 2, 4, 8, 32])
    assert [(r.cardinality, r.width) for r in rows] == [(1, 64), (2, 40), (4, 24), (8, 14), (32, 4)]
    assert rows[-1].params == 25_028_904 and round(rows[-1].gmacs, 2) == 4.23
    base = rows[0].params
    assert all(abs(r.params - base) / base < 0.03 for r in rows)  # paper: 25.0M-25.6M, "complexity-preserving"
