"""Inference-only rewrites of a trained model."""
from __future__ import annotations

import torch
from torch import nn
from torch.fx.experimental.optimization import fuse


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm into the conv before it (eval mode only): one kernel and one pass over memory
    less per conv. Returns a torch.fx GraphModule computing the same function (to ~1e-6 relative); `model`
    itself is left as it is (the fold works on a copy)."""
    return fuse(model.eval())


def has_parameters(model: nn.Module) -> bool:
    """A torch model with weights; an exported file's runtime (ONNX Runtime, OpenVINO) has none: nothing to
    fold, no gradients for Grad-CAM."""
    return any(True for _ in model.parameters())


def _has_hooks(model: nn.Module) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def for_inference(model: nn.Module, device: torch.device) -> nn.Module:
    """The module that predict and evaluate run, in eval mode: on the CPU a BN-folded copy in channels_last
    memory (oneDNN's native layout; the first conv converts the contiguous batches), elsewhere `model` itself.
    Both rewrites pay on the CPU for every family measured; on an H100 the folded convs were slower in eager
    mode (cuDNN's conv-with-bias path), so the GPU folds only under torch.compile (`resnets bench`). Figures:
    BENCHMARKS.md, "Inference with BN folded into the convs" and "Inference in channels_last memory".

    The fold is an optimisation, never a requirement: a model with forward hooks (they would fire once, on
    torch.fx's tracing proxies, and never on the copy) or one that torch.fx cannot trace (control flow on
    its input, in a user-registered architecture) runs as it is."""
    model.eval()
    if device.type != "cpu" or _has_hooks(model) or not has_parameters(model):
        return model
    try:
        folded = fold_batchnorm(model)
    except Exception:  # torch.fx fails in many ways (TraceError, TypeError, ...); each means "run it unfolded"
        return model
    return folded.to(memory_format=torch.channels_last)  # the copy's 4-D weights; the caller's keep theirs
