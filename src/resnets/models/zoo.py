"""Every named model, as data. Figures in the docstrings are the papers' (params at 1000 classes)."""
from __future__ import annotations

from ..errors import ConfigError
from .registry import register_model
from .resnet import ResNet, ResNetConfig

R50, R101, R152 = (3, 4, 6, 3), (3, 4, 23, 3), (3, 8, 36, 3)


# ResNet (He et al. 2016), stride in the 3x3 as torchvision ("v1.5").
@register_model
def resnet18() -> ResNetConfig:
    return ResNetConfig(block="basic", layers=(2, 2, 2, 2))


@register_model
def resnet34() -> ResNetConfig:
    return ResNetConfig(block="basic", layers=(3, 4, 6, 3))


@register_model
def resnet50() -> ResNetConfig:
    """25.56M params, 4.09 GMACs at 224."""
    return ResNetConfig(layers=R50)


@register_model
def resnet101() -> ResNetConfig:
    return ResNetConfig(layers=R101)


@register_model
def resnet152() -> ResNetConfig:
    return ResNetConfig(layers=R152)


# ResNet-D ("Bag of Tricks", He et al. 2019): a deep 3x3 stem (32, 32, 64 wide) and shortcuts that average-pool
# before their 1x1 conv instead of striding it over 3/4 of the input. timm's layout and names.
RESNET_D = dict(stem="deep", stem_width=32, avg_down=True)


@register_model
def resnet18d() -> ResNetConfig:
    return ResNetConfig(block="basic", layers=(2, 2, 2, 2), **RESNET_D)


@register_model
def resnet26d() -> ResNetConfig:
    return ResNetConfig(layers=(2, 2, 2, 2), **RESNET_D)


@register_model
def resnet34d() -> ResNetConfig:
    return ResNetConfig(block="basic", layers=(3, 4, 6, 3), **RESNET_D)


@register_model
def resnet50d() -> ResNetConfig:
    """25.58M params, 4.33 GMACs at 224."""
    return ResNetConfig(layers=R50, **RESNET_D)


@register_model
def resnet101d() -> ResNetConfig:
    return ResNetConfig(layers=R101, **RESNET_D)


@register_model
def resnet152d() -> ResNetConfig:
    return ResNetConfig(layers=R152, **RESNET_D)


@register_model
def resnet200d() -> ResNetConfig:
    return ResNetConfig(layers=(3, 24, 36, 3), **RESNET_D)


# Wide ResNet-50/101-2 (Zagoruyko & Komodakis 2016, bottleneck form as torchvision): 3x3 width doubled.
@register_model
def wide_resnet50_2() -> ResNetConfig:
    return ResNetConfig(layers=R50, base_width=128)


@register_model
def wide_resnet101_2() -> ResNetConfig:
    return ResNetConfig(layers=R101, base_width=128)


# ResNeXt (Xie et al. 2017): C groups of width d in the 3x3.
@register_model
def resnext50_32x4d() -> ResNetConfig:
    """25.03M params, 4.23 GMACs at 224 (paper: 25.0M, 4.2 GFLOPs)."""
    return ResNetConfig(layers=R50, cardinality=32, base_width=4)


@register_model
def resnext101_32x4d() -> ResNetConfig:
    return ResNetConfig(layers=R101, cardinality=32, base_width=4)


@register_model
def resnext101_32x8d() -> ResNetConfig:
    return ResNetConfig(layers=R101, cardinality=32, base_width=8)


@register_model
def resnext101_64x4d() -> ResNetConfig:
    return ResNetConfig(layers=R101, cardinality=64, base_width=4)


# Squeeze-and-Excitation variants (Hu et al. 2018), timm's layout.
@register_model
def seresnet50() -> ResNetConfig:
    return ResNetConfig(layers=R50, attention="se")


@register_model
def seresnext50_32x4d() -> ResNetConfig:
    return ResNetConfig(layers=R50, cardinality=32, base_width=4, attention="se")


@register_model
def seresnext101_32x4d() -> ResNetConfig:
    return ResNetConfig(layers=R101, cardinality=32, base_width=4, attention="se")


# Res2Net (Gao et al. 2019): "26w_4s" = split width w=26, scale s=4.
@register_model
def res2net50_26w_4s() -> ResNetConfig:
    """25.70M params, 4.26 GMACs at 224 (paper: 25.7M, 4.2 GFLOPs)."""
    return ResNetConfig(block="res2", layers=R50, base_width=26, scale=4)


@register_model
def res2net50_48w_2s() -> ResNetConfig:
    return ResNetConfig(block="res2", layers=R50, base_width=48, scale=2)


@register_model
def res2net50_14w_8s() -> ResNetConfig:
    return ResNetConfig(block="res2", layers=R50, base_width=14, scale=8)


@register_model
def res2net50_26w_6s() -> ResNetConfig:
    return ResNetConfig(block="res2", layers=R50, base_width=26, scale=6)


@register_model
def res2net50_26w_8s() -> ResNetConfig:
    return ResNetConfig(block="res2", layers=R50, base_width=26, scale=8)


@register_model
def res2net101_26w_4s() -> ResNetConfig:
    return ResNetConfig(block="res2", layers=R101, base_width=26, scale=4)


@register_model
def res2next50() -> ResNetConfig:
    """Res2NeXt-50: 8 groups of width 4 inside each of the 4 scales."""
    return ResNetConfig(block="res2", layers=R50, base_width=4, cardinality=8, scale=4)


@register_model
def res2net50d() -> ResNetConfig:
    """Res2Net-50 v1b: deep 3x3 stem (32 wide) and average-pool shortcuts."""
    return ResNetConfig(block="res2", layers=R50, base_width=26, scale=4, stem="deep", stem_width=32, avg_down=True)


@register_model
def seres2net50_26w_4s() -> ResNetConfig:
    """SE-Res2Net-50, the Res2Net paper's best 50-layer model (Table 2)."""
    return ResNetConfig(block="res2", layers=R50, base_width=26, scale=4, attention="se")


# CIFAR ResNeXt-29 (Xie et al. 2017, sec. 5.3): 3x3 stem of 64, three bottleneck stages, widen factor 4.
def cifar_resnext_config(depth: int = 29, cardinality: int = 8, base_width: int = 64, widen_factor: int = 4,
                  num_classes: int = 10) -> ResNetConfig:
    """A CIFAR ResNeXt of any depth with (depth - 2) % 9 == 0 (three stages of 3-layer blocks)."""
    if depth < 11 or (depth - 2) % 9:
        raise ConfigError(f"CIFAR ResNeXt depth must satisfy (depth - 2) % 9 == 0 (29, 38, ...), got {depth}")
    n = (depth - 2) // 9
    return ResNetConfig(block="bottleneck", layers=(n, n, n), channels=(64, 128, 256), expansion=widen_factor,
                        cardinality=cardinality, base_width=base_width, stem="cifar", num_classes=num_classes,
                        zero_init_last=False)


def cifar_resnet_config(depth: int = 20, num_classes: int = 10) -> ResNetConfig:
    """A CIFAR ResNet of depth 6n+2 (He et al. 2016, sec. 4.2): 16/32/64 channels, option-A shortcuts."""
    if depth < 8 or (depth - 2) % 6:
        raise ConfigError(f"CIFAR ResNet depth must satisfy (depth - 2) % 6 == 0 (20, 32, 44, 56, 110, ...), "
                          f"got {depth}")
    n = (depth - 2) // 6
    # No zero-init of the last BN here (as the paper): with parameter-free shortcuts an all-identity start
    # leaves the head only the stem's features, and training stalls for epochs (measured on digits).
    return ResNetConfig(block="basic", layers=(n, n, n), channels=(16, 32, 64), stem="cifar",
                        zero_pad_shortcut=True, num_classes=num_classes, zero_init_last=False)


@register_model
def cifar_resnext29_8x64d() -> ResNetConfig:
    """34.43M params at 10 classes."""
    return cifar_resnext_config(29, cardinality=8)


@register_model
def cifar_resnext29_16x64d() -> ResNetConfig:
    """68.16M params at 10 classes."""
    return cifar_resnext_config(29, cardinality=16)


@register_model
def cifar_resnet20() -> ResNetConfig:
    return cifar_resnet_config(20)


@register_model
def cifar_resnet32() -> ResNetConfig:
    return cifar_resnet_config(32)


@register_model
def cifar_resnet44() -> ResNetConfig:
    return cifar_resnet_config(44)


@register_model
def cifar_resnet56() -> ResNetConfig:
    return cifar_resnet_config(56)


@register_model
def cifar_resnet110() -> ResNetConfig:
    return cifar_resnet_config(110)


def cifar_resnext(depth: int = 29, cardinality: int = 8, base_width: int = 64, widen_factor: int = 4,
                  num_classes: int = 10, **overrides) -> ResNet:
    """Build a CIFAR ResNeXt, e.g. `cifar_resnext(29, cardinality=16)` is ResNeXt-29 16x64d."""
    return cifar_resnext_config(depth, cardinality, base_width, widen_factor, num_classes).replace(**overrides).build()


def cifar_resnet(depth: int = 20, num_classes: int = 10, **overrides) -> ResNet:
    """Build a CIFAR ResNet of depth 6n+2, e.g. `cifar_resnet(56)`."""
    return cifar_resnet_config(depth, num_classes).replace(**overrides).build()
