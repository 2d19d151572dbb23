"""`resnets cam`: Grad-CAM heatmaps (Selvaraju et al., ICCV 2017) from a forward hook and a gradient hook.

For a target class c and a feature map A (K, h, w) of layer L, the map is ReLU(sum_k alpha_k A_k) with
alpha_k = mean over positions of d y_c / d A_k (the paper's eq. 1-2, y_c the logit before softmax). It is
upsampled to the input and normalised to [0, 1]. Works on any module with a (B, K, h, w) output; the
default is the last stage, whose maps the paper finds the best trade-off of semantics and resolution.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..analysis.memory import check_activation_memory
from ..data.images import max_image_bytes
from ..data.transforms import eval_transform
from ..data.walk import list_images
from ..device import resolve_device
from ..errors import ConfigError
from ..fileio import atomic_write, check_writable
from ..messages import Warn, warn
from ..models.pretrained_cfg import PretrainedCfg
from .images import batched, read_images, require_some
from .outputs import files_read, refuse_overwrite

CAM_ALPHA = 0.45  # heatmap opacity over the image


@dataclass
class CamResult:
    heatmaps: torch.Tensor  # (B, H, W) in [0, 1], at the input resolution
    class_indices: list[int]  # the class each map explains
    probabilities: list[float]  # softmax probability of that class
    predicted: list[int]  # the model's top-1 class


def default_layer(model: nn.Module) -> str:
    return model.stage_names[-1]  # layer4, or layer3 for the CIFAR ResNets


def find_layer(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        raise ConfigError(f"model has no module {name!r}; its stages are {', '.join(model.stage_names)} "
                          f"(any module name works, e.g. layer2.0.conv1)")
    return modules[name]


def grad_cam(model: nn.Module, images: torch.Tensor, layer: str | None = None,
             class_index: int | None = None) -> CamResult:
    """Grad-CAM of `images` (B, C, H, W) for `class_index`, or for each image's predicted class."""
    name = layer or default_layer(model)
    module = find_layer(model, name)
    if class_index is not None and not 0 <= class_index < model.num_classes:
        raise ConfigError(f"--class-index {class_index} is outside 0..{model.num_classes - 1}")
    saved: dict[str, torch.Tensor] = {}

    def keep(_: nn.Module, __: tuple, output: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(output) or output.ndim != 4:
            shape = tuple(output.shape) if torch.is_tensor(output) else type(output).__name__
            raise ConfigError(f"layer {name!r} gives {shape}, not a (B, C, H, W) feature map; "
                              f"try one of {', '.join(model.stage_names)}")
        saved["activations"] = output
        output.register_hook(lambda grad: saved.__setitem__("gradients", grad))
        # Hand the rest of the network a copy: an in-place op downstream (ReLU(inplace=True), `out += x`)
        # would otherwise overwrite the activations we keep and break their backward.
        return output.clone()

    model.eval()
    images = images.detach().requires_grad_(True)  # a graph to the layer even when the weights are frozen
    handle = module.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            logits = model(images)  # (B, num_classes)
            predicted = logits.argmax(dim=1)
            target = predicted if class_index is None else torch.full_like(predicted, class_index)
            model.zero_grad(set_to_none=True)
            logits.gather(1, target[:, None]).sum().backward()  # images are independent: one backward for all
    finally:
        handle.remove()
    acts, grads = saved["activations"].detach(), saved["gradients"]  # (B, K, h, w) each
    weights = grads.mean(dim=(2, 3), keepdim=True)  # alpha_k, (B, K, 1, 1)
    cam = F.relu((weights * acts).sum(dim=1, keepdim=True))  # (B, 1, h, w)
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).max(dim=1).values.clamp_min(1e-12)[:, None, None]
    probs = logits.detach().float().softmax(dim=1).gather(1, target[:, None])[:, 0]
    return CamResult((cam / peak).clamp(0, 1).cpu(), target.tolist(), probs.tolist(), predicted.tolist())


def denormalize(image: torch.Tensor, pretrained_cfg: PretrainedCfg) -> np.ndarray:
    """A normalised (C, H, W) input back to an (H, W, 3) float image in [0, 1] for display."""
    mean = torch.tensor(pretrained_cfg.mean, dtype=image.dtype)[:, None, None]
    std = torch.tensor(pretrained_cfg.std, dtype=image.dtype)[:, None, None]
    rgb = (image.cpu() * std + mean).clamp(0, 1)
    if rgb.shape[0] == 1:
        rgb = rgb.expand(3, -1, -1)
    return rgb[:3].permute(1, 2, 0).numpy()


def save_cam_figure(rgb: np.ndarray, heatmap: np.ndarray, title: str, path: str | Path, dpi: int = 100) -> Path:
    """Two panels: the model's input, and the heatmap (jet colormap) blended over it."""
    from matplotlib import colormaps  # only `resnets cam` draws: the other commands need not import it
    from matplotlib.figure import Figure

    overlay = (1 - CAM_ALPHA) * rgb + CAM_ALPHA * colormaps["jet"](heatmap)[..., :3]
    overlay = overlay.clip(0, 1)  # rounding can end a hair above 1: imshow would warn "Clipping input data"
    fig = Figure(figsize=(8, 4.4), dpi=dpi, layout="constrained")
    for ax, img, label in zip(fig.subplots(1, 2), (rgb, overlay), ("input", "Grad-CAM")):
        ax.imshow(img, interpolation="bilinear")
        ax.set_title(label, fontsize=10)
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))


def _output_name(path: Path, used: set[str]) -> str:
    stem = re.sub(r"[^\w.-]+", "_", path.stem) or "image"
    name, n = f"{stem}_cam.png", 2
    while name in used:  # same file name in two folders
        name, n = f"{stem}-{n}_cam.png", n + 1
    used.add(name)
    return name


def output_paths(files: Sequence[Path], output_dir: str | Path, weights: str | Path | None = None,
                 ) -> dict[Path, Path]:
    """The PNG each input image gets in `output_dir`, refused (ConfigError) if one would replace an input
    image or the weights file: `a.png` and `a_cam.png` side by side, written into their own folder."""
    used: set[str] = set()
    pngs = {file: Path(output_dir) / _output_name(file, used) for file in files}
    if pngs:  # all go into one folder: one file tells whether it can be written
        check_writable(next(iter(pngs.values())), "--output")
    refuse_overwrite(pngs.values(), files_read(weights, files), "Grad-CAM image",
                     "choose another --output folder")
    return pngs


def cam_images(model: nn.Module, paths: Sequence[str | Path], output_dir: str | Path, *, layer: str | None = None,
               class_index: int | None = None, batch_size: int = 16, device: str | None = None,
               warn: Warn = warn, weights: str | Path | None = None,
               max_image_mb: float | None = None) -> list[tuple[Path, CamResult]]:
    """Write `<name>_cam.png` into `output_dir` for each readable image; returns (png, 1-image result) pairs.

    `weights`, the file `model` was loaded from, is refused as an output like the images are. Special files
    and files over `max_image_mb` MiB are skipped, as `predict_images` skips them.
    """
    max_bytes = max_image_bytes(max_image_mb)
    name = layer or default_layer(model)
    find_layer(model, name)  # fail on a wrong name before reading any image
    inputs = list(dict.fromkeys(list_images(paths)))  # an image named twice (its folder, and itself): one PNG
    pngs = output_paths(inputs, output_dir, weights)
    dev = resolve_device(device)
    check_activation_memory(model, tuple(model.pretrained_cfg.for_eval().input_size[1:]), batch_size, dev,
                            training=True, what="the weights' input_size", size_flag=None)  # backward too
    model.to(dev)
    names = model.labels()
    transform = eval_transform(model.pretrained_cfg.for_eval())
    written: list[tuple[Path, CamResult]] = []
    for files, images in batched(read_images(inputs, transform, warn, max_bytes), batch_size):
        result = grad_cam(model, images.to(dev), name, class_index)
        for i, file in enumerate(files):
            c, p = result.class_indices[i], result.probabilities[i]
            shown = "predicted" if c == result.predicted[i] else f"predicted {names[result.predicted[i]]}; shown"
            title = f"{file.name}: {shown} {names[c]} (p={p:.3f}), {name}"
            rgb = denormalize(images[i], model.pretrained_cfg)
            png = save_cam_figure(rgb, result.heatmaps[i].numpy(), title, pngs[file])
            single = CamResult(result.heatmaps[i:i + 1], [c], [p], [result.predicted[i]])
            written.append((png, single))
    require_some(len(written), list(paths))
    return written
