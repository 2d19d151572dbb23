"""Model folders that timm and torchvision read as their own, and theirs that resnets reads: the same outputs,
option by option. Small depths (one block a stage) keep the files small; every option still shapes the net."""
from __future__ import annotations

import argparse
import json

import pytest
import timm
import torch
import torchvision
from safetensors.torch import load_file
from timm.models import save_for_hf

import resnets

SMALL = dict(layers=(1, 1, 1, 1))
OPTIONS = {  # resnets name and options: what each case exercises in the mapping to timm's arguments
    "plain": ("resnet50", {}),
    "output_stride": ("resnet50", dict(output_stride=16)),
    "global_pool": ("resnet18", dict(global_pool="max")),
    "catavgmax": ("resnet18", dict(global_pool="catavgmax")),
    "deep stem, avg_down": ("resnet50", dict(stem="deep", stem_width=32, avg_down=True)),
    "resnet-d": ("resnet50d", dict(output_stride=8)),
    "cardinality": ("resnext50_32x4d", dict(cardinality=8, base_width=14)),
    "in_chans": ("resnet18", dict(in_chans=1)),
    "num_classes": ("resnet18", dict(num_classes=7)),
    "drop_path": ("resnet18", dict(drop_path_rate=0.1, drop_rate=0.2)),
    "se": ("seresnext50_32x4d", {}),
    "res2net": ("res2net50_14w_8s", {}),
    "res2next": ("res2next50", dict(output_stride=16)),
    "basic se": ("resnet18", dict(attention="se")),
    "block changed": ("resnet18", dict(block="bottleneck")),
    "se removed": ("seresnet50", dict(attention=None)),
    "res2net block changed": ("res2net50_26w_4s", dict(block="bottleneck")),
}


def _input(model) -> torch.Tensor:
    return torch.randn(2, model.pretrained_cfg.input_size[0], 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("case", OPTIONS)
def test_a_saved_folder_is_timms_own(case, tmp_path, randomize_bn, assert_close):
    name, options = OPTIONS[case]
    ours = randomize_bn(resnets.create_model(name, **SMALL, **options)).eval()
    folder = resnets.save_pretrained(ours, tmp_path / "folder", class_names=None)
    theirs = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    x = _input(ours)
    with torch.no_grad():
        assert_close(theirs(x), ours(x))
    assert theirs.pretrained_cfg["input_size"] == ours.pretrained_cfg.input_size
    back = resnets.from_pretrained(folder).eval()
    with torch.no_grad():
        assert torch.equal(back(x), ours(x))
    assert back.cfg == ours.cfg


@pytest.mark.parametrize("name,options", [("resnet50d", dict(num_classes=5, output_stride=16, global_pool="max")),
                                          ("res2next50", {}), ("seresnet50", dict(in_chans=1, drop_path_rate=0.1)),
                                          ("resnext50_32x4d", dict(num_classes=4))])
def test_a_folder_timm_saves_loads_in_resnets(name, options, tmp_path, randomize_bn, assert_close):
    theirs = randomize_bn(timm.create_model(name, layers=[1, 1, 1, 1], **options)).eval()
    labels = [f"class {i}" for i in range(theirs.num_classes)]
    save_for_hf(theirs, str(tmp_path / "folder"), model_config=dict(label_names=labels))
    for ours in (resnets.from_pretrained(tmp_path / "folder"), resnets.load_model(tmp_path / "folder")):
        ours.eval()
        x = _input(ours)
        with torch.no_grad():
            assert_close(ours(x), theirs(x))
        assert ours.class_names == labels and ours.arch_name == name
        assert ours.pretrained_cfg.interpolation == theirs.pretrained_cfg["interpolation"]


def test_config_json_speaks_timms_schema_and_says_when_timm_cannot_build_the_model(tmp_path):
    model = resnets.create_model("resnet50d", num_classes=3, output_stride=16, **SMALL)
    config = json.loads((resnets.save_pretrained(model, tmp_path / "a", ["x", "y", "z"]) / "config.json").read_text())
    assert config["architecture"] == "resnet50d" and config["label_names"] == ["x", "y", "z"]
    assert config["model_args"]["output_stride"] == 16 and config["model_args"]["stem_type"] == "deep"
    assert config["pretrained_cfg"]["first_conv"] == "conv1.0" and config["num_features"] == 2048
    assert "timm.create_model" in (tmp_path / "a" / "README.md").read_text()
    cifar = resnets.cifar_resnet(20)
    config = json.loads((resnets.save_pretrained(cifar, tmp_path / "b") / "config.json").read_text())
    assert "model_args" not in config and "CIFAR stem" in config["resnets"]["timm"]
    assert "timm cannot build it (the CIFAR stem" in (tmp_path / "b" / "README.md").read_text()
    assert resnets.from_pretrained(tmp_path / "b").cfg == cifar.cfg


@pytest.mark.parametrize("name", ["resnet18", "resnext50_32x4d", "wide_resnet50_2"])
def test_torchvision_loads_a_saved_folder_strictly(name, tmp_path, randomize_bn, assert_close):
    ours = randomize_bn(resnets.create_model(name)).eval()
    folder = resnets.save_pretrained(ours, tmp_path / "folder")
    theirs = torchvision.models.get_model(name)
    theirs.load_state_dict(load_file(folder / "model.safetensors"), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert_close(theirs.eval()(x), ours(x))


def test_training_checkpoints_of_timm_and_torchvision_load_with_their_namespace(tmp_path, randomize_bn):
    model = randomize_bn(resnets.create_model("resnet18", num_classes=5)).eval()
    state = model.state_dict()
    args = argparse.Namespace(model="resnet18", lr=0.1, epochs=90)
    torch.save({"epoch": 3, "arch": "resnet18", "state_dict": state, "optimizer": {}, "args": args, "metric": 71.0},
               tmp_path / "model_best.pth.tar")  # timm's train.py
    torch.save({"model": state, "optimizer": {}, "lr_scheduler": {}, "epoch": 3, "args": args},
               tmp_path / "checkpoint.pth")  # torchvision's references/classification
    x = torch.randn(1, 3, 64, 64)
    for loaded in (resnets.load_model(tmp_path / "model_best.pth.tar"),  # timm names its architecture: "arch"
                   resnets.load_model(tmp_path / "checkpoint.pth", "resnet18")):
        with torch.no_grad():
            assert torch.equal(loaded.eval()(x), model(x))
    torch.save({"state_dict": state, "args": argparse.Namespace(path=tmp_path)}, tmp_path / "other.pth")
    with pytest.raises(resnets.CheckpointError, match="refused, it holds pickled objects"):
        resnets.load_model(tmp_path / "other.pth", "resnet18")  # a Path inside the Namespace: not allowed
