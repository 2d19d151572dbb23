"""Our models against the reference implementations: torchvision and timm.

Same parameter count, same state-dict keys and shapes (so their checkpoints load with no remapping),
and, with the reference's random weights loaded, the same outputs. BN statistics are randomised
first: with default BN and zero-init of the last BN, every block would be the identity and different
networks could agree.
"""
from __future__ import annotations

import pytest
import safetensors.torch
import timm
import torch
import torchvision
from torch import nn

from resnets import create_model
from resnets.models.weights import load_weights

TORCHVISION = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2", "wide_resnet101_2",
               "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d"]
TIMM = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2", "wide_resnet101_2",
        "resnext50_32x4d", "resnext101_32x4d", "resnext101_32x8d", "resnext101_64x4d",
        "seresnet50", "seresnext50_32x4d", "seresnext101_32x4d",
        "res2net50_26w_4s", "res2net50_48w_2s", "res2net50_14w_8s", "res2net50_26w_6s", "res2net50_26w_8s",
        "res2net101_26w_4s", "res2next50", "res2net50d",
        "resnet18d", "resnet26d", "resnet34d", "resnet50d", "resnet101d", "resnet152d", "resnet200d"]
# timm's plain ResNets are module-for-module torchvision's; their big ones (60-127M parameters) are
# checked against torchvision by default and against timm with `-m slow`.
TIMM_SLOW = {"resnet101", "resnet152", "wide_resnet50_2", "wide_resnet101_2", "resnext101_32x8d", "resnext101_64x4d",
             "resnet101d", "resnet152d", "resnet200d"}


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _poison(model: nn.Module) -> None:
    """NaN in every float tensor: a tensor the loader leaves out then shows in the output."""
    with torch.no_grad():
        for t in model.state_dict().values():
            t.fill_(float("nan") if t.is_floating_point() else 0)


def _check_against_reference(name: str, ref: nn.Module, weights_file, randomize_bn, assert_close) -> None:
    # Ours is built on the meta device and materialised empty: every value it ends with must come
    # from the reference (random init would cost a second or two per large model and be overwritten).
    with torch.device("meta"):
        ours = create_model(name)
    assert _num_params(ours) == _num_params(ref)
    assert _shapes(ours) == _shapes(ref)
    ours = ours.to_empty(device="cpu").eval()

    randomize_bn(ref.eval(), seed=1)
    state = ref.state_dict()
    x = torch.randn(1, 3, 64, 64)

    # 1. The reference's state dict, as is, strict: the outputs agree.
    _poison(ours)
    ours.load_state_dict(state, strict=True)
    with torch.no_grad():
        assert_close(ours(x), ref(x))

    # 2. The same weights through a file and our loader: every tensor arrives unchanged, so the
    # outputs checked above follow.
    safetensors.torch.save_file(state, str(weights_file))
    _poison(ours)
    report = load_weights(ours, weights_file)
    weights_file.unlink()  # up to 500 MB each: the suite's temp folder stays small on a small disk
    assert report.skipped == []
    loaded = ours.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


@pytest.mark.parametrize("name", TORCHVISION)
def test_matches_torchvision(name, tmp_path, randomize_bn, assert_close):
    ref = torchvision.models.get_model(name, weights=None)
    _check_against_reference(name, ref, tmp_path / "tv.safetensors", randomize_bn, assert_close)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in TIMM_SLOW else n for n in TIMM])
def test_matches_timm(name, tmp_path, randomize_bn, assert_close):
    ref = timm.create_model(name, pretrained=False)
    _check_against_reference(name, ref, tmp_path / "timm.safetensors", randomize_bn, assert_close)


# Architecture options, against timm's ResNet given the same options.
@pytest.mark.parametrize("timm_name, ours_name, ours_kwargs, timm_kwargs", [
    ("resnet50d", "resnet50", dict(stem="deep", stem_width=32, avg_down=True), {}),
    ("resnet50", "resnet50", dict(avg_down=True), dict(avg_down=True)),
    ("resnet50", "resnet50", dict(output_stride=8), dict(output_stride=8)),
    ("resnet18", "resnet18", dict(output_stride=16), dict(output_stride=16)),
    ("res2net50d", "res2net50d", dict(output_stride=16), dict(output_stride=16)),
    ("resnet50d", "resnet50", dict(stem="deep", stem_width=32, avg_down=True, output_stride=8),
     dict(output_stride=8)),
    ("resnet18", "resnet18", dict(in_chans=1, num_classes=7), dict(in_chans=1, num_classes=7)),
], ids=["deep-stem-avg-down", "avg-down", "os8", "os16", "res2-avg-down-os16", "avg-down-os8", "in1-cls7"])
def test_options_match_timm(timm_name, ours_name, ours_kwargs, timm_kwargs, randomize_bn, assert_close):
    ref = randomize_bn(timm.create_model(timm_name, pretrained=False, **timm_kwargs)).eval()
    ours = create_model(ours_name, **ours_kwargs).eval()
    assert _shapes(ours) == _shapes(ref)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, ours_kwargs.get("in_chans", 3), 64, 64)
    with torch.no_grad():
        assert_close(ours(x), ref(x))
