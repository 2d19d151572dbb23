"""User mistakes raise the package's own exceptions, with a message that says how to fix them."""
from __future__ import annotations

import pytest

from resnets.errors import ConfigError, ResnetsError, UnknownModelError
from resnets.models import create_model, get_config


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


def test_pretrained_true_is_refused():
    with pytest.raises(ConfigError, match="path"):
        create_model("resnet50", pretrained=True)


@pytest.mark.parametrize("out_indices", [(5,), (0, 9), (-6,)])
def test_out_indices_out_of_range(out_indices):
    with pytest.raises(ConfigError) as err:
        create_model("resnet18", features_only=True, out_indices=out_indices)
    assert "out of range" in str(err.value) and "0..4" in str(err.value)


def test_out_indices_need_features_only():
    with pytest.raises(ConfigError, match="features_only"):
        create_model("resnet18", out_indices=(1, 2))


def test_a_usage_mistake_is_one_line_naming_the_help(capsys):
    """argparse printed the whole usage first: 39 lines for `train`."""
    from resnets.cli import main

    code = main(["train", "--epochs", "1e9"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == "resnets train: error: argument --epochs: invalid int value: '1e9' (see `resnets train --help`)\n"


def test_a_path_that_cannot_be_written_is_one_line_before_the_work(tmp_path, capsys):
    from resnets.cli import main

    (tmp_path / "afile").write_text("x")
    folder = tmp_path / "folder"
    folder.mkdir()
    for json_path, needle in ((folder, "is a folder"), (tmp_path / "afile" / "r.json", "is not a folder")):
        # --steps 0 would fail in the benchmark itself: the path is refused before it
        assert main(["bench", "--device", "cpu", "--steps", "0", "--json", str(json_path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err and "--json" in err, err
    assert main(["train", "--output", str(tmp_path / "afile"), "--epochs", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "afile" in err and "Traceback" not in err, err
    assert (tmp_path / "afile").read_text() == "x"
