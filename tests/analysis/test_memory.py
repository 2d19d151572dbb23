"""The activation estimate is a lower bound: never more than what a forward (and backward) pass really keeps,
counted here layer by layer on the meta device."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import resnets
from resnets.analysis.memory import activation_elements


def measured(model: nn.Module, size: int, training: bool) -> int:
    """Input plus the largest input + output of one layer (inference), or plus every conv, BN and linear output,
    which autograd saves (training), from a forward pass on the meta device."""
    with torch.device("meta"):
        meta = model.cfg.build()
    counts = []

    def hook(module, args, out):
        if not training or isinstance(module, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)):
            counts.append((args[0].numel(), out.numel()))

    for m in meta.modules():
        if not list(m.children()):
            m.register_forward_hook(hook)
    meta.eval()(torch.empty(1, 3, size, size, device="meta"))
    image = 3 * size * size
    return image + (sum(o for _, o in counts) if training else max(i + o for i, o in counts))


@pytest.mark.parametrize("name,size", [("cifar_resnet20", 32), ("resnet50", 224), ("resnext50_32x4d", 97),
                                       ("res2net50d", 64)])
@pytest.mark.parametrize("training", [False, True])
def test_the_estimate_is_a_lower_bound(name, size, training):
    model = resnets.create_model(name)
    estimate = activation_elements(model, size, training)
    assert 0 < estimate <= measured(model, size, training)
    assert activation_elements(model, 2 * size, training) > 3 * estimate  # it grows with the pixels
