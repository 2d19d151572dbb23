"""One generic ResNet. Every named model in `zoo.py` is a `ResNetConfig` handed to this class."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .blocks import BLOCKS, EXPANSION
from .layers import ATTENTION, GlobalPool, make_shortcut
from .pretrained_cfg import CIFAR_MEAN, CIFAR_STD, PretrainedCfg

STEMS = ("plain", "deep", "cifar")


@dataclass(frozen=True)
class ResNetConfig:
    """Architecture of one ResNet-family network.

    Args:
        block: "basic" (two 3x3), "bottleneck" (1x1-3x3-1x1) or "res2" (Res2Net bottleneck).
        layers: blocks per stage, e.g. (3, 4, 6, 3) for a 50-layer net.
        channels: base width of each stage ("planes"); a stage outputs channels * expansion.
        expansion: output/base width ratio of a block (4 for bottlenecks; the CIFAR ResNeXt "widen factor").
        cardinality: groups of the 3x3 conv (ResNeXt's C).
        base_width: width of each group in the first stage (ResNeXt's d, Res2Net's w); doubles per stage.
        scale: Res2Net's number of hierarchical splits (s).
        stem: "plain" (7x7/2 + max-pool), "deep" (three 3x3, ResNet-C) or "cifar" (one 3x3, no pooling).
        stem_width: channels of the deep stem's first convs.
        avg_down: average-pool before the strided 1x1 shortcut conv (ResNet-D).
        zero_pad_shortcut: parameter-free "option A" shortcuts of the CIFAR ResNets.
        attention: None or "se" (Squeeze-and-Excitation after the last BN of each block).
        output_stride: 8, 16 or 32; below 32 the last stages dilate instead of striding.
        drop_path_rate: stochastic depth, rising linearly to this rate at the last block.
        zero_init_last: zero the last BN of each residual branch so blocks start as identities.
    """

    block: str = "bottleneck"
    layers: tuple[int, ...] = (3, 4, 6, 3)
    channels: tuple[int, ...] = (64, 128, 256, 512)
    expansion: int | None = None
    cardinality: int = 1
    base_width: int = 64
    scale: int = 4
    stem: str = "plain"
    stem_width: int = 64
    avg_down: bool = False
    zero_pad_shortcut: bool = False
    attention: str | None = None
    num_classes: int = 1000
    in_chans: int = 3
    output_stride: int = 32
    global_pool: str = "avg"
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    zero_init_last: bool = True

    def replace(self, **overrides: Any) -> "ResNetConfig":
        valid = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(overrides) - set(valid))
        if unknown:
            raise ConfigError(f"unknown argument(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
        if "layers" in overrides:
            overrides["layers"] = tuple(overrides["layers"])
        if "channels" in overrides:
            overrides["channels"] = tuple(overrides["channels"])
        return dataclasses.replace(self, **overrides)

    def build(self, **metadata: Any) -> "ResNet":
        """The network; `metadata` is ResNet's keyword arguments (arch_name, pretrained_cfg, class_names, ...)."""
        return ResNet(self, **metadata)

    def default_pretrained_cfg(self) -> PretrainedCfg:
        """Preprocessing of this architecture before any weights say otherwise: CIFAR's for the CIFAR stem
        (32 px, no crop), ImageNet's for the others, per channel only for 3 channels."""
        if self.stem == "cifar":
            mean, std = (CIFAR_MEAN, CIFAR_STD) if self.in_chans == 3 else ((0.5,) * self.in_chans,) * 2
            return PretrainedCfg((self.in_chans, 32, 32), "bilinear", 1.0, mean, std)
        if self.in_chans == 3:
            return PretrainedCfg()
        return PretrainedCfg(input_size=(self.in_chans, 224, 224), mean=(0.5,) * self.in_chans,
                             std=(0.5,) * self.in_chans)

    def validate(self) -> None:
        self._check_types()
        checks = [
            (self.block in BLOCKS, f"block={self.block!r} is not one of {', '.join(BLOCKS)}"),
            (self.stem in STEMS, f"stem={self.stem!r} is not one of {', '.join(STEMS)}"),
            (self.attention in ATTENTION, f"attention={self.attention!r} is not one of None, 'se'"),
            (len(self.layers) == len(self.channels) and all(n >= 1 for n in self.layers),
             f"layers={self.layers} needs one positive count per stage of channels={self.channels}"),
            (self.output_stride in (8, 16, 32), f"output_stride={self.output_stride} is not 8, 16 or 32"),
            (self.num_classes >= 0 and self.in_chans >= 1, "num_classes must be >= 0 and in_chans >= 1"),
            (self.cardinality >= 1 and self.base_width >= 1 and self.scale >= 1,
             "cardinality, base_width and scale must be >= 1"),
            (not (self.avg_down and self.zero_pad_shortcut), "avg_down and zero_pad_shortcut exclude each other"),
            (0.0 <= self.drop_rate < 1.0 and 0.0 <= self.drop_path_rate < 1.0, "drop rates must be in [0, 1)"),
            (self.block != "basic" or (self.cardinality == 1 and self.base_width == 64),
             "basic blocks support only cardinality=1 and base_width=64 (as torchvision's)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def _check_types(self) -> None:
        """Each field of its declared kind: a config read from a file is untrusted, and `layers=[1.5, ...]`
        would otherwise fail deep inside the build, as a TypeError."""
        whole = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
        number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
        kinds = {"layers": lambda v: isinstance(v, tuple) and v and all(whole(n) for n in v),
                 "channels": lambda v: isinstance(v, tuple) and v and all(whole(n) and n >= 1 for n in v),
                 "expansion": lambda v: v is None or whole(v) and v >= 1, "block": lambda v: isinstance(v, str),
                 "stem": lambda v: isinstance(v, str), "global_pool": lambda v: isinstance(v, str),
                 "attention": lambda v: v is None or isinstance(v, str),
                 **{k: whole for k in ("cardinality", "base_width", "scale", "stem_width", "num_classes", "in_chans",
                                       "output_stride")},
                 **{k: number for k in ("drop_rate", "drop_path_rate")},
                 **{k: lambda v: isinstance(v, bool) for k in ("avg_down", "zero_pad_shortcut", "zero_init_last")}}
        for name, ok in kinds.items():
            if not ok(getattr(self, name)):
                raise ConfigError(f"{name}={getattr(self, name)!r} is not of its kind ({self.__annotations__[name]})")


def make_stem(cfg: ResNetConfig) -> tuple[nn.Module, nn.Module, int, int]:
    """Returns (conv1, pool, out_ch, stride). `conv1` is a Sequential for the deep stem (timm's keys)."""
    if cfg.stem == "cifar":
        return nn.Conv2d(cfg.in_chans, cfg.channels[0], 3, padding=1, bias=False), nn.Identity(), cfg.channels[0], 1
    pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    if cfg.stem == "plain":
        return nn.Conv2d(cfg.in_chans, 64, 7, stride=2, padding=3, bias=False), pool, 64, 4
    w = cfg.stem_width
    conv1 = nn.Sequential(
        nn.Conv2d(cfg.in_chans, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
        nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
        nn.Conv2d(w, 2 * w, 3, padding=1, bias=False))
    return conv1, pool, 2 * w, 4


class ResNet(nn.Module):
    """ResNet / ResNeXt / Res2Net / SE / CIFAR variants, with timm's model API.

    Names of parameters are torchvision's (`conv1`, `bn1`, `layer1..4`, `downsample.0/1`, `fc`), so
    torchvision and timm weights load with `strict=True`.
    """

    def __init__(self, cfg: ResNetConfig, *, arch_name: str | None = None, arch_args: dict[str, Any] | None = None,
                 pretrained_cfg: PretrainedCfg | None = None, class_names: list[str] | None = None):
        """Args:
            cfg: the architecture.
            arch_name: the registered name it was built as (`create_model`), if any.
            arch_args: the arguments that name was given (what `cfg` changes of the registered config).
            pretrained_cfg: preprocessing of the weights (default: the architecture's).
            class_names: one name per output of the classifier (default: none; "0", "1", ... in reports).
        """
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.arch_name, self.arch_args = arch_name, dict(arch_args or {})
        self.pretrained_cfg = pretrained_cfg or cfg.default_pretrained_cfg()
        self.num_classes = cfg.num_classes
        self.drop_rate = cfg.drop_rate
        self.conv1, pool, in_ch, stride = make_stem(cfg)
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = pool
        self.feature_info = [dict(num_chs=in_ch, reduction=1 if cfg.stem == "cifar" else 2, module="act1")]

        block_cls = BLOCKS[cfg.block]
        expansion = cfg.expansion or EXPANSION[cfg.block]
        shortcut_kind = "pad" if cfg.zero_pad_shortcut else "avg" if cfg.avg_down else "conv"
        total_blocks, block_idx = sum(cfg.layers), 0
        dilation = prev_dilation = 1
        for i, (num_blocks, planes) in enumerate(zip(cfg.layers, cfg.channels)):
            stage_stride = 1 if i == 0 else 2
            if stride >= cfg.output_stride and stage_stride > 1:
                dilation, stage_stride = dilation * stage_stride, 1  # keep resolution, grow receptive field
            stride *= stage_stride
            out_ch = planes * expansion
            width = int(planes * cfg.base_width / 64) * cfg.cardinality  # ResNeXt's C x d
            blocks = []
            for j in range(num_blocks):
                block_stride = stage_stride if j == 0 else 1
                blocks.append(block_cls(
                    in_ch, width, out_ch, stride=block_stride,
                    shortcut=make_shortcut(in_ch, out_ch, block_stride, shortcut_kind, dilation),
                    cardinality=cfg.cardinality, scale=cfg.scale,
                    first_dilation=prev_dilation if j == 0 else dilation, dilation=dilation,
                    attention=cfg.attention,
                    drop_path=cfg.drop_path_rate * block_idx / max(1, total_blocks - 1)))
                in_ch, block_idx = out_ch, block_idx + 1
            prev_dilation = dilation
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=out_ch, reduction=stride, module=f"layer{i + 1}"))

        self.global_pool = GlobalPool(cfg.global_pool)
        self.num_features = in_ch
        self.fc = self._make_classifier(cfg.num_classes)
        self._init_weights(cfg.zero_init_last)
        self.class_names = class_names

    @property
    def class_names(self) -> list[str] | None:
        return self._class_names

    @class_names.setter
    def class_names(self, names: list[str] | None) -> None:
        if names is not None and len(names) != self.num_classes:
            raise ConfigError(f"{len(names)} class names for a classifier of {self.num_classes} classes")
        self._class_names = [str(n) for n in names] if names is not None else None

    def labels(self) -> list[str]:
        """The class names, or "0", "1", ... when the weights name none."""
        return self.class_names or [str(i) for i in range(self.num_classes)]

    def _make_classifier(self, num_classes: int) -> nn.Module:
        features = self.num_features * self.global_pool.multiplier
        return nn.Linear(features, num_classes) if num_classes > 0 else nn.Identity()

    def _init_weights(self, zero_init_last: bool) -> None:
        if self.bn1.weight.is_meta:
            return  # shapes-only model (counting, summaries): random init would cost time and mean nothing
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_last:
            for m in self.modules():
                if hasattr(m, "zero_init_last"):
                    m.zero_init_last()

    @property
    def stage_names(self) -> list[str]:
        return [info["module"] for info in self.feature_info]

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            self.global_pool = GlobalPool(global_pool)
        if num_classes != self.num_classes:
            self._class_names = None  # the new head's classes are not the old ones
        self.num_classes = num_classes
        self.fc = self._make_classifier(num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        for i in range(len(self.cfg.layers)):
            x = getattr(self, f"layer{i + 1}")(x)
        return x  # (B, num_features, H / output_stride, W / output_stride)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate > 0:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def check_img_size(model: nn.Module, img_size: int | None) -> None:
    """ConfigError for inputs so small that the last stage would have no pixels left."""
    info = getattr(model, "feature_info", None)
    if img_size is None or not info:  # an exported graph checks its own size
        return
    reduction = info[-1]["reduction"]
    if img_size < reduction:
        raise ConfigError(f"image size {img_size} is too small for this model: it downsamples by {reduction}, "
                          f"so use at least {reduction}")
