"""A model carries its own metadata (architecture name, preprocessing, class names), however it was built, and
every model works with predict, export and save_pretrained as it is."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import resnets
from resnets.errors import CheckpointError, ConfigError
from resnets.fileio import content_digest
from resnets.export.pipeline import export_model, read_export_metadata
from resnets.inference.predict import predict_images
from resnets.models import weights
from resnets.models.pretrained_cfg import PretrainedCfg

BUILT = {  # every way to build a model, the bug report's among them (cifar_resnet and a config's build)
    "create_model": lambda: resnets.create_model("cifar_resnet20"),
    "cifar_resnet": lambda: resnets.cifar_resnet(8),
    "cifar_resnext": lambda: resnets.cifar_resnext(11, cardinality=2, base_width=4, widen_factor=1),
    "config.build": lambda: resnets.ResNetConfig(block="basic", layers=(1, 1), channels=(8, 16), stem="cifar",
                                                 num_classes=3).build(),
}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = [folder / f"{i}.png" for i in range(3)]
    for path in paths:
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
    return paths


@pytest.mark.parametrize("how", BUILT)
def test_every_model_carries_its_preprocessing_and_predicts(how, images):
    model = BUILT[how]()
    assert isinstance(model.pretrained_cfg, PretrainedCfg) and model.pretrained_cfg.input_size == (3, 32, 32)
    assert model.class_names is None and model.labels() == [str(i) for i in range(model.num_classes)]
    predictions = predict_images(model, images, topk=2, device="cpu")  # raised AttributeError before
    assert [p.file for p in predictions] == [str(p) for p in images]
    assert all(len(p.classes) == 2 and p.classes[0] in model.labels() for p in predictions)


@pytest.mark.parametrize("how", BUILT)
def test_every_model_round_trips_through_save_pretrained_and_export(how, tmp_path):
    model = BUILT[how]().eval()
    model.class_names = [f"class {i}" for i in range(model.num_classes)]
    x = torch.randn(2, 3, 32, 32)
    folder = resnets.save_pretrained(model, tmp_path / "folder")
    loaded = resnets.from_pretrained(folder).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    assert loaded.pretrained_cfg == model.pretrained_cfg and loaded.class_names == model.class_names
    assert loaded.cfg == model.cfg and loaded.arch_name == model.arch_name
    result = export_model(model, tmp_path / "model.pt2", "pt2")
    meta = read_export_metadata(result.path)
    assert meta["class_names"] == model.class_names and meta["pretrained_cfg"]["input_size"] == [3, 32, 32]


def test_a_registered_model_knows_its_name_and_arguments():
    model = resnets.create_model("resnet18", num_classes=7, drop_rate=0.1)
    assert (model.arch_name, model.arch_args) == ("resnet18", {"num_classes": 7, "drop_rate": 0.1})
    features = resnets.create_model("resnet18", features_only=True)
    assert features.arch_name == "resnet18" and features.pretrained_cfg == model.pretrained_cfg


def test_the_preprocessing_reads_as_timms_mapping():
    timm_data = pytest.importorskip("timm.data")
    model = resnets.create_model("resnet50")
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224) and cfg.get("crop_pct") == 0.875 and cfg.get("url") is None
    assert dict(cfg) == {**cfg.to_dict(), "input_size": (3, 224, 224), "mean": cfg.mean, "std": cfg.std}
    resolved = timm_data.resolve_model_data_config(model)  # timm's own reader of a model's preprocessing
    assert resolved["input_size"] == (3, 224, 224) and resolved["interpolation"] == "bilinear"
    assert resolved["mean"] == cfg.mean and resolved["crop_pct"] == 0.875


@pytest.mark.parametrize("bad", [dict(input_size=(3, 0, 224)), dict(mean=(0.5, 0.5)), dict(std=(0.2, 0.0, 0.2)),
                                 dict(crop_pct=float("nan")), dict(interpolation="lanczos9"),
                                 dict(input_size="224")])
def test_preprocessing_out_of_its_domain_is_refused(bad):
    with pytest.raises(ConfigError, match="pretrained_cfg"):
        PretrainedCfg().replace(**bad)


def test_class_names_must_fit_the_head_and_a_new_head_drops_them(tmp_path):
    model = resnets.cifar_resnet(8, num_classes=3)
    with pytest.raises(ConfigError, match="2 class names for a classifier of 3 classes"):
        model.class_names = ["a", "b"]
    model.class_names = ["a", "b", "c"]
    model.reset_classifier(3)
    assert model.class_names == ["a", "b", "c"]  # the same classes
    model.reset_classifier(5)
    assert model.class_names is None  # other classes: the old names would be wrong
    # A file whose names contradict its own head is damaged (or hostile): refused, not believed
    source = resnets.cifar_resnet(8, num_classes=3)
    tensors = {k: v.contiguous() for k, v in source.state_dict().items()}
    meta = {**weights.model_metadata(source), "class_names": ["a", "b"]}
    save_file(tensors, tmp_path / "bad.safetensors", metadata={"format": "pt", "resnets": json.dumps(meta),
                                                               "sha256": content_digest(tensors)})
    with pytest.raises(CheckpointError, match="bad.safetensors: .*2 class names"):
        resnets.load_model(tmp_path / "bad.safetensors")


def test_a_weights_file_is_read_once_by_load_model(tmp_path, monkeypatch):
    path = resnets.save_weights(resnets.cifar_resnet(8), tmp_path / "w.safetensors")
    opened = []
    real = weights.safe_open
    monkeypatch.setattr(weights, "safe_open", lambda *args: opened.append(args[0]) or real(*args))
    resnets.load_model(path)
    assert opened == [str(path)]  # it read and verified the file twice before
