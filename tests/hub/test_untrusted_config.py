"""A model folder's config.json (timm's schema, resnets' own section in it) is untrusted: checked against the
architecture schema before anything is built, read only when it is a regular file of bounded size, and refused
in one line naming the file and the field."""
from __future__ import annotations

import json
import os

import pytest
import torch

import resnets
from resnets.errors import CheckpointError
from resnets.models.resnet import ResNet


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = resnets.create_model("cifar_resnet20", num_classes=10)
    folder = resnets.save_pretrained(model, tmp_path_factory.mktemp("saved"))
    return json.loads((folder / "config.json").read_text()), (folder / "model.safetensors").read_bytes()


def folder_with(tmp_path, saved, config) -> str:
    """A save_pretrained folder whose config.json is `config` (a dict, or the text itself)."""
    (tmp_path / "model.safetensors").write_bytes(saved[1])
    text = config if isinstance(config, str) else json.dumps(config)
    (tmp_path / "config.json").write_text(text)
    return str(tmp_path)


def timm_only(config: dict, **changes) -> dict:
    """The config as timm alone would have written it (no resnets section), for resnet18."""
    config = {k: v for k, v in config.items() if k not in ("resnets", "model_args")}
    return {**config, "architecture": "resnet18", **changes}


def own(field, value):
    def change(config):
        config["resnets"]["config"][field] = value
        return config
    return change


VARIANTS = {  # name: (the config.json, the field the error names)
    "resnets layers 10**7": (own("layers", [10**7, 3, 3]), "layers"),
    "resnets num_classes ten": (own("num_classes", "ten"), "num_classes"),
    "resnets num_classes 10**12": (own("num_classes", 10**12), "num_classes"),
    "resnets stem_width 10**9": (own("stem_width", 10**9), "stem_width"),
    "timm layers 10**7": (lambda c: timm_only(c, model_args={"layers": [10**7, 2, 2, 2]}), "layers"),
    "timm num_classes ten": (lambda c: timm_only(c, num_classes="ten"), "num_classes"),
    "timm base_width 10**9": (lambda c: timm_only(c, architecture="resnet50", model_args={"base_width": 10**9}),
                              "base_width"),
    "1000 deep": (lambda c: "[" * 1000 + "]" * 1000, "nests deeper"),
    "100000 deep": (lambda c: '{"a":' * 100_000 + "1" + "}" * 100_000, "nests deeper"),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_hostile_config_json_is_refused_before_building(variant, saved, tmp_path, monkeypatch):
    change, field = VARIANTS[variant]
    folder = folder_with(tmp_path, saved, change(json.loads(json.dumps(saved[0]))))
    real_init = ResNet.__init__

    def init(self, cfg, **kw):  # building for real before the check would allocate (or hang, for 10**7 blocks)
        assert torch.get_default_device().type == "meta", f"built before config.json was checked: {cfg}"
        real_init(self, cfg, **kw)

    monkeypatch.setattr(ResNet, "__init__", init)
    with pytest.raises(CheckpointError) as e:
        resnets.from_pretrained(folder)
    message = str(e.value)
    assert message.startswith(os.path.join(folder, "config.json")) and field in message and "\n" not in message


def test_a_config_json_too_large_is_not_read(saved, tmp_path):
    folder = folder_with(tmp_path, saved, saved[0])
    with open(os.path.join(folder, "config.json"), "r+b") as f:
        f.truncate(64 * 2**20)  # sparse: 64 MiB that take no disk
    with pytest.raises(CheckpointError, match="67,108,864 bytes, more than a config holds"):
        resnets.from_pretrained(folder)


@pytest.mark.timeout(20)
def test_a_config_json_that_is_a_fifo_is_not_opened(saved, tmp_path):
    """Opening a FIFO for reading blocks until a writer comes: it used to hang `predict --weights FOLDER`."""
    (tmp_path / "model.safetensors").write_bytes(saved[1])
    os.mkfifo(tmp_path / "config.json")
    with pytest.raises(CheckpointError, match="config.json: not a regular file"):
        resnets.from_pretrained(tmp_path)
