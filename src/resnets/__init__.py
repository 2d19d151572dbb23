"""resnets: the ResNet family (ResNet, ResNeXt, Res2Net, SE and CIFAR variants) in PyTorch."""
from .errors import (BrokenImageError, CheckpointError, ConfigError, DataError, DownloadError, ExportError,
                     ResnetsError, TrainingError, UnknownModelError)
from .hub import create_model, from_pretrained, load_model, save_pretrained
from .hub.catalog import list_weights
from .models import (FeatureExtractor, PretrainedCfg, ResNet, ResNetConfig, build_model, cifar_resnet, cifar_resnext,
                     get_config, list_models, register_model)
from .models.weights import load_weights, save_weights

__version__ = "0.1.0"
__all__ = ["BrokenImageError", "CheckpointError", "ConfigError", "DataError", "DownloadError", "ExportError",
           "FeatureExtractor", "PretrainedCfg", "ResNet", "ResNetConfig", "ResnetsError", "RunResult", "TrainConfig",
           "TrainingError", "UnknownModelError", "build_model", "cifar_resnet", "cifar_resnext", "create_model",
           "from_pretrained", "get_config", "list_models", "list_weights", "load_model", "load_weights",
           "register_model", "save_pretrained", "save_weights", "train"]


def __getattr__(name: str):
    # The training stack (torchvision's datasets, matplotlib, tqdm) loads on first use, so that `import resnets`
    # for the models alone stays quick.
    if name in ("train", "RunResult", "TrainConfig"):
        from .training import config, trainer

        return getattr(trainer if name != "TrainConfig" else config, name)
    raise AttributeError(f"module 'resnets' has no attribute {name!r}")
