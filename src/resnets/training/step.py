"""The optimizer step of `resnets train`: forward and backward of each batch, then the step that follows an
accumulation cycle, with the non-finite guard and the weight EMA. `resnets bench` times this same object."""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn
from torchvision.transforms import v2

from ..caches import CUDA_GRAPH_MODES, compile_mode_arg, keep_compile_cache
from ..data.transforms import DeviceNormalize
from ..device import autocast
from ..evaluation import topk_hits
from ..models.pretrained_cfg import PretrainedCfg
from .config import TrainConfig
from .distributed import Distributed, wrap_model
from .ema import ModelEma
from .optim import make_optimizer, scaled_lr, step_unless


@dataclass
class TrainStep:
    """The live objects a training step uses, complete when built (`make_train_step`)."""

    model: nn.Module  # the bare model: its state is what gets saved
    optimizer: torch.optim.Optimizer
    criterion: nn.Module
    normalize: DeviceNormalize  # uint8 batches -> normalised float, in the model's memory format
    device: torch.device
    amp: str
    base_lr: float  # --lr, scaled to the global batch when asked
    scaler: torch.amp.GradScaler
    ema: ModelEma | None = None
    mixer: v2.Transform | None = None
    dist: Distributed = field(default_factory=Distributed)
    accum_steps: int = 1
    clip_grad: float = 0.0
    step_model: nn.Module | None = None  # what the step calls: `model`, its DDP wrapper, or a compiled one of these
    ddp: nn.Module | None = None  # the DDP wrapper, for `no_sync` while accumulating
    cuda_graphs: bool = False  # compiled with CUDA graphs (--compile-mode reduce-overhead or max-autotune)

    def __post_init__(self) -> None:
        if self.step_model is None:  # `is`, not `or`: a compiled module's truth value asks for its len()
            self.step_model = self.model

    @property
    def eval_model(self) -> nn.Module:
        """What is validated and saved as best/last: the EMA of the weights when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def forward_backward(self, images: torch.Tensor, labels: torch.Tensor, cycle_end: bool) -> torch.Tensor:
        """Forward and backward of one batch; its (5,) stats on the device, summed over the processes: loss x n,
        top-1 hits, top-5 hits, n, and whether the loss was non-finite."""
        device = self.device
        images, labels = self.normalize(images.to(device, non_blocking=True)), labels.to(device, non_blocking=True)
        hard_labels = labels
        if self.mixer is not None:
            images, labels = self.mixer(images, labels)  # labels become (B, C) mixtures
            hard_labels = labels.argmax(1)
        if self.normalize.channels_last:  # the mixer, or a float batch, may come in another layout
            images = images.contiguous(memory_format=torch.channels_last)
        # Between accumulation steps the gradients only add up locally; the last backward of a cycle
        # all-reduces their sum.
        sync = contextlib.nullcontext() if self.ddp is None or cycle_end else self.ddp.no_sync()
        with sync:
            if self.cuda_graphs:  # a new training step: the graphs may reuse the last step's output memory
                torch.compiler.cudagraph_mark_step_begin()
            with autocast(device, self.amp):
                logits = self.step_model(images)
                loss = self.criterion(logits.float(), labels)
            if self.scaler.is_enabled():
                # The scaler skips a step by its gradients: make a non-finite loss give non-finite gradients
                # (with label smoothing or mixed targets an infinite logit gives an infinite loss and finite ones)
                loss = loss * torch.where(torch.isfinite(loss), 1.0, float("nan"))
            self.scaler.scale(loss / self.accum_steps).backward()
        loss = loss.detach()
        # n from a fill kernel, not from a Python number: torch.tensor(n, device=...) copies with a stream sync
        n = torch.full((1,), hard_labels.shape[0], dtype=loss.dtype, device=loss.device)
        stats = torch.cat([loss.reshape(1) * n, topk_hits(logits.detach().float(), hard_labels).to(loss.dtype), n,
                           (~torch.isfinite(loss)).to(loss.dtype).reshape(1)])
        return self.dist.sum_(stats)

    def optimizer_step(self, skip: torch.Tensor, bn_statistics: BatchNormStatistics | None = None) -> None:
        """The optimizer step after an accumulation cycle, skipped on the device where `skip` (a 0-dim flag) is
        set; then the BN statistics put back if skipped, and the EMA moved unless skipped."""
        if self.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad)
        step_unless(self.optimizer, self.scaler, skip)
        self.optimizer.zero_grad(set_to_none=True)
        if bn_statistics is not None:  # before the EMA reads them (x 0 does not clear a NaN)
            bn_statistics.restore_if(skip)
        if self.ema is not None:
            self.ema.update_parameters(self.model, skip=skip)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One batch that is one whole step (no accumulation), as `resnets bench` times it."""
        stats = self.forward_backward(images, labels, cycle_end=True)
        self.optimizer_step((stats[4] > 0).to(stats.dtype))
        return stats


class BatchNormStatistics:
    """The running statistics of the BN layers in training mode, as they were before an accumulation cycle,
    put back when the cycle's step is skipped: a forward that goes non-finite writes NaN into them, and
    validation, the EMA and every later batch would inherit it. A few kernels per cycle, no host sync:
    one copy of all statistics (about 100k numbers for ResNet-50), and a masked copy back."""

    def __init__(self, model: nn.Module):
        self.buffers = [b for m in model.modules()
                        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
                        for b in (m.running_mean, m.running_var)]
        self.sizes = [b.numel() for b in self.buffers]
        self.saved: torch.Tensor | None = None

    def save(self) -> None:
        if self.buffers:
            self.saved = torch.cat(self.buffers)

    def restore_if(self, skip: torch.Tensor) -> None:
        """Put the saved statistics back where `skip` (a device flag) is set. num_batches_tracked still counts
        the skipped batches: it only matters for BN with momentum=None, which no model here uses."""
        if self.saved is not None:
            kept = torch.where(skip > 0, self.saved, torch.cat(self.buffers))
            torch._foreach_copy_(self.buffers, list(kept.split(self.sizes)))
            self.saved = None


def make_criterion(cfg: TrainConfig, class_counts: Sequence[int] | None, device: torch.device) -> nn.Module:
    """Cross-entropy, with label smoothing, and with `--imbalance weights` weighted by inverse class frequency."""
    weight = None
    if cfg.imbalance == "weights" and class_counts is not None:
        counts = torch.tensor(class_counts, dtype=torch.float64)
        weight = (counts.sum() / (len(counts) * counts)).to(torch.float32).to(device)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)


def make_batch_mixer(cfg: TrainConfig, num_classes: int) -> v2.Transform | None:
    mixers = []
    if cfg.mixup > 0:
        mixers.append(v2.MixUp(alpha=cfg.mixup, num_classes=num_classes))
    if cfg.cutmix > 0:
        mixers.append(v2.CutMix(alpha=cfg.cutmix, num_classes=num_classes))
    return v2.RandomChoice(mixers) if len(mixers) > 1 else (mixers[0] if mixers else None)


def make_train_step(model: nn.Module, cfg: TrainConfig, pretrained_cfg: PretrainedCfg, device: torch.device,
                    amp: str, channels_last: bool, dist: Distributed | None = None,
                    class_counts: Sequence[int] | None = None) -> TrainStep:
    """The step of `cfg` for `model` (already on `device`): optimizer (fused where torch can), loss, EMA, batch
    mixing, normalisation. `class_counts`: training images per class, for `--imbalance weights`."""
    dist = dist or Distributed()
    global_batch = cfg.batch_size * dist.world_size
    return TrainStep(
        model=model, optimizer=make_optimizer(model, cfg), criterion=make_criterion(cfg, class_counts, device),
        normalize=DeviceNormalize(pretrained_cfg, channels_last), device=device, amp=amp,
        base_lr=scaled_lr(cfg, global_batch * cfg.accum_steps),
        scaler=torch.amp.GradScaler(device.type, enabled=amp == "fp16"),
        ema=ModelEma(model, cfg.ema_decay) if cfg.ema_decay > 0 else None,
        mixer=make_batch_mixer(cfg, model.num_classes), dist=dist, accum_steps=cfg.accum_steps,
        clip_grad=cfg.clip_grad)


def wrap_step(step: TrainStep, cfg: TrainConfig, device: torch.device) -> TrainStep:
    """The step that calls the model through DDP (several processes) and torch.compile (--compile, its caches
    kept across runs). Wrapped once the weights are final: DDP starts every process from rank 0's."""
    ddp = None
    if step.dist.enabled:
        ddp = wrap_model(step.model, step.dist, device, cfg.ddp_bucket_mb, cfg.ddp_static_graph,
                         find_unused=cfg.head_epochs > 0)
    step_model = step.model if ddp is None else ddp
    if cfg.compile:
        keep_compile_cache(cfg.cache_dir)
        step_model = torch.compile(step_model, mode=compile_mode_arg(cfg.compile_mode))
    return dataclasses.replace(step, step_model=step_model, ddp=ddp,
                               cuda_graphs=cfg.compile and cfg.compile_mode in CUDA_GRAPH_MODES)
