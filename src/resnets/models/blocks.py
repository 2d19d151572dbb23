"""Residual blocks. ResNet, ResNeXt, Res2Net and their SE variants differ only here.

Each block takes explicit widths (in_ch, width, out_ch) so that the network builder, not the block,
decides how wide a stage is. Attribute names are torchvision's and timm's: they are the state-dict keys.
"""
from __future__ import annotations

import torch
from torch import nn

from .layers import ATTENTION, DropPath


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, groups: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=dilation, dilation=dilation, groups=groups, bias=False)


def conv1x1(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1, bias=False)


class ResidualBlock(nn.Module):
    """Shared tail of every block: optional attention, stochastic depth, add the shortcut, ReLU."""

    last_bn = "bn3"  # the BN closing the residual branch, zeroed by zero_init_last

    def __init__(self, out_ch: int, shortcut: nn.Module | None, attention: str | None, drop_path: float):
        super().__init__()
        self.downsample = shortcut
        attn = ATTENTION[attention]
        self.se = attn(out_ch) if attn is not None else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.residual(x)
        if self.se is not None:
            out = self.se(out)
        out = self.drop_path(out)
        identity = x if self.downsample is None else self.downsample(x)
        # In place: `out` is a fresh tensor no backward needs (BN, SE's product and drop-path do not save
        # their outputs), and one activation-sized allocation fewer per block is measurable on the CPU.
        out += identity
        return self.act(out)

    def zero_init_last(self) -> None:
        # Start every block as the identity: "improves the model by 0.2~0.3%" (Goyal et al. 2017).
        nn.init.zeros_(getattr(self, self.last_bn).weight)


class BasicBlock(ResidualBlock):
    """Two 3x3 convs (ResNet-18/34 and the CIFAR ResNets)."""

    last_bn = "bn2"

    def __init__(self, in_ch: int, width: int, out_ch: int, stride: int = 1, shortcut: nn.Module | None = None,
                 cardinality: int = 1, scale: int = 1, first_dilation: int = 1, dilation: int = 1,
                 attention: str | None = None, drop_path: float = 0.0):
        super().__init__(out_ch, shortcut, attention, drop_path)
        self.conv1 = conv3x3(in_ch, width, stride, dilation=first_dilation)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, out_ch, dilation=dilation)
        self.bn2 = nn.BatchNorm2d(out_ch)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))


class Bottleneck(ResidualBlock):
    """1x1 reduce, 3x3 (grouped for ResNeXt, stride here as in torchvision's "ResNet v1.5"), 1x1 expand."""

    def __init__(self, in_ch: int, width: int, out_ch: int, stride: int = 1, shortcut: nn.Module | None = None,
                 cardinality: int = 1, scale: int = 1, first_dilation: int = 1, dilation: int = 1,
                 attention: str | None = None, drop_path: float = 0.0):
        super().__init__(out_ch, shortcut, attention, drop_path)
        self.conv1 = conv1x1(in_ch, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride, groups=cardinality, dilation=first_dilation)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, out_ch)
        self.bn3 = nn.BatchNorm2d(out_ch)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


class Res2Block(ResidualBlock):
    """Res2Net bottleneck (Gao et al. 2019): the 3x3 conv becomes `scale` hierarchical groups of `width`.

    Group i (i >= 1) sees its own split plus the previous group's output, so receptive fields grow
    within one block. The last split passes through untouched (average-pooled in a stage's first block,
    which is also where the groups do not chain, since the input changes shape there).
    """

    def __init__(self, in_ch: int, width: int, out_ch: int, stride: int = 1, shortcut: nn.Module | None = None,
                 cardinality: int = 1, scale: int = 4, first_dilation: int = 1, dilation: int = 1,
                 attention: str | None = None, drop_path: float = 0.0):
        super().__init__(out_ch, shortcut, attention, drop_path)
        self.width, self.scale = width, scale
        self.is_first = stride > 1 or shortcut is not None
        self.conv1 = conv1x1(in_ch, width * scale)
        self.bn1 = nn.BatchNorm2d(width * scale)
        num_convs = max(1, scale - 1)
        self.convs = nn.ModuleList(
            conv3x3(width, width, stride, groups=cardinality, dilation=first_dilation) for _ in range(num_convs))
        self.bns = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(num_convs))
        self.pool = nn.AvgPool2d(3, stride=stride, padding=1) if self.is_first and scale > 1 else None
        self.conv3 = conv1x1(width * scale, out_ch)
        self.bn3 = nn.BatchNorm2d(out_ch)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        splits = torch.split(out, self.width, dim=1)  # scale x (B, width, H, W)
        outs = []
        prev = splits[0]
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            inp = splits[i] if i == 0 or self.is_first else prev + splits[i]
            prev = self.act(bn(conv(inp)))
            outs.append(prev)
        if self.scale > 1:
            outs.append(self.pool(splits[-1]) if self.pool is not None else splits[-1])
        return self.bn3(self.conv3(torch.cat(outs, dim=1)))


BLOCKS: dict[str, type[ResidualBlock]] = {"basic": BasicBlock, "bottleneck": Bottleneck, "res2": Res2Block}
EXPANSION = {"basic": 1, "bottleneck": 4, "res2": 4}
