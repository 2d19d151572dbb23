"""Outputs never replace what a command reads: predict, eval, export and cam refuse an --output that is one of
their inputs or the weights file, however it is spelled (./, .., a symlink)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from resnets.errors import ConfigError
from resnets.hub import load_model
from resnets.export.pipeline import export_model

CLASSES = ["apple", "banana", "cherry"]  # listed in an order that is also their sorted order


def copied(sources: list[Path], folder: Path, names: list[str] | None = None) -> list[Path]:
    """Copies under `folder` (named `names`): files a test may lose if the guard it checks is broken."""
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(src, folder / name)) for src, name in zip(sources, names or [s.name for s in sources])]


def test_export_output_must_be_named_for_its_format(run_cli, assert_one_line_error, work: dict,
                                                    capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    (weights,) = copied([work["run"] / "best.safetensors"], tmp_path / "run")
    before = weights.read_bytes()
    # The review's case: ONNX over the checkpoint the command reads, spelled through ./ and ..
    code, _, err = run_cli(capsys, "export", "--weights", weights.parent, "--format", "onnx", "--output",
                           tmp_path / "run" / ".." / "run" / "." / "best.safetensors")
    assert_one_line_error(code, err, "export")
    assert "best.safetensors" in err
    assert weights.read_bytes() == before
    code, _, err = run_cli(capsys, "export", "--weights", weights, "--format", "onnx", "--output",
                           tmp_path / "model.pt2")
    assert_one_line_error(code, err, "export")
    assert "--format onnx writes a .onnx file" in err and "name it model.onnx, or pass --format pt2" in err
    code, _, err = run_cli(capsys, "export", "--weights", weights, "--format", "pt2", "--output", tmp_path / "m")
    assert_one_line_error(code, err, "export")
    assert "name it m.pt2" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_export_refuses_the_checkpoint_even_with_the_right_extension(work: dict, tmp_path: Path) -> None:
    (weights,) = copied([work["bare"]], tmp_path, ["weights.pt2"])  # a bare state dict may be named anything
    before = weights.read_bytes()
    model = load_model(weights, "cifar_resnet20")
    (tmp_path / "link.pt2").symlink_to(weights)
    for output in (tmp_path / "sub" / ".." / "weights.pt2", tmp_path / "link.pt2"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        with pytest.raises(ConfigError, match="is the weights file this command reads.*; choose another path$"):
            export_model(model, output, "pt2", weights=weights)
    assert weights.read_bytes() == before


def test_predict_output_check(work: dict, tmp_path: Path) -> None:
    from resnets.inference.outputs import check_output

    images = copied(work["files"][:2], tmp_path / "mixed")
    (weights,) = copied([work["run"] / "best.safetensors"], tmp_path / "run")
    with pytest.raises(ConfigError, match=f"^--output {images[1]} is an input image this command reads; "):
        check_output(images[1], weights.parent, [images[0], tmp_path / "mixed"])  # found in the folder
    (tmp_path / "preds.csv").symlink_to(weights)
    with pytest.raises(ConfigError, match=r"preds.csv is the weights file this command reads \(.*best.safetensors\)"):
        check_output(tmp_path / "preds.csv", weights.parent, images)
    with pytest.raises(ConfigError, match="is a folder"):
        check_output(tmp_path / "mixed", weights.parent, images)
    check_output(tmp_path / "mixed" / "preds.csv", weights.parent, images)  # new, beside the inputs: fine
    (tmp_path / "mixed" / "preds.csv").write_text("an earlier run's CSV")
    check_output(tmp_path / "mixed" / "preds.csv", weights.parent, images)  # not read: may be replaced


def test_predict_refuses_to_replace_an_input_or_the_checkpoint(run_cli, read_csv, assert_one_line_error, work: dict,
                                                               capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    images = copied(work["files"][:2], tmp_path / "mixed", ["good.png", "other.jpg"])
    (weights,) = copied([work["run"] / "best.safetensors"], tmp_path / "run")
    before = [p.read_bytes() for p in (*images, weights)]
    for output, what in ((images[0], "an input image"), (weights, "the weights file")):
        code, _, err = run_cli(capsys, "predict", "--weights", weights.parent, "--output", output,
                               tmp_path / "mixed")
        assert_one_line_error(code, err, "predict")
        assert err.rstrip().endswith(f"--output {output} is {what} this command reads; choose another path")
    assert [p.read_bytes() for p in (*images, weights)] == before
    code, _, err = run_cli(capsys, "predict", "--weights", weights.parent, "--output",
                           tmp_path / "mixed" / "preds.csv", tmp_path / "mixed")
    assert code == 0, err  # a new file beside the inputs
    assert len(read_csv(tmp_path / "mixed" / "preds.csv")) == 2


def test_export_cli_refuses_the_checkpoint(run_cli, assert_one_line_error, work: dict, capsys: pytest.CaptureFixture,
                                           tmp_path: Path) -> None:
    (weights,) = copied([work["bare"]], tmp_path, ["weights.onnx"])
    before = weights.read_bytes()
    code, _, err = run_cli(capsys, "export", "--weights", weights, "--model", "cifar_resnet20", "--format", "onnx",
                           "--output", tmp_path / "." / "weights.onnx")
    assert_one_line_error(code, err, "export")
    assert "weights.onnx is the weights file this command reads; choose another path" in err
    assert weights.read_bytes() == before


def test_cam_refuses_to_replace_an_input_image(run_cli, assert_one_line_error, work: dict,
                                               capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    images = copied(work["files"][:2], tmp_path / "images", ["a.png", "a_cam.png"])  # a.png's map is a_cam.png
    before = [p.read_bytes() for p in images]
    (tmp_path / "link").symlink_to(tmp_path / "images")
    for out in (tmp_path / "images", tmp_path / "link"):
        code, _, err = run_cli(capsys, "cam", "--weights", work["run"], "--output", out, *images)
        assert_one_line_error(code, err, "cam")
        assert f"Grad-CAM image {out / 'a_cam.png'} is an input image this command reads" in err
        assert err.rstrip().endswith("choose another --output folder")
    assert [p.read_bytes() for p in images] == before
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["a.png", "a_cam.png"]


def test_eval_refuses_to_replace_an_image_or_write_into_a_file(run_cli, assert_one_line_error, write_image_folder,
                                                               work: dict, capsys: pytest.CaptureFixture,
                                                               tmp_path: Path) -> None:
    write_image_folder(tmp_path / "data", CLASSES, 2, seed=4)
    image = tmp_path / "data" / "apple" / "confusion_matrix.png"  # an image named like a report eval writes
    (tmp_path / "data" / "apple" / "apple_0.png").rename(image)
    before = image.read_bytes()
    code, _, err = run_cli(capsys, "eval", "--weights", work["run"], "--data-dir", tmp_path / "data", "-j", "0",
                           "--output", tmp_path / "data" / "banana" / ".." / "apple")
    assert_one_line_error(code, err, "eval")
    assert "confusion_matrix.png is an input image this command reads" in err
    assert image.read_bytes() == before
    assert sorted(p.name for p in image.parent.iterdir()) == ["apple_1.jpg", "confusion_matrix.png"]

    (weights,) = copied([work["run"] / "best.safetensors"], tmp_path / "run")
    before = weights.read_bytes()
    code, _, err = run_cli(capsys, "eval", "--weights", weights, "--data-dir", tmp_path / "data", "-j", "0",
                           "--output", weights)
    assert_one_line_error(code, err, "eval")
    assert f"{weights} is not a folder" in err
    assert weights.read_bytes() == before
