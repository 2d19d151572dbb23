"""resnets: the ResNet family (ResNet, ResNeXt, Res2Net, SE and CIFAR variants) in PyTorch."""
from .errors import CheckpointError, ConfigError, ResnetsError, UnknownModelError
from .models import (FeatureExtractor, ResNet, ResNetConfig, cifar_resnet, cifar_resnext, create_model, get_config,
                     list_models, register_model)
from .models.weights import from_pretrained, load_checkpoint, save_pretrained

__version__ = "0.1.0"
__all__ = ["CheckpointError", "ConfigError", "FeatureExtractor", "ResNet", "ResNetConfig", "ResnetsError",
           "UnknownModelError", "cifar_resnet", "cifar_resnext", "create_model", "from_pretrained", "get_config",
           "list_models", "load_checkpoint", "register_model", "save_pretrained"]
