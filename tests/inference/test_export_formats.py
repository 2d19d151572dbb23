"""Every export format from a real run: checked and measured on the run's own val split, written with its report,
and run again from the file alone by `predict` and `eval` with the eager model's answers (int8 within its
margin). A bad calibration set makes int8 lose accuracy, and that export is refused loudly with no file left."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import resnets
from resnets.errors import CheckpointError, ConfigError
from resnets.export.pipeline import ExportData, export_model, load_on_backend
from resnets.inference.exported import ExportedModel, load_classifier
from resnets.hub import load_model
from resnets.inference.fold import for_inference
from resnets.inference.predict import predict_images
from resnets.inference.tta import TTAConfig

pytest.importorskip("onnxruntime")
FAST = dict(check_images=200, calibration_images=64, speed_seconds=0.02)
FORMATS = ["onnx", "onnx-int8", "onnx-fp16", "pt2", "triton",
           pytest.param("openvino", marks=pytest.mark.skipif(
               __import__("importlib").util.find_spec("openvino") is None,
               reason="openvino is an optional extra (pip install 'resnets[openvino]')"))]
LOADABLE = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx", "onnx-fp16": "model.fp16.onnx",
            "pt2": "model.pt2", "openvino": "model.xml", "triton": "triton/cifar_resnet20/1/model.onnx"}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A 2-epoch run on the digits (~95% val top-1): a model whose accuracy an export can lose."""
    root = tmp_path_factory.mktemp("export")
    return resnets.train(epochs=2, output=str(root), name="run", workers=0, progress=False).run_dir


@pytest.fixture(scope="module")
def val_batches(run: Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
    model = load_model(run)
    data = ExportData(model, tuple(model.pretrained_cfg.for_eval().input_size), run)
    dataset, _ = data.validation(10**6)
    images, labels = zip(*(dataset[i] for i in range(len(dataset))))
    return [(torch.stack(images[i:i + 128]).float(), torch.tensor(labels[i:i + 128]))
            for i in range(0, len(images), 128)]


def _top1(model: torch.nn.Module, batches) -> tuple[float, torch.Tensor]:
    with torch.inference_mode():
        predicted = torch.cat([model(x).argmax(1) for x, _ in batches])
    labels = torch.cat([y for _, y in batches])
    return 100.0 * float((predicted == labels).float().mean()), predicted


@pytest.mark.parametrize("format", FORMATS)
def test_an_export_runs_from_its_file_alone_with_the_models_answers(format, run, val_batches, tmp_path,
                                                                     run_cli, capsys) -> None:
    output = tmp_path / "triton" if format == "triton" else tmp_path / Path(LOADABLE[format]).name
    code, out, err = run_cli(capsys, "export", "--weights", run, "--format", format, "--output", output,
                             "--check-images", "200", "--calibration-images", "64", "--time-s", "0.02")
    assert code == 0, err
    assert "img/s b1" in out and "img/s b32" in out and "on 200 images of the run's val split (digits)" in out
    report = json.loads((output / "export.json" if format == "triton" else
                         output.with_name(output.name + ".json")).read_text())
    assert report["images"] == 200 and report["format"] == format and report["within_margin"]
    assert set(report["img_per_s"]) == {"pytorch", "export"} and all(
        v > 0 for side in report["img_per_s"].values() for v in side.values())

    exported = load_classifier(tmp_path / LOADABLE[format])
    assert isinstance(exported, ExportedModel) and exported.labels() == [str(i) for i in range(10)]
    eager = for_inference(load_model(run), torch.device("cpu"))
    want, want_classes = _top1(eager, val_batches)
    got, got_classes = _top1(exported, val_batches)
    agreement = float((want_classes == got_classes).float().mean())
    if format == "onnx-int8":
        assert got >= want - 1.0 and agreement > 0.95, (got, want, agreement)
    else:
        assert got == pytest.approx(want, abs=0.3) and agreement > 0.995, (got, want, agreement)
    assert report["top1"]["pytorch"] > 80  # the report's 200 images are a fixed draw of the same split

def test_predict_runs_an_onnx_file_named_by_model(run, onnx_file, tmp_path, run_cli, capsys, read_csv) -> None:
    model, path = load_model(run), onnx_file
    digits = __import__("sklearn.datasets", fromlist=["load_digits"]).load_digits()
    files = []
    for i in range(6):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray((digits.images[i] * 15).astype(np.uint8)).save(files[-1])
    want = predict_images(model, files, topk=3)
    code, _, err = run_cli(capsys, "predict", "--model", path, "--topk", "3", "--output", tmp_path / "p.csv",
                           *files)
    assert code == 0, err
    rows = read_csv(tmp_path / "p.csv")
    assert [r["top1_class"] for r in rows] == [p.classes[0] for p in want]
    np.testing.assert_allclose([float(r["top1_prob"]) for r in rows], [p.probabilities[0] for p in want],
                               atol=1e-4)
    # TTA works on the file too ...
    want = predict_images(model, files, topk=3, tta=TTAConfig())
    code, _, err = run_cli(capsys, "predict", "--model", path, "--topk", "3", "--tta", "--output",
                           tmp_path / "tta.csv", *files)
    assert code == 0, err
    rows = read_csv(tmp_path / "tta.csv")
    np.testing.assert_allclose([float(r["top1_prob"]) for r in rows], [p.probabilities[0] for p in want],
                               atol=1e-4)
    # ... and a size it was not exported for is one line naming the fix
    code, _, err = run_cli(capsys, "predict", "--model", path, "--tta-size", "40", *files)
    assert code == 2 and "export with --dynamic-size" in err and len(err.strip().splitlines()) == 1


def test_eval_runs_an_exported_file(tmp_path, work, run_cli, capsys) -> None:
    model = load_model(work["run"])
    path = export_model(model, tmp_path / "model.pt2", "pt2", **FAST).path
    code, out, err = run_cli(capsys, "eval", "--weights", path, "--data-dir", work["data"], "--output",
                             tmp_path / "eval", "--workers", "0")
    assert code == 0, err
    code, torch_out, err = run_cli(capsys, "eval", "--weights", work["run"], "--data-dir", work["data"],
                                   "--output", tmp_path / "eval_torch", "--workers", "0")
    assert code == 0, err
    assert out.splitlines()[1] == torch_out.splitlines()[1]  # the same top-1, top-5 and loss line
    code, _, err = run_cli(capsys, "eval", "--weights", path, "--data-dir", work["data"], "--output",
                           tmp_path / "eval2", "--top-losses-cam")
    assert code == 2 and "Grad-CAM" in err


def test_dynamic_size_takes_other_sizes_and_aspects(run, tmp_path) -> None:
    model = load_model(run).eval()
    result = export_model(model, tmp_path / "m.onnx", "onnx", dynamic_size=True, **FAST)
    assert result.input_shape == ("batch", 3, "height", "width") and result.report.exact_check["max_abs_diff"] < 1e-3
    exported = load_classifier(result.path)
    for shape in ((1, 3, 32, 32), (2, 3, 48, 80), (3, 3, 8, 8)):
        x = torch.randn(shape)
        with torch.inference_mode():
            torch.testing.assert_close(exported(x), model(x), rtol=1e-4, atol=1e-4)


def test_a_fixed_size_export_names_the_flag_for_other_sizes(onnx_file) -> None:
    fixed = load_classifier(onnx_file)
    with pytest.raises(ConfigError, match="takes 32x32 images only"):
        fixed(torch.randn(1, 3, 48, 48))


def test_a_bad_calibration_set_loses_accuracy_and_the_export_is_refused(run, tmp_path, run_cli, capsys) -> None:
    # Calibrated on flat grey images, the activation ranges are far too narrow for real digits: int8 saturates.
    calib = tmp_path / "calib" / "x"
    calib.mkdir(parents=True)
    for i in range(8):
        Image.fromarray(np.full((8, 8), 128, np.uint8)).save(calib / f"{i}.png")
    output = tmp_path / "out" / "model.int8.onnx"
    code, out, err = run_cli(capsys, "export", "--weights", run, "--format", "onnx-int8", "--output", output,
                             "--calibration-dir", calib.parent, "--check-images", "200", "--time-s", "0.02")
    assert code == 3, err
    assert "ACCURACY DROP" in err and "nothing written" in err and "--allow-accuracy-drop" in err
    assert "onnx-int8" in out  # the table is printed
    assert not output.parent.exists() or list(output.parent.iterdir()) == []
    code, out, err = run_cli(capsys, "export", "--weights", run, "--format", "onnx-int8", "--output", output,
                             "--calibration-dir", calib.parent, "--check-images", "200", "--time-s", "0.02",
                             "--allow-accuracy-drop")
    assert code == 0 and "warning: top-1" in err and output.is_file()
    report = json.loads(output.with_name(output.name + ".json").read_text())
    assert not report["within_margin"] and report["top1_drop"] > 1.0


def test_int8_needs_labelled_and_calibration_images(work, tmp_path, run_cli, capsys, assert_one_line_error) -> None:
    # weights outside a run: no val split to judge it on, no training images to calibrate on
    code, _, err = run_cli(capsys, "export", "--weights", work["run"], "--format", "onnx-int8", "--output",
                           tmp_path / "m.onnx")
    assert_one_line_error(code, err, "export")
    assert "--data-dir" in err and "--allow-accuracy-drop" in err
    code, _, err = run_cli(capsys, "export", "--weights", work["run"], "--format", "onnx-int8", "--output",
                           tmp_path / "m.onnx", "--data-dir", work["data"])
    assert_one_line_error(code, err, "export")
    assert "--calibration-dir" in err and list(tmp_path.iterdir()) == []


def test_the_triton_repository_describes_its_model(run, tmp_path) -> None:
    export_model(load_model(run), tmp_path / "repo", "triton", dynamic_size=True, **FAST)
    model_dir = tmp_path / "repo" / "cifar_resnet20"
    config = (model_dir / "config.pbtxt").read_text()
    assert 'backend: "onnxruntime"' in config and "max_batch_size: 32" in config
    assert 'name: "input" data_type: TYPE_FP32 dims: [ 3, -1, -1 ]' in config
    assert 'name: "logits" data_type: TYPE_FP32 dims: [ 10 ] label_filename: "labels.txt"' in config
    assert (model_dir / "labels.txt").read_text().splitlines() == [str(i) for i in range(10)]
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"] and [o.name for o in session.get_outputs()] == ["logits"]


@pytest.fixture(scope="module")
def onnx_file(run: Path, tmp_path_factory) -> Path:
    return export_model(load_model(run), tmp_path_factory.mktemp("onnx") / "m.onnx", "onnx", **FAST).path


def _onnx_with_metadata(tmp_path: Path, path: Path, meta: str | None) -> Path:
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    if meta is not None:
        entry = proto.metadata_props.add()
        entry.key, entry.value = "resnets", meta
    bad = tmp_path / "bad.onnx"
    onnx.save(proto, str(bad))
    return bad


@pytest.mark.parametrize("meta, message", [
    (None, "no resnets metadata"),
    ("[" * 5000, "nests deeper|not JSON"),
    (json.dumps({"num_classes": 10**9}), "num_classes"),
    (json.dumps({"num_classes": 3, "class_names": ["a", "b", "c"], "pretrained_cfg": {}}), "gives 10 logits"),
    (json.dumps({"num_classes": 10, "class_names": list("abcdefghij"),
                 "pretrained_cfg": {"input_size": [3, 10**9, 32]}}), "input_size"),
])
def test_hostile_metadata_in_an_onnx_file_is_refused_in_one_line(meta, message, onnx_file, tmp_path, run_cli,
                                                                  capsys, assert_one_line_error, work) -> None:
    bad = _onnx_with_metadata(tmp_path, onnx_file, meta)
    with pytest.raises(CheckpointError, match=message):
        load_classifier(bad)
    code, _, err = run_cli(capsys, "predict", "--model", bad, work["files"][0])
    assert_one_line_error(code, err, "predict")


def test_a_file_that_is_no_model_is_one_line(tmp_path, run_cli, capsys, assert_one_line_error, work) -> None:
    for name in ("junk.onnx", "junk.pt2"):
        (tmp_path / name).write_bytes(b"\x00not a model" * 10)
        code, _, err = run_cli(capsys, "predict", "--model", tmp_path / name, work["files"][0])
        assert_one_line_error(code, err, "predict")
    code, _, err = run_cli(capsys, "predict", "--model", tmp_path / "missing.onnx", work["files"][0])
    assert_one_line_error(code, err, "predict")


def test_a_run_whose_data_moved_names_the_flags_that_help(run, tmp_path, run_cli, capsys,
                                                            assert_one_line_error) -> None:
    import shutil

    import yaml

    moved = tmp_path / "run"
    moved.mkdir()
    shutil.copy(run / "best.safetensors", moved)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config |= {"dataset": "folder", "data_dir": str(tmp_path / "gone")}
    (moved / "config.yaml").write_text(yaml.safe_dump(config))
    code, _, err = run_cli(capsys, "export", "--weights", moved, "--format", "onnx")
    assert_one_line_error(code, err, "export")
    assert "--data-dir" in err and "--check-images 0" in err and not (moved / "model.onnx").exists()
    code, out, err = run_cli(capsys, "export", "--weights", moved, "--format", "onnx", "--check-images", "0",
                             "--time-s", "0.02")
    assert code == 0, err
    assert "accuracy not measured" in out and (moved / "model.onnx").is_file()
    code, _, err = run_cli(capsys, "export", "--weights", moved, "--format", "onnx-int8", "--check-images", "0")
    assert_one_line_error(code, err, "export")
    assert "--allow-accuracy-drop" in err and not (moved / "model.int8.onnx").exists()


class _Payload:
    """Unpickling this creates `marker`: what a hostile pickle could do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def _pt2_with_a_pickled_weight(source: Path, hostile: Path, marker: Path) -> None:
    """A copy of a real .pt2 whose first weight is marked `use_pickle` and holds the payload."""
    import io
    import pickle
    import zipfile

    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(hostile, "w") as zout:
        names = zin.namelist()
        config_name = next(n for n in names if n.endswith("model_weights_config.json"))
        config = json.loads(zin.read(config_name))
        first = next(iter(config["config"].values()))
        first["use_pickle"] = True
        payload = io.BytesIO()
        pickle.dump(_Payload(marker), payload)
        for name in names:
            data = zin.read(name)
            if name == config_name:
                data = json.dumps(config).encode()
            elif name.endswith("/" + first["path_name"]) or name.endswith("weights/" + first["path_name"]):
                data = payload.getvalue()
            zout.writestr(name, data)


def test_a_pt2_that_would_unpickle_code_is_refused_before_torch_reads_it(run, tmp_path, run_cli, capsys,
                                                                         assert_one_line_error, work) -> None:
    source = export_model(load_model(run), tmp_path / "m.pt2", "pt2", **FAST).path
    hostile, marker = tmp_path / "hostile.pt2", tmp_path / "code-ran"
    _pt2_with_a_pickled_weight(source, hostile, marker)
    with pytest.raises(Exception):
        torch.export.load(hostile)  # torch's own loader unpickles it: the hazard is real ...
    assert marker.exists()
    marker.unlink()
    capsys.readouterr()  # torch logged its traceback
    with pytest.raises(CheckpointError, match="pickle"):  # ... and ours never hands it to torch
        load_classifier(hostile)
    code, _, err = run_cli(capsys, "predict", "--model", hostile, work["files"][0])
    assert_one_line_error(code, err, "predict")
    assert not marker.exists()


def test_a_pt2_whose_metadata_names_other_classes_than_its_logits_is_refused(run, tmp_path) -> None:
    import zipfile

    source = export_model(load_model(run), tmp_path / "m.pt2", "pt2", **FAST).path
    bad = tmp_path / "bad.pt2"
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(bad, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name.endswith("extra/resnets"):
                meta = json.loads(data)
                meta |= {"num_classes": 3, "class_names": ["a", "b", "c"]}
                data = json.dumps(meta).encode()
            zout.writestr(name, data)
    with pytest.raises(CheckpointError, match=r"shape \(1, 10\).*3 classes"):
        load_classifier(bad)


@pytest.mark.parametrize("argv, message", [
    (["--time-s", "inf"], "--time-s must be in 0..600"),
    (["--margin", "-1"], "--margin must be in 0..100"),
    (["--check-images", "-1"], "--check-images must be in 0..inf"),
])
def test_numbers_out_of_range_are_one_line(argv, message, work, tmp_path, run_cli, capsys,
                                           assert_one_line_error) -> None:
    code, _, err = run_cli(capsys, "export", "--weights", work["run"], "--output", tmp_path / "m.onnx", *argv)
    assert_one_line_error(code, err, "export")
    assert message in err and list(tmp_path.iterdir()) == []


def test_a_calibration_folder_of_validation_images_is_refused(run, work, tmp_path, run_cli, capsys,
                                                               assert_one_line_error) -> None:
    # work["data"] holds val/ only: calibrating there would tune int8 on the images it is judged on
    code, _, err = run_cli(capsys, "export", "--weights", run, "--format", "onnx-int8", "--output",
                           tmp_path / "m.onnx", "--calibration-dir", work["data"])
    assert_one_line_error(code, err, "export")
    assert "no train/" in err and list(tmp_path.iterdir()) == []


def test_an_exported_file_runs_on_its_own_runtime_only(onnx_file) -> None:
    assert load_on_backend(onnx_file, backend="onnx").backend == "onnx"
    with pytest.raises(ConfigError, match="runs on onnx; --backend torch cannot run it"):
        load_on_backend(onnx_file, backend="torch")
    with pytest.raises(ConfigError, match="carries its architecture"):
        load_classifier(onnx_file, "resnet50")


def test_histogram_calibration_that_cannot_fit_in_memory_is_refused_first(run, tmp_path, monkeypatch, run_cli,
                                                                          capsys, assert_one_line_error) -> None:
    from resnets.export import pipeline

    monkeypatch.setattr(pipeline, "available_bytes", lambda device: 64 * 2**20)
    code, _, err = run_cli(capsys, "export", "--weights", run, "--format", "onnx-int8", "--output",
                           tmp_path / "m.onnx", "--calibration-method", "entropy", "--calibration-images", "100000")
    assert_one_line_error(code, err, "export")
    assert "keeps every activation" in err and "--calibration-images" in err and list(tmp_path.iterdir()) == []


def test_openvino_without_its_package_is_one_line_before_any_work(run, tmp_path, monkeypatch, run_cli, capsys,
                                                                 assert_one_line_error) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError, installed or not
    code, _, err = run_cli(capsys, "export", "--weights", run, "--format", "openvino", "--output",
                           tmp_path / "m.xml")
    assert_one_line_error(code, err, "export")
    assert "pip install 'resnets[openvino]'" in err and list(tmp_path.iterdir()) == []
