"""A size whose activations cannot fit is refused before anything is allocated or read, in one line naming the
flag (or the weights' input_size) and what could fit: `--img-size 20000` ended in the allocator's traceback
in eval and export, and weights whose preprocessing says 30000 px did so in predict and cam.

The memory is set to 2 GiB here, and each step after the check fails the test if it is reached: these sizes
must never get as far as decoding an image."""
from __future__ import annotations

import pytest

import resnets
from resnets.analysis import memory
from resnets.export import formats
from resnets.inference import cam, evaluate, predict


@pytest.fixture
def two_gib(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 2 * 2**30)


def never(what: str):
    def reached(*args, **kwargs):
        raise AssertionError(f"{what} reached: the size was not checked first")
    return reached


@pytest.fixture
def huge_input_weights(work, tmp_path):
    """The run's weights, with a preprocessing of 30000 x 30000 px in their metadata."""
    model = resnets.load_model(work["run"])
    model.pretrained_cfg = model.pretrained_cfg.replace(input_size=(3, 30000, 30000))
    return resnets.save_weights(model, tmp_path / "huge.safetensors")


def test_eval_refuses_an_img_size_that_cannot_fit(work, tmp_path, two_gib, monkeypatch, run_cli, capsys,
                                                  assert_one_line_error):
    monkeypatch.setattr(evaluate, "load_eval_set", never("reading the images"))
    code, _, err = run_cli(capsys, "eval", "--weights", work["run"], "--data-dir", work["data"], "--img-size",
                           "20000", "--output", tmp_path / "eval", "--device", "cpu")
    assert_one_line_error(code, err, "eval")
    assert "--img-size 20000: 64 image(s) of 20000x20000 need at least" in err and "could fit" in err


def test_export_refuses_an_img_size_that_cannot_fit(work, tmp_path, two_gib, monkeypatch, run_cli, capsys,
                                                    assert_one_line_error):
    monkeypatch.setattr(formats, "export_metadata", never("tracing"))
    code, _, err = run_cli(capsys, "export", "--weights", work["run"], "--format", "onnx", "--output",
                           tmp_path / "m.onnx", "--img-size", "20000")
    assert_one_line_error(code, err, "export")
    assert "--img-size 20000: 32 image(s)" in err and not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("command", ["predict", "cam"])
def test_weights_whose_input_size_cannot_fit_are_refused(command, work, huge_input_weights, tmp_path, two_gib,
                                                         monkeypatch, run_cli, capsys, assert_one_line_error):
    monkeypatch.setattr(predict, "read_images", never("reading the images"))
    monkeypatch.setattr(cam, "read_images", never("reading the images"))
    extra = ["--output", tmp_path / "cam"] if command == "cam" else []
    code, _, err = run_cli(capsys, command, "--weights", huge_input_weights, "--device", "cpu", *extra,
                           work["files"][0])
    assert_one_line_error(code, err, command)
    assert "the weights' input_size" in err and "30000x30000" in err
