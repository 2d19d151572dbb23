"""The ResNet family: one generic network (`resnet.py`), blocks (`blocks.py`), named variants (`zoo.py`)."""
from . import zoo  # noqa: F401  (registers the named models)
from .features import FeatureExtractor
from .registry import create_model, get_config, list_models, register_model
from .resnet import ResNet, ResNetConfig
from .zoo import cifar_resnet, cifar_resnext

__all__ = ["FeatureExtractor", "ResNet", "ResNetConfig", "cifar_resnet", "cifar_resnext", "create_model",
           "get_config", "list_models", "register_model"]
