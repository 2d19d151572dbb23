"""Fine-tuning from pretrained weights: the classifier alone for the first --head-epochs, then the whole model.
(Layer-wise lr decay, the other half of fine-tuning, is a property of the optimizer's groups: optim.param_groups.)

A new head on a pretrained backbone starts as noise; trained together from the start, its large early gradients
reach the backbone and undo part of what the weights knew. Training the head alone first (the "linear probe,
then fine-tune" of Kumar et al. 2022) hands the backbone a head that already agrees with it.

The phase is a function of the epoch alone, set again at each epoch's start, so a run resumed anywhere trains
exactly as the uninterrupted one did. Under DDP the head epochs leave parameters without gradients, which DDP
is told of when the run has any (step.wrap_step: find_unused_parameters).
"""
from __future__ import annotations

from torch import nn

from .config import TrainConfig


def head_only(cfg: TrainConfig, epoch: int) -> bool:
    """Whether `epoch` (1-based) trains the classifier alone: always with --freeze-backbone, else the first
    --head-epochs."""
    return cfg.freeze_backbone or epoch <= cfg.head_epochs


def set_trainable(model: nn.Module, head_only: bool) -> None:
    """Put `model` in training mode, the whole of it, or with `head_only` only its classifier: the backbone's
    parameters then get no gradient and its BatchNorm layers stay in eval mode, their running statistics frozen.

    No gradient rather than a zero one: an optimizer skips a parameter whose .grad is None, while a zero gradient
    still moves it by weight decay and momentum. The backbone is left bit for bit as it was."""
    model.train()
    if not head_only:
        for p in model.parameters():
            p.requires_grad_(True)
        return
    head = model.get_classifier()
    in_head = {id(p) for p in head.parameters()} | {id(m) for m in head.modules()}
    for p in model.parameters():
        p.requires_grad_(id(p) in in_head)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in in_head:
            m.eval()
