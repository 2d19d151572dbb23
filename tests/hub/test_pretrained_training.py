"""`resnets train --pretrained` by name: the published set is fetched, its head replaced for the folder's
classes (and said so), and the run normalises images as the set was trained."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from PIL import Image

import resnets
from resnets.cli import main
from resnets.hub.catalog import catalog


def pets(root, per_class: int, side: int) -> None:
    """A folder of two classes, cat and dog, of random images."""
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")


def test_training_from_an_architectures_default_set(published, tmp_path, monkeypatch, capsys):
    sets = catalog()
    half = dataclasses.replace(sets["resnet18.a1_in1k"].pretrained_cfg, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    monkeypatch.setitem(sets, "resnet18.a1_in1k", dataclasses.replace(sets["resnet18.a1_in1k"], pretrained_cfg=half))
    pets(tmp_path / "data", per_class=6, side=40)
    code = main(["train", "--data-dir", str(tmp_path / "data"), "--model", "resnet18", "--pretrained",
                 "--img-size", "32", "--epochs", "1", "-b", "4", "-j", "0", "--output", str(tmp_path / "runs"),
                 "--no-progress"])
    assert code == 0
    err = capsys.readouterr().err
    assert "loaded resnet18.a1_in1k" in err and "left freshly initialised" in err and "fc.weight" in err
    run = next((tmp_path / "runs").iterdir())
    model = resnets.load_model(run)
    assert model.class_names == ["cat", "dog"] and model.pretrained_cfg.mean == (0.5, 0.5, 0.5)
    assert model.pretrained_cfg.input_size == (3, 32, 32) and model.pretrained_cfg.interpolation == "bicubic"
    last = resnets.load_model(run / "last.safetensors")
    # one epoch of SGD moved the backbone, but it started from the published weights, not from scratch
    moved = (last.conv1.weight - published.state["conv1.weight"]).abs().mean()
    assert moved < 0.5 * published.state["conv1.weight"].abs().mean()
    assert not torch.equal(last.conv1.weight, published.state["conv1.weight"])


def test_training_from_a_hub_model_folder_uses_its_preprocessing(hub, tmp_path):
    model = resnets.create_model("resnet18", num_classes=2)
    model.pretrained_cfg = model.pretrained_cfg.replace(mean=(0.25, 0.5, 0.75), std=(0.2, 0.3, 0.4))
    folder = resnets.save_pretrained(model, tmp_path / "folder", ["cat", "dog"])
    for name in ("config.json", "model.safetensors"):
        hub.publish("me/pets", name, (folder / name).read_bytes())
    pets(tmp_path / "data", per_class=4, side=20)
    result = resnets.train(data_dir=str(tmp_path / "data"), model="resnet18", pretrained="hf-hub:me/pets", img_size=32,
                           epochs=1, batch_size=4, workers=0, output=str(tmp_path / "runs"), progress=False)
    trained = resnets.load_model(result.run_dir)
    assert trained.pretrained_cfg.mean == (0.25, 0.5, 0.75) and trained.pretrained_cfg.std == (0.2, 0.3, 0.4)
