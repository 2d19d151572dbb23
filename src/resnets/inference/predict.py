"""`resnets predict`: top-k classes of image files, with preprocessing and class names from the weights alone."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..analysis.memory import check_activation_memory
from ..data.images import max_image_bytes
from ..data.transforms import eval_transform
from ..device import resolve_device
from ..errors import ConfigError
from ..fileio import csv_text
from ..messages import Warn, warn
from .fold import for_inference
from .images import batched, read_images, require_some
from .tta import TTAConfig, check_tta, with_tta

DEFAULT_TOPK = 5


@dataclass
class Prediction:
    file: str
    classes: list[str]  # best first
    probabilities: list[float]  # softmax probabilities, same order


def check_topk(topk: int | None, num_classes: int) -> int:
    """`None` means 5, or every class when there are fewer; more than the model's classes is an error."""
    if topk is None:
        return min(DEFAULT_TOPK, num_classes)
    if not 1 <= topk <= num_classes:
        raise ConfigError(f"--topk {topk}: the model has {num_classes} classes, so k must be in 1..{num_classes}")
    return topk


def predict_images(model: nn.Module, paths: Sequence[str | Path], *, topk: int | None = None,
                   batch_size: int = 32, device: str | None = None, max_image_mb: float | None = None,
                   warn: Warn = warn, tta: TTAConfig | None = None) -> list[Prediction]:
    """Top-k predictions for every readable image among `paths` (files or folders), in input order.

    `tta`: average the probabilities over the image and its mirror, and `tta.size` views (`inference/tta.py`).

    Unreadable files, special files (a FIFO, a device) and files over `max_image_mb` MiB (default:
    `MAX_IMAGE_MB`) are skipped through `warn`; DataError when no image could be read.
    """
    k = check_topk(topk, model.num_classes)
    max_bytes = max_image_bytes(max_image_mb)
    dev = resolve_device(device)
    check_activation_memory(model, tuple(model.pretrained_cfg.for_eval().input_size[1:]), batch_size, dev,
                            what="the weights' input_size", size_flag=None)
    check_tta(model, tta, model.pretrained_cfg.for_eval().input_size, batch_size, dev)
    names = model.labels()
    transform = eval_transform(model.pretrained_cfg.for_eval())  # a published set's test size and crop
    model.eval().to(dev)  # outside inference mode, so the model stays usable for training or Grad-CAM
    forward = with_tta(model, tta, model.pretrained_cfg.interpolation)
    out: list[Prediction] = []
    for i, (files, images) in enumerate(batched(read_images(paths, transform, warn, max_bytes), batch_size)):
        if i == 1:
            # From the second batch on, the BN-folded copy on the CPU: folding (about 0.4 s for ResNet-50)
            # costs more than it saves on one batch of images.
            forward = with_tta(for_inference(model, dev), tta, model.pretrained_cfg.interpolation)
        with torch.inference_mode():
            probs = forward(images.to(dev)).float().softmax(dim=1)  # (B, num_classes)
        top = probs.topk(k, dim=1)
        for file, p, idx in zip(files, top.values.cpu().tolist(), top.indices.cpu().tolist()):
            out.append(Prediction(str(file), [names[i] for i in idx], p))
    require_some(len(out), list(paths))
    return out


def predictions_csv(predictions: Sequence[Prediction]) -> str:
    """Columns: file, top1_class, top1_prob, ..., topK_class, topK_prob."""
    k = len(predictions[0].classes) if predictions else 0
    header = ["file", *(f"top{i}_{what}" for i in range(1, k + 1) for what in ("class", "prob"))]
    return csv_text([header, *([pred.file, *(v for name, p in zip(pred.classes, pred.probabilities)
                                             for v in (name, float(p)))] for pred in predictions)])
