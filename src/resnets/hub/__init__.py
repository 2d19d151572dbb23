"""Models by name and from disk, above the registry (architectures) and the weights files beneath it:

    create_model("resnet50.a1_in1k", pretrained=True)   an architecture, with published weights by name
    load_model("runs/<run>")                             a trained model from a run, a folder or a weights file
    save_pretrained(model, "dir/") / from_pretrained(...) folders in timm's format, "hf-hub:ORG/REPO" too

Published weights are the catalog's (`catalog.py`), fetched and verified by `download.py`."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import huggingface_hub
import torch
from huggingface_hub import errors as hf_errors
from torch import nn

from ..errors import CheckpointError, ConfigError, ResnetsError
from ..fileio import atomic_write_json, atomic_write_text
from ..messages import one_line
from ..models.features import FeatureExtractor
from ..models.pretrained_cfg import PretrainedCfg
from ..models.metadata_schema import check_size, read_json_file
from ..models.registry import build_model, list_models
from ..models.resnet import ResNet
from ..models.weights import (CLASSIFIER_PREFIX, TORCH_WEIGHTS_FILE, WEIGHTS_FILE, LoadReport, build_from_metadata,
                              load_state, read_state_dict, resolve_weights, save_weights)
from .catalog import WeightSet, catalog, find_weights
from .download import HUB_FILES, HUB_PREFIX, fetch, fetch_hub_file, split_hub_spec
from .timm_format import (config_from_timm, labels_from_timm, model_card, pretrained_cfg_from_timm, resnets_name,
                          timm_config)

CONFIG_FILE, CARD_FILE = "config.json", "README.md"
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".tar", ".ckpt")


@dataclass
class Pretrained:
    """Weights found for a request: a local file, and the published set it is, if it is one."""

    path: Path
    weight_set: WeightSet | None = None
    _read: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = field(default=None, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.weight_set.name if self.weight_set else str(self.path)

    def read(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Tensors and metadata of the file, read and verified once however often they are asked for."""
        if self._read is None:
            self._read = read_state_dict(self.path)
        return self._read

    def preprocessing(self) -> PretrainedCfg | None:
        """What the weights were trained with: a published set's, a model folder's config.json (timm's, a Hub
        repo's), or a resnets file's own metadata; None when nothing says."""
        if self.weight_set is not None:
            return self.weight_set.pretrained_cfg
        config = self.path.parent / CONFIG_FILE
        if config.is_file() and self.path.name in HUB_FILES:
            return pretrained_cfg_from_timm(read_json_file(config), PretrainedCfg(), str(config))
        saved = self.read()[1].get("pretrained_cfg")
        try:
            return PretrainedCfg.from_dict(saved) if isinstance(saved, dict) else None
        except (TypeError, ValueError, ConfigError):  # not usable: loading the weights says so
            return None


def find_pretrained(spec: str | bool, architecture: str | None = None) -> Pretrained:
    """The weights `spec` names, fetched if they are published and not cached yet: True or "default" (the
    architecture's default set), "architecture.tag", a tag of `architecture`, an architecture's name,
    "hf-hub:ORG/REPO", an http(s) URL, or a path (a weights file, a save_pretrained folder, a run folder)."""
    if spec is True or spec == "default":
        if architecture is None:
            raise ConfigError("pretrained=True needs a model name to know which weights")
        return _published(find_weights(architecture))
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"pretrained={spec!r} is not weights: give True, a name, a URL or a path")
    if spec.startswith(HUB_PREFIX) or spec.startswith(("http://", "https://")):
        published = next((w for w in catalog().values() if w.source == spec), None)  # with its preprocessing
        if published:
            return _published(published)
        found = Pretrained(fetch(spec))
        if spec.startswith(HUB_PREFIX):  # a model folder's config.json says how its weights were trained
            repo, revision = split_hub_spec(spec)
            fetch_hub_file(repo, (CONFIG_FILE,), revision, spec, optional=True)
        return found
    path_like = os.sep in spec or spec.startswith(".") or Path(spec).suffix.lower() in WEIGHT_SUFFIXES
    if path_like and Path(spec).exists():
        return Pretrained(resolve_weights(spec))
    # A published name wins over a folder in the working directory that happens to share it ("./resnet18" is
    # the folder)
    for name in (spec, f"{architecture}.{spec}"):
        if name in catalog():
            return _published(catalog()[name])
    if spec.partition(".")[0] in list_models():  # an architecture, or one of its tags that does not exist
        return _published(find_weights(spec))
    if Path(spec).exists():
        return Pretrained(resolve_weights(spec))
    raise CheckpointError(f"{spec}: no such weights file or folder, nor a URL, hf-hub: repo or published weight "
                          f"set (`resnets weights` lists them)")


def _published(weight_set: WeightSet) -> Pretrained:
    # A published set does not change: once in the cache it is used without asking the Hub again
    return Pretrained(fetch(weight_set.source, weight_set.sha256, weight_set.name, cache_first=True), weight_set)


def load_pretrained(model: nn.Module, pretrained: Pretrained) -> LoadReport:
    """Load found weights into `model`: a published set brings its preprocessing and, for ImageNet-1k, the
    class names; weights for 3-channel input are adapted to the model's first conv (timm's rule)."""
    state, metadata = pretrained.read()
    state = dict(state)  # adapted below: the cached read stays as the file has it
    if adapt_input_conv(model, state):
        metadata = _with_channels(metadata, model)
    if pretrained.weight_set is not None:
        ws = pretrained.weight_set
        channels = model.pretrained_cfg.input_size[0]
        metadata = {**metadata, "pretrained_cfg": ws.pretrained_cfg.with_channels(channels).to_dict()}
        if ws.labels == "imagenet-1k":
            metadata["class_names"] = imagenet_class_names()
    report = load_state(model, state, metadata, pretrained.path)
    report.path = f"{pretrained.name} ({pretrained.path})" if pretrained.weight_set else report.path
    return report


def adapt_input_conv(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    """Weights for another number of input channels than the model's first conv: summed over the RGB
    channels for one channel; repeated and scaled by 3/C for C channels, so that activations keep their scale
    (timm's `adapt_input_conv`). Returns whether it adapted them."""
    key = "conv1.0.weight" if "conv1.0.weight" in state else "conv1.weight"
    expected = model.state_dict().get(key)
    weight = state.get(key)
    if expected is None or weight is None or weight.shape[1] == expected.shape[1] or weight.shape[1] != 3:
        return False
    chans = expected.shape[1]
    if chans == 1:
        state[key] = weight.sum(dim=1, keepdim=True)
    else:
        repeats = -(-chans // 3)
        state[key] = weight.repeat(1, repeats, 1, 1)[:, :chans] * (3 / chans)
    return True


def _with_channels(metadata: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """A file's metadata after its first conv was adapted: its RGB preprocessing for the model's channels."""
    channels = model.pretrained_cfg.input_size[0] if isinstance(model, (ResNet, FeatureExtractor)) else 3
    try:
        cfg = PretrainedCfg.from_dict(metadata["pretrained_cfg"], base=model.pretrained_cfg)
        return {**metadata, "pretrained_cfg": cfg.with_channels(channels).to_dict()}
    except (KeyError, TypeError, ValueError, ConfigError):  # none, or not usable: load_state says which
        return metadata


def imagenet_class_names() -> list[str]:
    """The 1,000 ImageNet-1k class names in label order, as torchvision ships them with its weights."""
    from torchvision.models import ResNet50_Weights  # the models' weight enums: only when a name is asked for

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def create_model(name: str, pretrained: bool | str = False, features_only: bool = False,
                 out_indices: tuple[int, ...] | None = None, **overrides: Any) -> nn.Module:
    """A model by name, like `timm.create_model`.

    Args:
        name: a name from `list_models()`, "name.tag" (a published weight set: its preprocessing, and its
            weights with `pretrained=True`), or "hf-hub:ORG/REPO" (a model folder on the Hugging Face Hub).
        pretrained: True for the name's (default) weights; or weights to load: a tag, "name.tag",
            "hf-hub:ORG/REPO", a URL or a path. A classifier whose size differs from `num_classes` is left
            freshly initialised and reported.
        features_only: return a backbone whose forward gives each stage's output (a list).
        out_indices: which feature levels to return with `features_only` (0 = stem, 1..4 = stages).
        **overrides: architecture arguments (num_classes, in_chans, cardinality, base_width, stem, avg_down,
            output_stride, drop_path_rate, zero_init_last, global_pool, ...).
    """
    if out_indices is not None and not features_only:
        raise ConfigError("out_indices only applies with features_only=True")
    if name.startswith(HUB_PREFIX):
        model = _from_hub(name[len(HUB_PREFIX):], bool(pretrained), overrides)
    else:
        architecture, _, tag = name.partition(".")
        weight_set = find_weights(name) if tag else None
        if weight_set is not None:  # its head by default (none, for a backbone's weights), as timm does
            overrides = {"num_classes": weight_set.num_classes, **overrides}
        model = build_model(architecture, **overrides)
        if weight_set is not None:
            model.pretrained_cfg = weight_set.pretrained_cfg.with_channels(model.pretrained_cfg.input_size[0])
            pretrained = name if pretrained is True else pretrained
        if pretrained:
            load_pretrained(model, find_pretrained(pretrained, architecture))
    return FeatureExtractor(model, out_indices) if features_only else model


def _from_hub(repo: str, pretrained: bool, overrides: dict[str, Any]) -> ResNet:
    """A model folder on the Hub ("ORG/REPO", "ORG/REPO@revision"): its config.json, and with `pretrained` its
    weights (timm's semantics). Both come from the same snapshot folder of huggingface_hub's cache."""
    what = f"{HUB_PREFIX}{repo}"
    repo, revision = split_hub_spec(repo)
    folder = fetch_hub_file(repo, (CONFIG_FILE,), revision, what).parent
    if pretrained:
        fetch_hub_file(repo, HUB_FILES, revision, what)
    return from_pretrained(folder, weights=pretrained, **overrides)


def save_pretrained(model: nn.Module, directory: str | Path, class_names: list[str] | None = None) -> Path:
    """Write `config.json` (timm's schema: timm loads the folder as its own where it has the architecture),
    `model.safetensors` (with resnets' metadata inside) and a README.md model card into `directory`."""
    if not isinstance(model, ResNet):
        raise CheckpointError(f"a {type(model).__name__} is not a resnets model")
    directory = Path(directory)
    class_names = class_names if class_names is not None else model.class_names
    save_weights(model, directory / WEIGHTS_FILE, class_names)
    atomic_write_json(directory / CONFIG_FILE, timm_config(model, class_names))
    atomic_write_text(directory / CARD_FILE, model_card(model, class_names))
    return directory


def push_to_hub(model: nn.Module, repo_id: str, class_names: list[str] | None = None, *, private: bool = False,
                token: str | None = None, commit_message: str = "Upload model from resnets") -> str:
    """`save_pretrained`'s folder, uploaded to a Hugging Face Hub repo (created if missing) with huggingface_hub;
    its token is the one `hf auth login` stored or HF_TOKEN, unless given. Returns the commit's URL."""
    with tempfile.TemporaryDirectory(prefix="resnets-push-") as folder:
        save_pretrained(model, folder, class_names)
        try:
            huggingface_hub.create_repo(repo_id, private=private, exist_ok=True, token=token)
            commit = huggingface_hub.upload_folder(repo_id=repo_id, folder_path=folder, token=token,
                                                   commit_message=commit_message)
        except (hf_errors.HfHubHTTPError, OSError, ValueError) as e:  # no token, no permission, no network
            raise ResnetsError(f"push to {repo_id} failed ({one_line(e)}); log in with `hf auth login` or set "
                               f"HF_TOKEN") from None
    return str(commit)


def from_pretrained(directory: str | Path, weights: bool = True, **overrides: Any) -> ResNet:
    """A model from a folder (`save_pretrained`'s, timm's `save_for_hf`'s) or "hf-hub:ORG/REPO": architecture,
    preprocessing and class names from config.json, weights from model.safetensors or pytorch_model.bin.
    `overrides` change the architecture (num_classes: the saved head is then left out, and reported)."""
    if str(directory).startswith(HUB_PREFIX):
        return _from_hub(str(directory)[len(HUB_PREFIX):], weights, overrides)
    directory = Path(directory)
    config = read_json_file(directory / CONFIG_FILE)
    if "config" in config and "pretrained_cfg" in config and "model_args" not in config:
        model = build_from_metadata(config, directory / CONFIG_FILE)  # a folder of resnets before timm's schema
    else:
        model = _build_from_timm_config(config, directory / CONFIG_FILE, overrides)
    if weights:
        files = [directory / name for name in HUB_FILES if (directory / name).is_file()]
        if not files:
            raise CheckpointError(f"{directory}: no {WEIGHTS_FILE} or {TORCH_WEIGHTS_FILE} beside config.json")
        state, metadata = read_state_dict(files[0])
        adapt_input_conv(model, state)  # in_chans overridden: the first conv from the saved one
        # config.json speaks for the folder: what it says of preprocessing and classes wins over the file's own
        metadata = {**metadata, "pretrained_cfg": model.pretrained_cfg.to_dict(), "class_names": model.class_names}
        load_state(model, state, metadata, files[0])
    return model


def _build_from_timm_config(config: dict[str, Any], source: Path, overrides: dict[str, Any]) -> ResNet:
    cfg = config_from_timm(config, str(source))
    try:
        cfg = cfg.replace(**overrides)
        check_size(cfg, source, "config with the overrides")
        model = cfg.build(arch_name=resnets_name(config), arch_args=overrides)
    except (ConfigError, TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: {one_line(e)}") from None
    model.pretrained_cfg = pretrained_cfg_from_timm(config, model.pretrained_cfg, str(source))
    model.class_names = labels_from_timm(config, model.num_classes)
    return model


def load_model(weights: str | Path | None = None, model_name: str | None = None, **overrides: Any) -> ResNet:
    """A ready model from a run folder (its best weights), a model folder (save_pretrained, timm's), a weights
    file, "hf-hub:ORG/REPO", or, with `weights` None, the published weights `model_name` names
    ("resnet50.tv2_in1k", or an architecture for its default set).

    Files written by resnets carry their architecture; a bare state dict (torchvision, timm, their training
    checkpoints) needs `model_name` unless it names its architecture itself, and its head size is taken from
    the file. A file is read and verified once."""
    if weights is None:
        if model_name is None:
            raise ConfigError("give weights (a file, folder, run or URL) or the name of published weights")
        name = model_name if "." in model_name else find_weights(model_name).name
        return create_model(name, pretrained=True, **overrides)
    if str(weights).startswith(HUB_PREFIX) or (Path(weights) / CONFIG_FILE).is_file():
        return from_pretrained(weights, **overrides)
    found = find_pretrained(str(weights), model_name)  # a file, or a URL's or a published set's download
    if found.weight_set is not None:  # with its preprocessing and class names
        if model_name and model_name.partition(".")[0] != found.weight_set.architecture:
            raise ConfigError(f"{weights} are {found.weight_set.name}'s weights, not {model_name}'s")
        model = create_model(found.weight_set.name, **overrides)
        load_pretrained(model, found)
        return model
    path = found.path
    state, meta = read_state_dict(path)
    architecture = model_name or (meta.get("arch") if meta.get("arch") in list_models() else None)
    if meta.get("config") is not None and not model_name:
        model = build_from_metadata(meta, path)
    elif architecture:
        head = state.get(CLASSIFIER_PREFIX + "weight")
        if head is not None and "num_classes" not in overrides:
            overrides["num_classes"] = head.shape[0]
        model = create_model(architecture, **overrides)
        adapt_input_conv(model, state)
    else:
        raise CheckpointError(f"{path}: a bare weights file does not say its architecture; pass --model NAME")
    report = load_state(model, state, meta, path)
    if report.skipped and "num_classes" not in overrides:  # a ready model predicts: a fresh head would guess
        raise CheckpointError(f"{path}: its classifier does not fit the {model.num_classes} classes it says it has "
                              f"({', '.join(report.skipped)} missing or of another size)")
    return model


def download(names: list[str]) -> list[Pretrained]:
    """Fetch published weights ahead of use (`resnets download`), e.g. for compute nodes without a network: a
    set's name, an architecture (its default set), "hf-hub:ORG/REPO" (its config.json too, which
    `find_pretrained` fetches with it: a model folder needs it) or a URL."""
    found = []
    for name in names:
        found.append(find_pretrained(name, name.partition(".")[0]))
        if found[-1].weight_set is None and not name.startswith((HUB_PREFIX, "http://", "https://")):
            raise ConfigError(f"{name}: a file here already; `resnets download` fetches published weights, "
                              f"hf-hub: repos and URLs")
    return found
