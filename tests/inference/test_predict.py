"""`resnets predict` and predict_images on the tiny trained model: the rows, their probabilities against the
model's own, bare weights, unreadable images, small batches."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from resnets.data import list_images
from resnets.hub import load_model
from resnets.inference.cam import grad_cam

CLASSES = ["apple", "banana", "cherry"]  # listed in an order that is also their sorted order


def test_predict_rows_match_inputs(run_cli, read_csv, preprocessed, work: dict, capsys: pytest.CaptureFixture,
                                   tmp_path: Path) -> None:
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


def test_predict_default_prints_csv_and_bare_weights_use_indices(run_cli, work: dict,
                                                                 capsys: pytest.CaptureFixture) -> None:
    code, out, err = run_cli(capsys, "predict", "--weights", work["bare"], "--model", "cifar_resnet20",
                             work["files"][0])
    assert code == 0, err
    rows = list(csv.DictReader(out.splitlines()))
    assert len(rows) == 1 and rows[0]["file"] == str(work["files"][0])
    assert {rows[0][f"top{i}_class"] for i in (1, 2, 3)} == {"0", "1", "2"}  # no class names: indices


def test_predict_bare_weights_without_model(run_cli, assert_one_line_error, work: dict, capsys: pytest.CaptureFixture,
                                            tmp_path: Path) -> None:
    out_csv = tmp_path / "preds.csv"
    code, _, err = run_cli(capsys, "predict", "--weights", work["bare"], "--output", out_csv, work["files"][0])
    assert_one_line_error(code, err, "predict")
    assert "--model" in err
    assert not out_csv.exists()


def test_predict_no_readable_image(run_cli, assert_one_line_error, work: dict, capsys: pytest.CaptureFixture,
                                   tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8 truncated")
    code, _, err = run_cli(capsys, "predict", "--weights", work["run"], "--output", tmp_path / "p.csv",
                           tmp_path / "a.jpg")
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("resnets predict: error: no readable images")
    assert not (tmp_path / "p.csv").exists()
    code, _, err = run_cli(capsys, "predict", "--weights", work["run"], "--topk", "4", work["files"][0])
    assert_one_line_error(code, err, "predict")


def test_predict_in_small_batches_equals_the_model(preprocessed, work: dict) -> None:
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
def test_model_stays_trainable_after_predict(preprocessed, work: dict) -> None:
    """predict must not turn the weights into inference tensors (moving them inside inference_mode does)."""
    from resnets.inference.predict import predict_images

    model = load_model(work["run"])  # on the CPU; predict moves it to the GPU
    predict_images(model, work["files"][:2], device="cuda", warn=lambda m: None)
    assert not any(p.is_inference() for p in model.parameters())
    x = preprocessed(model, work["files"][:2]).cuda()
    assert grad_cam(model, x).heatmaps.shape == (2, 32, 32)
