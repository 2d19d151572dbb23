"""The command line explains itself: `resnets --help` with an example per command, `resnets train --help` in
groups with every option's help, real default and choices, one `--device` wherever a model runs."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from resnets.cli import COMMANDS, build_parser, main
from resnets.training.config import GROUPS, TrainConfig

FREE_TEXT = {"data_dir", "model", "pretrained", "device", "cache_dir", "output", "name", "resume"}  # no fixed set


def test_every_train_option_has_help_a_group_and_for_an_enumeration_its_choices():
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata["help"].strip(), f.name
        assert f.metadata["group"] in dict(GROUPS), f.name
        if f.type in ("str", "str | None") and f.name not in FREE_TEXT:
            assert f.metadata["choices"], f"{f.name} takes one of a set of values: it needs choices"
        if f.metadata["choices"]:
            assert getattr(TrainConfig(), f.name) in f.metadata["choices"], f.name


def test_train_help_is_grouped_and_shows_real_defaults(capsys):
    assert main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    for _, title in GROUPS:
        assert f"\n{title}:\n" in text
    for f in dataclasses.fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in text
    assert "[default: None]" not in text and "[default: sgd]" in text and "[default: 30 60 90]" in text
    assert "{sgd,nesterov,adamw,adam}" in text and "[default: off]" in text
    # the order of the groups: a reader finds the data first and the logging last
    assert text.index("\ndata:\n") < text.index("\noptimisation:\n") < text.index("\nlogging:\n")


def test_a_typo_in_an_enumeration_names_the_flag_and_the_choices(capsys):
    assert main(["train", "--opt", "sgdd"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("resnets train: error: argument --opt: invalid choice: 'sgdd' (choose from 'sgd', ")
    assert err.endswith("(see `resnets train --help`)\n") and len(err.splitlines()) == 1


def test_top_level_help_lists_every_command_with_an_example_and_loads_no_command():
    code = ("import sys\nfrom resnets.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('LOADED', [m for m in sys.modules if m.startswith('resnets.') and m.endswith('commands')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for name, (_, help_line, example) in COMMANDS.items():
        assert name in out and help_line.split()[0] in out and example in out
        assert example.startswith(f"resnets {name} ")
    assert out.strip().endswith("LOADED []")  # `resnets --help` waits for no command's imports


@pytest.mark.parametrize("command", ["train", "eval", "predict", "export", "cam", "bench"])
def test_every_command_that_runs_a_model_takes_one_device_flag(command):
    parser = build_parser(command)
    required = {"eval": ["--weights", "w", "--data-dir", "d"], "predict": ["--weights", "w", "x.jpg"],
                "export": ["--weights", "w", "--format", "onnx", "--output", "m.onnx"],
                "cam": ["--weights", "w", "x.jpg"]}.get(command, [])
    args = parser.parse_args([command, *required, "--device", "cuda:1"])
    assert args.device == "cuda:1"
    assert "cuda:N" in parser.commands[command].format_help()


@pytest.mark.parametrize("argv", [["predict", "--weights", "w", "--device", "gpu", "x.jpg"],
                                  ["bench", "--device", "tpu"]])
def test_a_device_that_is_none_is_one_line(argv, capsys, tmp_path):
    argv = [str(tmp_path / a) if a in ("w", "x.jpg") else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "is not a device" in err and "Traceback" not in err
