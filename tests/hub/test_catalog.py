"""The catalog of published weights, checked offline: every entry builds, every published set is in it."""
from __future__ import annotations

import timm
import torch
import torchvision

import resnets
from resnets.hub.catalog import catalog, find_weights, list_weights


def test_every_entry_names_an_architecture_that_builds_with_its_classes_and_preprocessing():
    assert len(catalog()) >= 100
    for name, ws in catalog().items():
        assert ws.name == name and ws.architecture in resnets.list_models(), name
        with torch.device("meta"):
            model = resnets.build_model(ws.architecture, num_classes=ws.num_classes)
        assert model.num_classes == ws.num_classes
        cfg = ws.pretrained_cfg
        assert cfg.input_size[0] == 3 and cfg.input_size[1] >= 32 and cfg.interpolation in ("bilinear", "bicubic")
        assert len(cfg.mean) == len(cfg.std) == 3 and 0 < cfg.crop_pct <= 1
        assert ws.source.startswith(("hf-hub:timm/", "https://download.pytorch.org/models/")), name
        assert ws.labels == ("imagenet-1k" if ws.num_classes == 1000 else "")
        assert ws.top1 is None or 50 < ws.top1 < 90
    defaults = [ws.architecture for ws in catalog().values() if ws.default]
    assert len(defaults) == len(set(defaults)) == len({ws.architecture for ws in catalog().values()})


def test_every_set_timm_publishes_for_a_resnets_architecture_is_in_the_catalog():
    ours = set(resnets.list_models())
    published = {name for name in timm.list_pretrained() if name.partition(".")[0] in ours}
    assert published - set(catalog()) == set()


def test_every_torchvision_weight_set_is_in_the_catalog_with_torchvisions_file():
    for arch in resnets.list_models():
        if arch not in torchvision.models.list_models(module=torchvision.models):
            continue
        for weights in torchvision.models.get_model_weights(arch):
            tag = {"IMAGENET1K_V1": "tv_in1k", "IMAGENET1K_V2": "tv2_in1k"}[weights.name]
            ws = catalog()[f"{arch}.{tag}"]
            assert ws.source == weights.url and weights.url.split("-")[-1].startswith(ws.sha256)
            assert ws.num_classes == len(weights.meta["categories"]) == 1000


def test_lookup_by_name_tag_and_architecture():
    assert find_weights("resnet50").name == "resnet50.a1_in1k"  # timm's default
    assert find_weights("resnet50.tv2_in1k").pretrained_cfg.test_input_size == (3, 224, 224)
    assert [ws.name for ws in list_weights("resnet18")] == [ws.name for ws in list_weights("resnet18.*")]
    assert all(ws.architecture.startswith("resnext") for ws in list_weights("resnext*"))
