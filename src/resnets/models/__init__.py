"""The ResNet family: one generic network (`resnet.py`), blocks (`blocks.py`), named variants (`zoo.py`), the
registry, and weights files (`weights.py`)."""
from . import zoo  # noqa: F401  (registers the named models)
from .features import FeatureExtractor
from .pretrained_cfg import PretrainedCfg
from .registry import build_model, get_config, list_models, register_model
from .resnet import ResNet, ResNetConfig, check_img_size
from .zoo import cifar_resnet, cifar_resnext

__all__ = ["FeatureExtractor", "PretrainedCfg", "ResNet", "ResNetConfig", "check_img_size", "cifar_resnet",
           "cifar_resnext", "build_model", "get_config", "list_models", "register_model"]
