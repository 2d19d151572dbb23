"""Small building pieces shared by every block: SE attention, stochastic depth, shortcuts, pooling."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


def make_divisible(value: float, divisor: int = 8) -> int:
    # Round to a multiple of `divisor` (never below it): channel counts that tensor cores like.
    return max(divisor, int(value + divisor / 2) // divisor * divisor)


class SqueezeExcite(nn.Module):
    """Squeeze-and-Excitation (Hu et al. 2018) with 1x1 convs, reduction 16.

    Parameter names (`fc1`, `fc2`) and the reduced width (multiple of 8) follow timm's `SEModule`,
    so timm's SE-ResNet/SE-ResNeXt checkpoints load unchanged.
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = make_divisible(channels / reduction)
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1, bias=True)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)  # (B, C, 1, 1)
        scale = self.fc2(self.act(self.fc1(scale)))
        return x * scale.sigmoid()


ATTENTION: dict[str | None, type[nn.Module] | None] = {None: None, "se": SqueezeExcite}


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): drop a residual branch per sample during training."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p:.3f}"


class PadShortcut(nn.Module):
    """Option A shortcut of the CIFAR ResNets (He et al. 2016, sec. 4.2): subsample and zero-pad channels.

    Parameter-free, which is why CIFAR ResNet-20 has 0.27M parameters and not more.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.stride = stride
        self.extra = out_ch - in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        half = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, half, self.extra - half))


def make_shortcut(in_ch: int, out_ch: int, stride: int, kind: str, dilation: int = 1) -> nn.Module | None:
    """The projection on the residual path when a block changes shape; None when identity fits.

    kind: "conv" (1x1 strided conv + BN, torchvision), "avg" (avg-pool then 1x1 conv, ResNet-D /
    timm `avg_down`), "pad" (option A zero padding). Module indices match torchvision/timm keys.
    """
    if stride == 1 and in_ch == out_ch:
        return None
    if kind == "pad":
        return PadShortcut(in_ch, out_ch, stride)
    conv = nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=1 if kind == "avg" else stride, bias=False)
    if kind == "conv":
        return nn.Sequential(conv, nn.BatchNorm2d(out_ch))
    # ResNet-D: the 1x1 conv of a strided shortcut would skip 3/4 of the input; average it first.
    # With stride 1 in an undilated stage (the first) there is nothing to average. A stage dilated for
    # output_stride < 32 must compute the strided net densely (so its weights keep their meaning): the
    # 2x2 average stays, at stride 1, zero-padded bottom/right as timm's AvgPool2dSame.
    if stride == 1 and dilation == 1:
        pool: nn.Module = nn.Identity()
    elif stride == 1:
        pool = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.AvgPool2d(2, stride=1))
    else:
        pool = nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False)
    return nn.Sequential(pool, conv, nn.BatchNorm2d(out_ch))


class GlobalPool(nn.Module):
    """Global pooling to (B, C): "avg", "max", "avgmax" (their mean) or "catavgmax" (both, 2C)."""

    kinds = ("avg", "max", "avgmax", "catavgmax")

    def __init__(self, kind: str = "avg"):
        super().__init__()
        if kind not in self.kinds:
            raise ConfigError(f"global_pool={kind!r} is not one of {', '.join(self.kinds)}")
        self.kind = kind

    @property
    def multiplier(self) -> int:
        return 2 if self.kind == "catavgmax" else 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "avg":
            return x.mean((2, 3))
        if self.kind == "max":
            return x.amax((2, 3))
        avg, mx = x.mean((2, 3)), x.amax((2, 3))
        return 0.5 * (avg + mx) if self.kind == "avgmax" else torch.cat([avg, mx], dim=1)

    def extra_repr(self) -> str:
        return repr(self.kind)
