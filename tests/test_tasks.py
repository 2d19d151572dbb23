"""eval, predict, export and cam, through `resnets.cli.main` as a user runs them, on a tiny trained model.

The model is cifar_resnet20 trained for a few steps on three synthetic classes, so its predictions and
Grad-CAM maps depend on the image (a random network's might not).
"""
from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from resnets.cli import main
from resnets.data import eval_transform, list_images, load_image
from resnets.errors import ConfigError
from resnets.models import create_model
from resnets.hub import load_model
from resnets.models.weights import save_weights
from resnets.reports import (classification_report, confusion_figure_layout, confusion_matrix,
                             plot_confusion_matrix)
from resnets.inference.cam import grad_cam, save_cam_figure
from resnets.inference.export import ExportError, export_model, read_export_metadata

CLASSES = ["apple", "banana", "cherry"]  # listed in an order that is also their sorted order
PER_CLASS = 5
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def synthetic_image(label: int, rng: np.random.Generator, size: int = 40) -> np.ndarray:
    """(size, size, 3) uint8: a red disc, a yellow horizontal bar or a dark checkerboard, on noise."""
    img = rng.integers(90, 160, (size, size, 3)).astype(np.float64)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.integers(size // 3, 2 * size // 3, 2)
    if label == 0:
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < (size // 5) ** 2
        img[mask] = (220, 30, 30)
    elif label == 1:
        mask = np.abs(yy - cy) < size // 8
        img[mask] = (240, 220, 40)
    else:
        mask = ((yy // 5 + xx // 5) % 2 == 0) & (np.abs(yy - cy) < size // 3) & (np.abs(xx - cx) < size // 3)
        img[mask] = (20, 20, 60)
    return img.clip(0, 255).astype(np.uint8)


def write_image_folder(root: Path, classes: list[str], per_class: int, seed: int) -> list[Path]:
    """ImageFolder with PNG and JPEG files alternating (JPEG exercises lossy decoding too).

    The last image of class i shows class i+1's pattern: a known confusion, which pins down the
    orientation of the confusion matrix (rows true, columns predicted).
    """
    rng = np.random.default_rng(seed)
    files = []
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            path = root / name / f"{name}_{i}.{'png' if i % 2 == 0 else 'jpg'}"
            shown = (label + 1) % 3 if i == per_class - 1 else label % 3
            Image.fromarray(synthetic_image(shown, rng)).save(path)
            files.append(path)
    return files


def train_tiny_model(num_images: int = 48, steps: int = 150) -> torch.nn.Module:
    """Random backbone, classifier fitted on its pooled features: a model whose outputs depend on the image,
    in ~1 s (full training of even cifar_resnet20 costs ~0.5 s a step on 2 busy cores)."""
    torch.manual_seed(0)
    model = create_model("cifar_resnet20", num_classes=len(CLASSES), zero_init_last=False).eval()
    transform = eval_transform(model.pretrained_cfg)
    rng = np.random.default_rng(1)
    labels = torch.arange(num_images) % len(CLASSES)
    images = torch.stack([transform(Image.fromarray(synthetic_image(int(y), rng))) for y in labels])
    with torch.inference_mode():
        feats = model.forward_head(model.forward_features(images), pre_logits=True)  # (N, num_features)
    opt = torch.optim.Adam(model.fc.parameters(), lr=0.05)
    for _ in range(steps):
        loss = F.cross_entropy(model.fc(feats.clone()), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.class_names = list(CLASSES)
    return model


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tasks")
    model = train_tiny_model()
    run = root / "run"
    save_weights(model, run / "best.safetensors")
    bare = root / "bare" / "weights.pth"
    bare.parent.mkdir()
    torch.save(model.state_dict(), bare)
    files = write_image_folder(root / "data" / "val", CLASSES, PER_CLASS, seed=2)
    write_image_folder(root / "other", ["apple", "banana", "durian"], 2, seed=3)
    return {"root": root, "run": run, "bare": bare, "data": root / "data", "files": files, "other": root / "other"}


def run_cli(capsys: pytest.CaptureFixture, *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def preprocessed(model: torch.nn.Module, files: list[Path]) -> torch.Tensor:
    """A batch of `files` through the model's own eval preprocessing, as predict reads them."""
    transform = eval_transform(model.pretrained_cfg)
    return torch.stack([transform(load_image(p)) for p in files])


def assert_one_line_error(code: int, err: str, command: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"resnets {command}: error: ")


# ---------------------------------------------------------------- reports

def test_report_matches_sklearn() -> None:
    from sklearn.metrics import classification_report as sk_report
    from sklearn.metrics import confusion_matrix as sk_confusion

    rng = np.random.default_rng(0)
    targets = rng.integers(0, 4, 200)
    preds = np.where(rng.random(200) < 0.6, targets, rng.integers(0, 4, 200))
    preds[preds == 3] = 2  # class 3 is never predicted: precision must be 0, not NaN
    names = ["a", "b", "c", "d"]
    rows = classification_report(torch.from_numpy(targets), preds.tolist(), names)
    expected = sk_report(targets, preds, labels=range(4), target_names=names, output_dict=True, zero_division=0)
    assert [r["class"] for r in rows] == names + ["macro avg", "weighted avg"]
    for row in rows:
        ref = expected[row["class"]]
        assert row["precision"] == pytest.approx(ref["precision"])
        assert row["recall"] == pytest.approx(ref["recall"])
        assert row["f1"] == pytest.approx(ref["f1-score"])
        assert row["support"] == ref["support"]
    json.dumps(rows)  # plain types: the trainer puts these rows into its summary JSON
    np.testing.assert_array_equal(confusion_matrix(targets, preds, 4), sk_confusion(targets, preds, labels=range(4)))
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix([0, 4], [0, 1], 4)


@pytest.mark.parametrize("num_classes", [2, 100])
def test_confusion_png_size_and_content(tmp_path: Path, num_classes: int) -> None:
    rng = np.random.default_rng(0)
    targets = np.repeat(np.arange(num_classes), 3)
    cm = confusion_matrix(targets, np.where(rng.random(targets.size) < 0.7, targets, 0), num_classes)
    names = [f"class_{i}" for i in range(num_classes)]
    path = plot_confusion_matrix(cm, names, tmp_path / "cm.png", dpi=50)
    assert path.read_bytes()[:8] == PNG_MAGIC
    side = confusion_figure_layout(num_classes)[0]
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.size == (round(side * 50), round(side * 50))
        pixels = np.asarray(img.convert("L"))
    assert pixels.std() > 10  # something was drawn
    assert list(tmp_path.iterdir()) == [path]  # no temp file left


# ---------------------------------------------------------------- eval

def test_eval_writes_consistent_reports(work: dict, capsys: pytest.CaptureFixture) -> None:
    code, out, err = run_cli(capsys, "eval", "--weights", work["run"], "--data-dir", work["data"], "-j", "0",
                             "-b", "4")
    assert code == 0, err
    out_dir = work["run"] / "eval"
    summary = json.loads((out_dir / "eval.json").read_text())
    n = len(CLASSES) * PER_CLASS
    assert summary["num_samples"] == n
    assert summary["weights"] == str(work["run"] / "best.safetensors")
    assert summary["data_dir"] == str(work["data"])
    assert summary["top5"] == 100.0  # 3 classes: the true one is always among the top 3
    assert summary["loss"] > 0
    assert [r["class"] for r in summary["per_class"]] == CLASSES + ["macro avg", "weighted avg"]

    # The confusion matrix CSV, the per-class recall and top-1 all tell the same story.
    rows = list(csv.reader(open(out_dir / "confusion_matrix.csv", newline="")))
    assert rows[0] == ["true\\predicted", *CLASSES]
    cm = np.array([[int(v) for v in row[1:]] for row in rows[1:]])
    assert [row[0] for row in rows[1:]] == CLASSES
    assert cm.sum() == n and (cm.sum(axis=1) == PER_CLASS).all()
    # The model tells the three patterns apart; each class's last image shows the next class's pattern.
    np.testing.assert_array_equal(cm, (PER_CLASS - 1) * np.eye(3, dtype=int) + np.roll(np.eye(3, dtype=int), 1, 1))
    assert summary["top1"] == pytest.approx(100 * np.trace(cm) / n)
    assert summary["per_class"][-1]["recall"] == pytest.approx(np.trace(cm) / n)  # weighted recall = accuracy
    report = read_csv(out_dir / "per_class.csv")
    assert [r["class"] for r in report][:3] == CLASSES
    assert [int(r["support"]) for r in report[:3]] == [PER_CLASS] * 3

    with Image.open(out_dir / "confusion_matrix.png") as img:
        side = confusion_figure_layout(len(CLASSES))[0]
        assert img.format == "PNG" and img.size == (round(side * 100), round(side * 100))
    assert f"top-1 {summary['top1']:.2f}%" in out and "weighted avg" in out

    # top-1 agrees with what `predict` says about the same files, one by one.
    code, out, _ = run_cli(capsys, "predict", "--weights", work["run"], "--topk", "1", work["data"])
    assert code == 0
    predicted = {r["file"]: r["top1_class"] for r in csv.DictReader(out.splitlines())}
    correct = sum(predicted[str(f)] == f.parent.name for f in work["files"])
    assert summary["top1"] == pytest.approx(100 * correct / n)


def test_eval_output_dir_and_bare_weights(work: dict, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    out_dir = tmp_path / "somewhere"
    code, _, err = run_cli(capsys, "eval", "--weights", work["bare"], "--model", "cifar_resnet20",
                           "--data-dir", work["data"] / "val", "-j", "0", "--output", out_dir)
    assert code == 0, err
    summary = json.loads((out_dir / "eval.json").read_text())
    assert summary["num_samples"] == len(CLASSES) * PER_CLASS
    # A bare state dict has no class names: the folder's sorted names are used.
    assert summary["class_names"] == CLASSES
    assert not (work["bare"].parent / "eval").exists()


# ---------------------------------------------------------------- predict

def test_predict_rows_match_inputs(work: dict, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image at all")
    single = work["files"][1]  # a JPEG
    inputs = [single, work["data"] / "val" / "banana", broken]
    out_csv = tmp_path / "preds.csv"
    # On the CPU, as the reference below: a GPU's kernels differ from it by more than the 2e-6 checked here.
    code, out, err = run_cli(capsys, "predict", "--weights", work["run"], "--topk", "3", "--output", out_csv,
                             "--device", "cpu", *inputs)
    assert code == 0, err
    assert "broken.png" in err and "skipped" in err  # named, not fatal
    rows = read_csv(out_csv)
    expected = [p for p in list_images(inputs) if p != broken]
    assert [r["file"] for r in rows] == [str(p) for p in expected]
    assert list(rows[0]) == ["file", "top1_class", "top1_prob", "top2_class", "top2_prob", "top3_class", "top3_prob"]
    for row in rows:
        probs = [float(row[f"top{i}_prob"]) for i in (1, 2, 3)]
        assert probs == sorted(probs, reverse=True)
        assert sum(probs) <= 1 + 1e-5 and min(probs) >= 0
        assert sorted(row[f"top{i}_class"] for i in (1, 2, 3)) == CLASSES

    # The CSV's top-1 is the model's own argmax on the same preprocessing.
    model = load_model(work["run"]).eval()
    with torch.inference_mode():
        probs = model(preprocessed(model, expected)).softmax(1)
    assert [r["top1_class"] for r in rows] == [CLASSES[i] for i in probs.argmax(1).tolist()]
    np.testing.assert_allclose([float(r["top1_prob"]) for r in rows], probs.max(1).values.numpy(), atol=2e-6)


def test_predict_default_prints_csv_and_bare_weights_use_indices(work: dict, capsys: pytest.CaptureFixture) -> None:
    code, out, err = run_cli(capsys, "predict", "--weights", work["bare"], "--model", "cifar_resnet20",
                             work["files"][0])
    assert code == 0, err
    rows = list(csv.DictReader(out.splitlines()))
    assert len(rows) == 1 and rows[0]["file"] == str(work["files"][0])
    assert {rows[0][f"top{i}_class"] for i in (1, 2, 3)} == {"0", "1", "2"}  # no class names: indices


def test_predict_bare_weights_without_model(work: dict, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    out_csv = tmp_path / "preds.csv"
    code, _, err = run_cli(capsys, "predict", "--weights", work["bare"], "--output", out_csv, work["files"][0])
    assert_one_line_error(code, err, "predict")
    assert "--model" in err
    assert not out_csv.exists()


def test_predict_no_readable_image(work: dict, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8 truncated")
    code, _, err = run_cli(capsys, "predict", "--weights", work["run"], "--output", tmp_path / "p.csv",
                           tmp_path / "a.jpg")
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("resnets predict: error: no readable images")
    assert not (tmp_path / "p.csv").exists()
    code, _, err = run_cli(capsys, "predict", "--weights", work["run"], "--topk", "4", work["files"][0])
    assert_one_line_error(code, err, "predict")


# ---------------------------------------------------------------- export

def test_export_onnx_runs_at_another_batch(work: dict, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "model.onnx"
    code, out, err = run_cli(capsys, "export", "--weights", work["run"], "--format", "onnx", "--output", path,
                             "--opset", "18")
    assert code == 0, err
    assert "max |exported - eager|" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # weights inside, no .data side file
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [3, 32, 32]  # symbolic batch
    model = load_model(work["run"]).eval()
    for batch in (1, 5):
        x = torch.randn(batch, 3, 32, 32)
        got = session.run(None, {inp.name: x.numpy()})[0]
        with torch.inference_mode():
            want = model(x).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    onnx = pytest.importorskip("onnx")
    assert [o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx")] == [18]
    meta = read_export_metadata(path)
    assert meta["class_names"] == CLASSES
    assert meta["pretrained_cfg"]["input_size"] == [3, 32, 32]
    assert json.loads(session.get_modelmeta().custom_metadata_map["resnets"]) == meta


def test_export_pt2_runs_at_another_batch(work: dict, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    path = tmp_path / "model.pt2"
    code, _, err = run_cli(capsys, "export", "--weights", work["run"], "--format", "pt2", "--output", path,
                           "--img-size", "40")
    assert code == 0, err
    program = torch.export.load(path)
    model = load_model(work["run"]).eval()
    x = torch.randn(7, 3, 40, 40)
    with torch.inference_mode():
        torch.testing.assert_close(program.module()(x), model(x), rtol=1e-4, atol=1e-5)
    assert read_export_metadata(path)["pretrained_cfg"]["input_size"] == [3, 40, 40]


@pytest.mark.parametrize("opset", ["17", "9999"])
def test_export_rejects_an_opset_the_exporter_cannot_write(work: dict, capsys: pytest.CaptureFixture,
                                                           tmp_path: Path, opset: str) -> None:
    # Below 18 torch's exporter logs a conversion traceback and quietly writes opset 18; past onnx's newest,
    # its converter dumps a C++ assertion first.
    code, _, err = run_cli(capsys, "export", "--weights", work["run"], "--format", "onnx", "--output",
                           tmp_path / "m.onnx", "--opset", opset)
    assert_one_line_error(code, err, "export")
    assert re.search(r"writes opsets 18 to \d+$", err.strip())
    assert list(tmp_path.iterdir()) == []


def test_failed_export_check_leaves_no_file(work: dict, tmp_path: Path) -> None:
    model = load_model(work["run"]).eval()
    with pytest.raises(ExportError, match="differs"):
        export_model(model, tmp_path / "m.pt2", "pt2", rtol=-1.0)  # no difference is small enough
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- cam

def test_grad_cam_equals_cam_on_last_stage(work: dict) -> None:
    """With global average pooling and one linear layer after the last stage, Grad-CAM is exactly CAM
    (Zhou et al. 2016): alpha_k = W[c, k] / (h * w). Selvaraju et al. 2017 prove it in their Sec. 3.1."""
    model = load_model(work["run"]).eval()
    x = preprocessed(model, work["files"][::4])
    result = grad_cam(model, x)
    with torch.inference_mode():
        feats = model.forward_features(x)  # (B, K, h, w)
        pred = model(x).argmax(1)
        cam = F.relu(torch.einsum("bk,bkhw->bhw", model.fc.weight[pred], feats))[:, None]
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    cam = cam / cam.flatten(1).max(1).values[:, None, None]
    torch.testing.assert_close(result.heatmaps, cam, rtol=1e-4, atol=1e-5)
    assert result.class_indices == pred.tolist() == result.predicted
    h = result.heatmaps
    assert h.shape == (len(x), 32, 32) and h.min() >= 0
    torch.testing.assert_close(h.flatten(1).max(1).values, torch.ones(len(x)))  # normalised per image
    assert (h.flatten(1).std(1) > 0.01).all()  # not constant

    other = grad_cam(model, x, layer="layer2.0", class_index=0)
    assert other.class_indices == [0] * len(x)
    assert not torch.allclose(other.heatmaps, h)


def test_cam_cli_writes_pngs(work: dict, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    images = [work["files"][0], work["files"][PER_CLASS]]
    code, out, err = run_cli(capsys, "cam", "--weights", work["run"], "--output", tmp_path, *images)
    assert code == 0, err
    written = sorted(tmp_path.iterdir())
    assert [p.name for p in written] == sorted(f"{p.stem}_cam.png" for p in images)
    for png in written:
        assert png.read_bytes()[:8] == PNG_MAGIC
        with Image.open(png) as img:
            assert img.size == (800, 440)
            assert np.asarray(img.convert("RGB")).std() > 10


def test_cam_figure_of_a_white_image_draws_without_warnings(tmp_path: Path, caplog) -> None:
    # White input under a hot heatmap blends to a hair above 1.0 in float32; imshow logged a "Clipping input
    # data" warning for each such image.
    rgb = np.ones((32, 32, 3), dtype=np.float32)
    heatmap = np.random.default_rng(0).random((32, 32), dtype=np.float32)
    save_cam_figure(rgb, heatmap, "white", tmp_path / "w.png")
    assert caplog.records == []
    assert (tmp_path / "w.png").read_bytes()[:8] == PNG_MAGIC


def test_cam_unknown_layer_lists_stages(work: dict, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "cam", "--weights", work["run"], "--layer", "layer4", "--output", tmp_path,
                           work["files"][0])
    assert_one_line_error(code, err, "cam")
    assert "layer1, layer2, layer3" in err
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError, match="not a \\(B, C, H, W\\)"):
        grad_cam(load_model(work["run"]), torch.randn(1, 3, 32, 32), layer="fc")


# ---------------------------------------------------------------- outputs never replace what is read

def copied(sources: list[Path], folder: Path, names: list[str] | None = None) -> list[Path]:
    """Copies under `folder` (named `names`): files a test may lose if the guard it checks is broken."""
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(src, folder / name)) for src, name in zip(sources, names or [s.name for s in sources])]


def test_export_output_must_be_named_for_its_format(work: dict, capsys: pytest.CaptureFixture,
                                                    tmp_path: Path) -> None:
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


def test_predict_refuses_to_replace_an_input_or_the_checkpoint(work: dict, capsys: pytest.CaptureFixture,
                                                               tmp_path: Path) -> None:
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


def test_export_cli_refuses_the_checkpoint(work: dict, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    (weights,) = copied([work["bare"]], tmp_path, ["weights.onnx"])
    before = weights.read_bytes()
    code, _, err = run_cli(capsys, "export", "--weights", weights, "--model", "cifar_resnet20", "--format", "onnx",
                           "--output", tmp_path / "." / "weights.onnx")
    assert_one_line_error(code, err, "export")
    assert "weights.onnx is the weights file this command reads; choose another path" in err
    assert weights.read_bytes() == before


def test_cam_refuses_to_replace_an_input_image(work: dict, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
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


def test_eval_refuses_to_replace_an_image_or_write_into_a_file(work: dict, capsys: pytest.CaptureFixture,
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


# ---------------------------------------------------------------- user mistakes

BAD_INPUT = [(command, case) for case in ("missing weights", "unknown model")
             for command in ("eval", "predict", "export", "cam")] + [("eval", "class mismatch"), ("eval", "tiny images")]


@pytest.mark.parametrize(("command", "case"), BAD_INPUT)
def test_bad_input_is_one_line_and_writes_nothing(work: dict, capsys: pytest.CaptureFixture, tmp_path: Path,
                                                  command: str, case: str) -> None:
    checkpoint = tmp_path / "nope" if case == "missing weights" else work["run"]
    model = ["--model", "resnet9000"] if case == "unknown model" else []
    out = tmp_path / "out"
    data = work["other"] if case == "class mismatch" else work["data"]
    argv = {
        "eval": ["--data-dir", data, "--output", out, "-j", "0"],
        "predict": ["--output", out / "p.csv", work["files"][0]],
        "export": ["--format", "onnx", "--output", out / "m.onnx"],
        "cam": ["--output", out, work["files"][0]],
    }[command]
    if case == "tiny images":  # training refuses them; eval did evaluate at 2 px
        argv += ["--img-size", "2"]
    code, stdout, err = run_cli(capsys, command, "--weights", checkpoint, *model, *argv)
    assert_one_line_error(code, err, command)
    assert {"missing weights": "no such weights file", "unknown model": "unknown model 'resnet9000'",
            "class mismatch": "durian", "tiny images": "too small"}[case] in err
    assert not out.exists()


def test_predict_in_small_batches_equals_the_model(work: dict) -> None:
    """From its second batch on, predict runs a BN-folded copy on the CPU: the same predictions."""
    from resnets.inference.predict import predict_images

    model = load_model(work["run"]).eval()
    files = work["files"][:5]
    predictions = predict_images(model, files, topk=1, batch_size=2, device="cpu", warn=lambda m: None)
    with torch.inference_mode():
        probs = model(preprocessed(model, files)).softmax(1)
    assert [p.classes[0] for p in predictions] == [CLASSES[i] for i in probs.argmax(1).tolist()]
    np.testing.assert_allclose([p.probabilities[0] for p in predictions], probs.max(1).values.numpy(), atol=1e-5)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the caller's model as it was


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: only a real device move creates new tensors")
def test_model_stays_trainable_after_predict(work: dict) -> None:
    """predict must not turn the weights into inference tensors (moving them inside inference_mode does)."""
    from resnets.inference.predict import predict_images

    model = load_model(work["run"])  # on the CPU; predict moves it to the GPU
    predict_images(model, work["files"][:2], device="cuda", warn=lambda m: None)
    assert not any(p.is_inference() for p in model.parameters())
    x = preprocessed(model, work["files"][:2]).cuda()
    assert grad_cam(model, x).heatmaps.shape == (2, 32, 32)
