"""Model folders in the format timm's `save_for_hf` writes and `timm.create_model("local-dir:DIR")` /
`"hf-hub:REPO"` reads: config.json with `architecture`, `num_classes`, `num_features`, `global_pool`,
`model_args` (keyword arguments of timm's model function), `label_names` and `pretrained_cfg` (timm's keys).
resnets adds its own complete architecture under "resnets", so that what timm cannot build still round-trips.

The mapping between a resnets `ResNetConfig` and timm's `ResNet` arguments lives here, in both directions."""
from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import CheckpointError, ConfigError
from ..models.blocks import EXPANSION
from ..models.metadata_schema import checked_config
from ..models.pretrained_cfg import PretrainedCfg
from ..models.registry import get_config, list_models
from ..models.resnet import ResNet, ResNetConfig

RESNETS_KEY = "resnets"
# timm's model function for each (block, attention) when the model's own name is not one of timm's
TIMM_BASE = {("basic", None): "resnet18", ("basic", "se"): "seresnet18", ("bottleneck", None): "resnet50",
             ("bottleneck", "se"): "seresnet50", ("res2", None): "res2net50_26w_4s"}
STEM_TYPES = {"plain": "", "deep": "deep"}  # resnets' stem -> timm's stem_type
# ResNetConfig fields timm's ResNet takes under the same name
SAME_NAME = ("layers", "channels", "cardinality", "base_width", "stem_width", "avg_down", "output_stride",
             "global_pool", "num_classes", "in_chans", "drop_rate", "drop_path_rate", "zero_init_last")


def timm_unsupported(cfg: ResNetConfig) -> str | None:
    """Why timm's ResNet cannot build `cfg`, or None when it can."""
    if cfg.stem == "cifar" or cfg.zero_pad_shortcut:
        return "the CIFAR stem and parameter-free shortcuts are not timm options"
    if cfg.expansion not in (None, EXPANSION[cfg.block]):
        return f"an expansion of {cfg.expansion} (timm's blocks fix theirs at {EXPANSION[cfg.block]})"
    if (cfg.block, cfg.attention) not in TIMM_BASE:
        return "timm's Res2Net block takes no SE attention"
    return None


def timm_model_args(cfg: ResNetConfig) -> dict[str, Any]:
    """timm's ResNet keyword arguments that build exactly `cfg` (with `timm_unsupported(cfg)` None)."""
    args: dict[str, Any] = {name: getattr(cfg, name) for name in SAME_NAME}
    args.update(layers=list(cfg.layers), channels=list(cfg.channels), stem_type=STEM_TYPES[cfg.stem])
    block_args = {}
    if cfg.block == "res2":
        block_args["scale"] = cfg.scale
    if cfg.attention:
        block_args["attn_layer"] = cfg.attention
    if block_args:  # replaces the model function's own block_args: say all of them
        args["block_args"] = block_args
    return args


def _timm_architecture(model: ResNet, unsupported: str) -> str:
    """The name config.json gives timm: the model's own where timm has it and the model is still of its kind
    (block and attention: model_args carry the rest), else timm's generic builder of that kind. For a model timm
    cannot build, a name timm does not have: any of its own would build another network."""
    cfg = model.cfg
    if unsupported:
        return f"resnets-{model.arch_name or 'custom'}"
    if model.arch_name in timm_names():
        registered = get_config(model.arch_name)
        if (registered.block, registered.attention) == (cfg.block, cfg.attention):
            return model.arch_name
    return TIMM_BASE[(cfg.block, cfg.attention)]


def timm_config(model: ResNet, class_names: list[str] | None) -> dict[str, Any]:
    """config.json for `model`, in timm's schema plus resnets' own architecture."""
    cfg = model.cfg
    unsupported = timm_unsupported(cfg)
    architecture = _timm_architecture(model, unsupported)
    pretrained_cfg = {**model.pretrained_cfg.to_dict(), "crop_mode": "center", "num_classes": model.num_classes,
                      "first_conv": "conv1.0" if cfg.stem == "deep" else "conv1", "classifier": "fc"}
    config: dict[str, Any] = {"architecture": architecture, "num_classes": model.num_classes,
                              "num_features": model.num_features, "global_pool": cfg.global_pool}
    if class_names:
        config["label_names"] = list(class_names)
    if not unsupported:
        config["model_args"] = timm_model_args(cfg)
    config["pretrained_cfg"] = pretrained_cfg
    config[RESNETS_KEY] = {"architecture": model.arch_name, "args": model.arch_args,
                           "config": dataclasses.asdict(cfg), "timm": unsupported or "builds it"}
    return config


def timm_names() -> set[str]:
    """resnets' names that are timm's too, with the same architecture: all but the CIFAR nets and SE-Res2Net."""
    return {name for name in list_models() if timm_unsupported(get_config(name)) is None}


def config_from_timm(config: dict[str, Any], source: str) -> ResNetConfig:
    """The ResNetConfig of a config.json timm wrote (or resnets: its own section wins)."""
    own = config.get(RESNETS_KEY)
    if isinstance(own, dict) and isinstance(own.get("config"), dict):
        return _config_from_fields(own["config"], source)
    architecture = config.get("architecture")
    if not isinstance(architecture, str) or architecture not in list_models():
        raise CheckpointError(f"{source}: architecture {architecture!r} is not one resnets has (`resnets models`)")
    args = config.get("model_args") or {}
    if not isinstance(args, dict):
        raise CheckpointError(f"{source}: model_args is not a mapping")
    fields = _fields_from_timm_args(args, source)
    if "num_classes" in config and "num_classes" not in fields:
        fields["num_classes"] = config["num_classes"]
    return checked_config(fields, source, f"model_args of {architecture}", base=get_config(architecture))


def resnets_name(config: dict[str, Any]) -> str | None:
    """The registered name a config.json's model was built as: resnets' own record of it, else timm's
    architecture when resnets has it too."""
    own = config.get(RESNETS_KEY)
    name = own.get("architecture") if isinstance(own, dict) else config.get("architecture")
    return name if isinstance(name, str) and name in list_models() else None


def _fields_from_timm_args(args: dict[str, Any], source: str) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for key, value in args.items():
        if key in SAME_NAME:
            fields[key] = tuple(value) if isinstance(value, list) else value
        elif key == "stem_type":
            stems = {timm: ours for ours, timm in STEM_TYPES.items()}
            if value not in stems:
                raise CheckpointError(f"{source}: timm's stem_type {value!r} has no resnets equivalent")
            fields["stem"] = stems[value]
        elif key == "block_args" and isinstance(value, dict) and set(value) <= {"scale", "attn_layer"}:
            fields.update({"scale": value["scale"]} if "scale" in value else {})
            fields.update({"attention": value["attn_layer"]} if "attn_layer" in value else {})
        elif key not in ("pretrained_cfg_overlay",):
            raise CheckpointError(f"{source}: timm's model argument {key}={value!r} has no resnets equivalent")
    return fields


def _config_from_fields(fields: dict[str, Any], source: str) -> ResNetConfig:
    return checked_config(fields, source, f"{RESNETS_KEY}.config")


def labels_from_timm(config: dict[str, Any], num_classes: int) -> list[str] | None:
    """timm's label_names: a list, or a mapping from class index to name (with gaps there are no names)."""
    names = config.get("label_names", (config.get("pretrained_cfg") or {}).get("label_names"))
    if isinstance(names, dict):
        try:
            names = [names[key] for key in sorted(names, key=int)] if len(names) == num_classes else None
        except (TypeError, ValueError):
            names = None
    if isinstance(names, list) and len(names) == num_classes and all(isinstance(n, (str, int)) for n in names):
        return [str(n) for n in names]
    return None


def pretrained_cfg_from_timm(config: dict[str, Any], base: PretrainedCfg, source: str) -> PretrainedCfg:
    values = config.get("pretrained_cfg") or {}
    try:
        if not isinstance(values, dict):
            raise ConfigError("pretrained_cfg is not a mapping")
        # for the model's channels: in_chans may be overridden (its first conv is then adapted, load_state)
        return PretrainedCfg.from_dict(values, base=base).with_channels(base.input_size[0])
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{source}: {e}") from None


def model_card(model: ResNet, class_names: list[str] | None) -> str:
    """README.md of a saved folder: what it is, how to load it with resnets and with timm."""
    cfg, name = model.cfg, model.arch_name or "a resnets model"
    unsupported = timm_unsupported(cfg)
    pre = model.pretrained_cfg
    timm_line = (f"timm cannot build it ({unsupported}): load it with resnets." if unsupported else
                 "```python\nimport timm\nmodel = timm.create_model(\"local-dir:PATH\", pretrained=True)  # or "
                 "\"hf-hub:ORG/REPO\"\n```")
    classes = f"{model.num_classes} classes" + (f": {', '.join(class_names[:10])}"
                                                + (", ..." if len(class_names) > 10 else "") if class_names else "")
    return (f"---\nlibrary_name: timm\ntags:\n- image-classification\n- resnets\n---\n# {name}\n\n"
            f"An image classifier of the ResNet family saved by resnets, {classes}.\n\n"
            f"- Input: {pre.input_size[0]} channels, {pre.input_size[1]}x{pre.input_size[2]}, resized by crop_pct "
            f"{pre.crop_pct} ({pre.interpolation}), normalised with mean {list(pre.mean)} and std {list(pre.std)}\n"
            f"- Architecture: {cfg.block} blocks, layers {list(cfg.layers)}, cardinality {cfg.cardinality}, "
            f"base width {cfg.base_width}, {cfg.stem} stem, output stride {cfg.output_stride}\n\n"
            f"## Load it\n\n```python\nimport resnets\nmodel = resnets.from_pretrained(\"PATH\")\n```\n\n"
            f"{timm_line}\n")
