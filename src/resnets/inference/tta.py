"""Test-time augmentation (TTA) for `resnets eval` and `predict`: a classifier's prediction averaged over views
of each image.

The views: the image and its horizontal mirror (`--tta`), and with `--tta-size PX` both of them again at
PX x PX: 2 or 4 forward passes per image, one after the other (the peak memory is one view's).

Where a larger size helps: RandomResizedCrop training (resnets' for images over 64 px, torchvision's, timm's)
shows objects larger than evaluation's centre crop does, so at the test size the network meets objects
smaller than those it learnt; testing at a higher resolution brings their apparent size back (FixRes, Touvron
et al. 2019, "Fixing the train-test resolution discrepancy", who find the best test resolution above the
training one). Pad-and-crop training (CIFAR, digits) keeps objects at one size, and weights with a
`test_input_size` are evaluated larger already: there it may cost accuracy. So no size is added unless asked,
and `resnets eval --tta --tta-size PX` reports the plain model, the flips alone and the flips with PX side by
side on labelled data: predict then uses what helped. Mirrors are wrong for some data too (a mirrored digit or
text is another image); eval shows that as a TTA figure below the plain one.

The PX views resize the preprocessed crop (the same field of view in more pixels), not the file read again at
PX: that works inside any loader, reproduces the apparent-size effect, and adds no detail the crop lacks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..analysis.memory import check_activation_memory
from ..errors import ConfigError
from ..evaluation import topk_hits
from ..messages import first_line
from ..models.resnet import check_img_size

FLIP, FLIP_SIZE = "flip", "flip+size"  # the variants eval reports, by their views: 2, and 4 with a size


@dataclass(frozen=True)
class TTAConfig:
    """Args:
        size: also both views resized to size x size (None: the test size alone).
    """

    size: int | None = None


def log_mean_probability(log_probs: torch.Tensor) -> torch.Tensor:
    """log(mean over views of p) from (V, B, C) log-probabilities, staying in log space: a class whose
    probability underflows to 0 in every view keeps a finite log (and cross-entropy a finite loss)."""
    return torch.logsumexp(log_probs, dim=0) - math.log(log_probs.shape[0])  # (B, C)


class TTA(nn.Module):
    """`model` averaged over the views of each image; returns (B, num_classes) log mean probabilities.

    The log of the mean probability, not the mean of the logits, and in the logits' place: its softmax is the
    mean probability itself (softmax(log p) = p when p sums to 1), so predict's softmax prints the averaged
    probabilities, cross-entropy is the negative log-likelihood of the averaged prediction, and argmax/top-k
    rank the classes by it (log is monotone). Averaged logits would be a normalised geometric mean of the
    views' probabilities: another ranking, and no such reading.

    Args:
        size: also the views resized to size x size (None: the input's size only).
        interpolation: resize filter, as the weights' preprocessing ("bilinear", "bicubic", "nearest").
    """

    def __init__(self, model: nn.Module, size: int | None = None, interpolation: str = "bilinear") -> None:
        super().__init__()
        self.model, self.size, self.interpolation = model, size, interpolation

    def views(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, C, H, W) batch -> its views: itself, mirrored left-right, and both at `size`."""
        out = [x, x.flip(3)]
        if self.size is not None:
            # On normalised pixels: the normalisation is affine per channel and the filter's weights sum to 1,
            # so this is the resize of the [0, 1] image, normalised.
            smooth = self.interpolation != "nearest"
            big = F.interpolate(x, size=(self.size, self.size), mode=self.interpolation,
                                align_corners=False if smooth else None, antialias=smooth)
            out += [big, big.flip(3)]
        return out

    def view_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.model(v) for v in self.views(x)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return log_mean_probability(torch.stack([z.float().log_softmax(1) for z in self.view_logits(x)]))


def with_tta(model: nn.Module, tta: TTAConfig | None, interpolation: str = "bilinear") -> nn.Module:
    """`model` itself without `tta`, else wrapped in `TTA`."""
    return model if tta is None else TTA(model, tta.size, interpolation)


def check_tta(model: nn.Module, tta: TTAConfig | None, input_size: Sequence[int], batch_size: int,
              device: torch.device) -> None:
    """ConfigError, before any work, for a `tta.size` the model cannot take or that cannot fit on `device`.

    Args:
        input_size: (C, H, W) of the plain evaluation, which the size views must differ from.

    A ResNet takes any size down to its last stage's stride (`check_img_size`); another module (a
    torch.export program, a head that flattens) may take only the size it was built for, which one forward
    pass of one image finds out.
    """
    if tta is None or tta.size is None:
        return
    size = tta.size
    if size < 1:
        raise ConfigError(f"--tta-size must be positive, got {size}")
    if (size, size) == tuple(input_size[1:]):
        raise ConfigError(f"--tta-size {size} is the test size already, so its views would repeat the plain "
                          f"ones; give another size, or --tta alone")
    if getattr(model, "feature_info", None):
        try:
            check_img_size(model, size)
        except ConfigError as e:
            raise ConfigError(f"--tta-size {size}: {e}") from None
    else:
        _probe(model, size, input_size[0])
    check_activation_memory(model, size, batch_size, device, what=f"--tta-size {size}", size_flag="--tta-size")


def _probe(model: nn.Module, size: int, channels: int) -> None:
    param = next(model.parameters(), None)  # where the model is now: the caller may move it later
    x = torch.zeros(1, channels, size, size, device=param.device if param is not None else "cpu")
    training = model.training
    try:
        with torch.inference_mode():
            model.eval()(x)  # eval: BatchNorm in training mode refuses a batch of one
    except Exception as e:  # a shape guard, a matmul of the wrong width, ...: each means "not this size"
        raise ConfigError(f"--tta-size {size}: the model does not take {size}x{size} inputs (a fixed input "
                          f"size?): {first_line(e)}; use --tta without --tta-size") from None
    finally:
        model.train(training)


class TTAViews(nn.Module):
    """For `evaluate`: returns the plain model's logits of each batch, so the plain figures are measured as
    they always are, and keeps aside that batch's TTA log-probabilities: the flips alone and, with a size,
    all four views. One pass over the data serves them all: decoding can cost as much as the forward passes,
    and a second pass would meet (and report) the unreadable files again.

    Memory: (N, num_classes) floats per variant on the device until `figures` (N = 50,000 images of 1,000
    classes: 200 MB each).
    """

    def __init__(self, model: nn.Module, tta: TTAConfig, interpolation: str = "bilinear") -> None:
        super().__init__()
        self.tta, self.size = TTA(model, tta.size, interpolation), tta.size
        self.kept: dict[str, list[torch.Tensor]] = {FLIP: []} | ({FLIP_SIZE: []} if tta.size is not None else {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.tta.view_logits(x)
        log_probs = torch.stack([z.float().log_softmax(1) for z in logits])  # (V, B, C)
        self.kept[FLIP].append(log_mean_probability(log_probs[:2]))
        if FLIP_SIZE in self.kept:
            self.kept[FLIP_SIZE].append(log_mean_probability(log_probs))
        return logits[0]

    def figures(self, targets: torch.Tensor) -> dict[str, dict[str, Any]]:
        """{"flip": {...}, "flip+size": {...}}: views, size, top1, top5 (percent) and loss of each variant,
        over what `forward` saw; `targets` (N,) in the same order (an `EvalResult`'s)."""
        out = {}
        for name, parts in self.kept.items():
            log_p = torch.cat(parts).cpu()  # (N, C)
            hits = topk_hits(log_p, targets).tolist()
            out[name] = {"views": 2 if name == FLIP else 4, "size": None if name == FLIP else self.size,
                         "top1": 100.0 * hits[0] / len(targets), "top5": 100.0 * hits[1] / len(targets),
                         "loss": F.cross_entropy(log_p, targets).item()}
        return out
