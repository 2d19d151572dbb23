"""Whether a model's activations at an image size can fit at all, known before anything is allocated: an
`--img-size 20000`, or a weights file whose preprocessing says 30000 px, would otherwise end in the allocator's
traceback, after minutes of decoding and resizing.

The estimate is a lower bound, by arithmetic on the model's feature maps (`feature_info`: channels and
reduction of the stem and of each stage): for inference, the input batch and the largest feature map, which
must both exist at once; for training (and Grad-CAM's backward), the input and every block's output, which
autograd keeps for the backward pass. ResNet-50 at 224 px: 25 MiB an image for training by this count,
85 MiB by counting every saved conv and BN output. A size refused here could never run; one accepted may
still not, and then fails as it always did.
"""
from __future__ import annotations

import math
import os
import resource

import torch
from torch import nn

from ..errors import ConfigError


def activation_elements(model: nn.Module, img_size: int | tuple[int, int], training: bool) -> int | None:
    """Elements one image at `img_size` (a side, or (height, width)) needs at least (see the module's
    docstring); None for a model that resnets did not build (no feature_info and stage depths to count from)."""
    cfg, levels = getattr(model, "cfg", None), getattr(model, "feature_info", None)
    if cfg is None or not levels or len(levels) != len(cfg.layers) + 1:
        return None
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    maps = [info["num_chs"] * -(-h // info["reduction"]) * -(-w // info["reduction"])
            for info in levels]  # (C, H / reduction, W / reduction) of the stem and of each stage
    image = cfg.in_chans * h * w
    if not training:
        return image + max(maps)
    return image + maps[0] + sum(blocks * elements for blocks, elements in zip(cfg.layers, maps[1:]))


def available_bytes(device: torch.device) -> int | None:
    """Memory this process can still take on `device`: a GPU's free memory (with what torch's cache holds
    unused), the host's MemAvailable capped by an address-space limit (`ulimit -v`); None when unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit != resource.RLIM_INFINITY:
        try:
            with open("/proc/self/statm") as f:
                used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            available = min(available, max(0, limit - used))
        except (OSError, ValueError, IndexError):
            pass
    return available


def check_activation_memory(model: nn.Module, img_size: int | tuple[int, int], batch_size: int,
                            device: torch.device, *, training: bool = False, what: str | None = None,
                            size_flag: str | None = "--img-size", batch_flag: str | None = "-b",
                            element_bytes: int = 4) -> None:
    """ConfigError, before any allocation, when `batch_size` images at `img_size` cannot fit on `device` even
    by the lower bound above, in one line that says what fits.

    Args:
        training: count what a backward pass keeps (training, Grad-CAM), not only one layer at a time.
        what: where the size comes from (default: "`size_flag` `img_size`"), e.g. a weights file's preprocessing.
        size_flag, batch_flag: the flags that change the size and the batch, to name a value of each that fits;
            None where the command has no such flag.
        element_bytes: 4 for float32, 2 under a 16-bit autocast.
    """
    per_image = activation_elements(model, img_size, training)
    available = available_bytes(device)
    if per_image is None or available is None:
        return
    need = per_image * batch_size * element_bytes
    if need <= available:
        return
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    fits = []
    side = int(max(h, w) * math.sqrt(available / need)) // 32 * 32  # activations grow with the pixels
    if size_flag and side >= 32:
        fits.append(f"{size_flag} {side}")
    batch = available // (per_image * element_bytes)
    if batch_flag and batch >= 1:
        fits.append(f"{batch_flag} {batch} at {h}x{w}")
    task = "a forward and backward pass" if training else "inference"
    raise ConfigError(f"{what or f'{size_flag} {img_size}'}: {batch_size} image(s) of {h}x{w} need at "
                      f"least {need / 2**30:,.1f} GiB for {task} on {device}, "
                      f"{available / 2**30:,.1f} GiB is available; "
                      + (f"at most {', or '.join(fits)} could fit" if fits else
                         f"batches of {batch} at most could fit" if batch >= 1 else f"not one image fits on {device}"))
