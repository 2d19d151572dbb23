"""A weights file's architecture metadata is untrusted: checked against its schema (types, ranges, JSON depth,
a parameter count made on the meta device) before anything is built, and refused in one line naming the file
and the field. Before, `layers: [10**7, 3, 3]` built until memory ran out and the others ended in tracebacks."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import resnets
from resnets.errors import CheckpointError
from resnets.models import metadata_schema
from resnets.models.resnet import ResNet
from resnets.models.weights import METADATA_KEY

DEEP_OBJECT = '{"a": ' * 1000 + "1" + "}" * 1000  # Python's json stops at its recursion limit
DEEP_LIST = "[" * 100_000 + "]" * 100_000


def forbid_real_builds(monkeypatch) -> None:
    """From now on a model built for real (not on the meta device, which allocates nothing) fails the test: the
    schema must refuse first. Without this, `layers: [10**7, ...]` would hang the test until memory runs out."""
    real_init = ResNet.__init__

    def init(self, cfg, **kw):
        if torch.get_default_device().type != "meta":
            raise AssertionError(f"built before its metadata was checked: {cfg}")
        real_init(self, cfg, **kw)

    monkeypatch.setattr(ResNet, "__init__", init)


def hostile_weights(tmp_path, change) -> str:
    """A resnets weights file (valid tensors and checksum) whose metadata `change(meta)` edits, or replaces
    with the text it returns."""
    model = resnets.create_model("cifar_resnet20", num_classes=10)
    good = tmp_path / "good.safetensors"
    resnets.save_weights(model, good)
    with safe_open(str(good), "pt") as f:
        header, state = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    meta = copy.deepcopy(json.loads(header[METADATA_KEY]))
    text = change(meta)
    path = tmp_path / "hostile.safetensors"
    save_file(state, str(path), metadata={**header, METADATA_KEY: text if isinstance(text, str) else json.dumps(meta)})
    return str(path)


VARIANTS = {  # name: (change to the metadata, the field the error names)
    "layers 10**7": (lambda m: m["config"].update(layers=[10**7, 3, 3]), "layers"),
    "num_classes ten": (lambda m: m["config"].update(num_classes="ten"), "num_classes"),
    "num_classes 10**12": (lambda m: m["config"].update(num_classes=10**12), "num_classes"),
    "channels 10**6": (lambda m: m["config"].update(channels=[16, 32, 10**6]), "channels"),
    "in_chans 10**9": (lambda m: m["config"].update(in_chans=10**9), "in_chans"),
    "unknown field": (lambda m: m["config"].update(widen=2), "widen"),
    "2.6e9 parameters": (lambda m: m["config"].update(channels=[4096, 4096, 16384]), "parameters"),
    "1000 deep": (lambda m: json.dumps(m)[:-1] + ', "extra": ' + DEEP_OBJECT + "}", "nests deeper"),
    "100000 deep": (lambda m: json.dumps(m)[:-1] + ', "extra": ' + DEEP_LIST + "}", "nests deeper"),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_hostile_architecture_metadata_is_refused_before_building(variant, tmp_path, monkeypatch):
    change, field = VARIANTS[variant]
    path = hostile_weights(tmp_path, change)
    forbid_real_builds(monkeypatch)
    with pytest.raises(CheckpointError) as e:
        resnets.load_model(path)
    assert str(e.value).startswith(path) and field in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_deep_metadata_is_refused_through_pretrained_too(tmp_path):
    """`train --pretrained FILE` reads the file's metadata to take its preprocessing: RecursionError before."""
    path = hostile_weights(tmp_path, lambda m: json.dumps(m)[:-1] + ', "extra": ' + DEEP_OBJECT + "}")
    with pytest.raises(CheckpointError, match="nests deeper"):
        resnets.create_model("cifar_resnet20", num_classes=10, pretrained=path)


def test_a_json_nested_within_python_limit_is_refused_as_deep_as_one_beyond_it():
    """json.loads may or may not reach a nesting (the interpreter's recursion limit decides): both are refused."""
    for text in ('{"a": ' * 100 + "1" + "}" * 100, DEEP_OBJECT):
        with pytest.raises(CheckpointError, match=r"^x\.json: config(: a)? nests deeper than 16 levels$"):
            metadata_schema.parse_json(text, "x.json", "config")


def test_parameters_are_counted_without_allocating():
    cfg = metadata_schema.checked_config({"layers": [2, 2], "channels": [8, 16], "block": "basic", "stem": "cifar",
                                          "num_classes": 3}, "x.json")
    assert metadata_schema.parameter_count(cfg) == sum(p.numel() for p in cfg.build().parameters())
    with pytest.raises(CheckpointError, match="2,000,000,000"):  # 1e6 classes x 4096 features
        metadata_schema.checked_config({"channels": [64, 128, 256, 1024], "num_classes": 10**6}, "x.json")
