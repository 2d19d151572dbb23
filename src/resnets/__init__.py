"""resnets: the ResNet family (ResNet, ResNeXt, Res2Net, SE and CIFAR variants) in PyTorch."""
from .errors import CheckpointError, ConfigError, ResnetsError, UnknownModelError
from .models import (FeatureExtractor, ResNet, ResNetConfig, cifar_resnet, cifar_resnext, create_model, get_config,
                     list_models, register_model)
from .models.weights import from_pretrained, load_checkpoint, load_model, save_pretrained

__version__ = "0.1.0"
__all__ = ["CheckpointError", "ConfigError", "FeatureExtractor", "ResNet", "ResNetConfig", "ResnetsError",
           "UnknownModelError", "cifar_resnet", "cifar_resnext", "create_model", "from_pretrained", "get_config",
           "list_models", "load_checkpoint", "load_model", "register_model", "save_pretrained", "train", "TrainConfig",
           "RunResult"]


def __getattr__(name: str):
    # The training stack (torchvision transforms, matplotlib, tqdm) loads on first use, so that
    # `import resnets` for the models alone stays quick.
    if name in ("train", "RunResult"):
        from .training import trainer

        return getattr(trainer, name)
    if name == "TrainConfig":
        from .training.config import TrainConfig

        return TrainConfig
    raise AttributeError(f"module 'resnets' has no attribute {name!r}")
