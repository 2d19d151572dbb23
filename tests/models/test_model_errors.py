"""Mistakes in building a model raise the package's own exceptions, with a message that says how to fix them.

Mistakes on the command line are one-line errors: tests/test_cli.py."""
from __future__ import annotations

import pytest

from resnets.errors import ConfigError, ResnetsError, UnknownModelError
from resnets import create_model
from resnets.models import get_config


@pytest.mark.parametrize("typo, suggestion", [
    ("resnet5O", "resnet50"),
    ("resnext50_32x4", "resnext50_32x4d"),
    ("res2net50_26w4s", "res2net50_26w_4s"),
    ("cifar_resnet21", "cifar_resnet20"),
])
def test_unknown_model_suggests_close_names(typo, suggestion):
    with pytest.raises(UnknownModelError) as err:
        create_model(typo)
    message = str(err.value)
    assert repr(typo) in message
    assert "did you mean" in message and suggestion in message
    assert isinstance(err.value, ResnetsError) and isinstance(err.value, KeyError)


def test_unknown_model_without_close_names_points_to_the_list():
    with pytest.raises(UnknownModelError, match="resnets models"):
        create_model("vit_base_patch16_224")


def test_unknown_argument_lists_valid_keys():
    with pytest.raises(ConfigError) as err:
        create_model("resnet50", num_clases=10)
    message = str(err.value)
    assert "num_clases" in message
    for valid in ("num_classes", "cardinality", "base_width", "output_stride", "drop_path_rate"):
        assert valid in message


def test_unknown_argument_is_not_silently_dropped_by_get_config():
    with pytest.raises(ConfigError, match="widht"):
        get_config("resnext50_32x4d", widht=8)


@pytest.mark.parametrize("overrides, words", [
    (dict(layers=(3, 0, 6, 3)), "layers"),  # a stage with no blocks
    (dict(layers=(3, 4, 6)), "layers"),  # three stage depths for four stage widths
    (dict(output_stride=4), "output_stride"),
    (dict(stem="tiny"), "stem"),
    (dict(block="dense"), "block"),
    (dict(attention="cbam"), "attention"),
    (dict(global_pool="median"), "global_pool"),
    (dict(cardinality=0), "cardinality"),
    (dict(drop_path_rate=1.0), "drop"),
    (dict(num_classes=-1), "num_classes"),
])
def test_bad_architecture_values(overrides, words):
    with pytest.raises(ConfigError, match=words):
        create_model("resnet50", **overrides)


def test_basic_blocks_refuse_groups():
    with pytest.raises(ConfigError, match="basic blocks"):
        create_model("resnet18", cardinality=32, base_width=4)


@pytest.mark.parametrize("out_indices", [(5,), (0, 9), (-6,)])
def test_out_indices_out_of_range(out_indices):
    with pytest.raises(ConfigError) as err:
        create_model("resnet18", features_only=True, out_indices=out_indices)
    assert "out of range" in str(err.value) and "0..4" in str(err.value)


def test_out_indices_need_features_only():
    with pytest.raises(ConfigError, match="features_only"):
        create_model("resnet18", out_indices=(1, 2))
