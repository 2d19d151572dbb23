"""Test-time augmentation: the wrapper's averages computed by hand, `eval --tta` beside the plain figures,
`predict --tta`, and the sizes a model cannot take refused in one line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resnets.data import list_images
from resnets.errors import ConfigError
from resnets.hub import load_model
from resnets.inference.tta import FLIP, FLIP_SIZE, TTA, TTAConfig, check_tta

CLASSES = ["apple", "banana", "cherry"]


@pytest.fixture(scope="module")
def model(work: dict) -> nn.Module:
    return load_model(work["run"]).eval()


def test_a_mirror_symmetric_image_gets_the_plain_prediction(model: nn.Module) -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    with torch.inference_mode():
        plain = model(x).softmax(1)
        symmetric = (x + x.flip(3)) / 2
        assert torch.allclose(TTA(model)(symmetric).softmax(1), model(symmetric).softmax(1), atol=1e-6)
        assert not torch.allclose(TTA(model)(x).softmax(1), plain, atol=1e-4)  # else the test above proves nothing


def test_tta_probabilities_are_the_mean_of_the_views_probabilities(model: nn.Module) -> None:
    torch.manual_seed(1)
    raw = torch.rand(3, 3, 32, 32)  # [0, 1] pixels
    mean, std = (torch.tensor(v)[:, None, None] for v in (model.pretrained_cfg.mean, model.pretrained_cfg.std))
    x = (raw - mean) / std
    # The large views by hand from the [0, 1] image, normalised after the resize: the wrapper resizes the
    # normalised batch, which must come to the same.
    big = (F.interpolate(raw, size=(40, 40), mode="bilinear", align_corners=False, antialias=True) - mean) / std
    with torch.inference_mode():
        views = [model(v).softmax(1) for v in (x, x.flip(3), big, big.flip(3))]
        by_hand = torch.stack(views).mean(0)
        flips_by_hand = torch.stack(views[:2]).mean(0)
        out = TTA(model, size=40, interpolation="bilinear")(x)
        flips = TTA(model)(x)
    assert torch.allclose(out.exp(), by_hand, atol=1e-5)  # the log of the mean probability
    assert torch.allclose(out.softmax(1), by_hand, atol=1e-5)  # what predict shows
    assert torch.allclose(flips.softmax(1), flips_by_hand, atol=1e-5)
    assert not torch.allclose(by_hand, flips_by_hand, atol=1e-4)  # the large views count


def _tta_by_hand(model: nn.Module, files: list[Path], preprocessed, size: int | None) -> dict[str, float]:
    """top1 and loss (mean negative log of the averaged probability of the true class) of the wrapper."""
    labels = torch.tensor([CLASSES.index(p.parent.name) for p in files])
    with torch.inference_mode():
        probs = TTA(model, size)(preprocessed(model, files)).softmax(1)
    return {"top1": 100.0 * (probs.argmax(1) == labels).float().mean().item(),
            "loss": -probs[torch.arange(len(files)), labels].log().mean().item()}


def test_eval_tta_reports_both_figures_and_keeps_the_plain_ones(run_cli, preprocessed, model, work: dict,
                                                                capsys: pytest.CaptureFixture,
                                                                tmp_path: Path) -> None:
    args = ["eval", "--weights", work["run"], "--data-dir", work["data"], "--device", "cpu", "-j", "0"]
    code, _, err = run_cli(capsys, *args, "--output", tmp_path / "plain")
    assert code == 0, err
    plain = json.loads((tmp_path / "plain" / "eval.json").read_text())
    assert "tta" not in plain

    code, out, err = run_cli(capsys, *args, "--output", tmp_path / "tta", "--tta-size", "40")  # implies --tta
    assert code == 0, err
    summary = json.loads((tmp_path / "tta" / "eval.json").read_text())
    tta = summary["tta"]
    assert set(tta) == {FLIP, FLIP_SIZE}
    assert (tta[FLIP]["views"], tta[FLIP]["size"], tta[FLIP_SIZE]["views"], tta[FLIP_SIZE]["size"]) == (2, None, 4, 40)
    for key in ("top1", "top5", "per_class"):  # the plain model's, as without --tta
        assert summary[key] == plain[key]
    assert summary["loss"] == pytest.approx(plain["loss"], rel=1e-6)
    files = sorted(list_images([work["data"] / "val"]))
    for name, size in ((FLIP, None), (FLIP_SIZE, 40)):
        by_hand = _tta_by_hand(model, files, preprocessed, size)
        assert tta[name]["top1"] == pytest.approx(by_hand["top1"])
        assert tta[name]["loss"] == pytest.approx(by_hand["loss"], rel=1e-4)
    assert tta[FLIP_SIZE]["loss"] != pytest.approx(tta[FLIP]["loss"], rel=1e-3)  # so the two are told apart
    assert (f"top-1 {plain['top1']:.2f}% (TTA: {tta[FLIP_SIZE]['top1']:.2f}%)  "
            f"top-5 {plain['top5']:.2f}% (TTA: {tta[FLIP_SIZE]['top5']:.2f}%)") in out
    assert f"at 40px; the 2 at the test size alone: top-1 {tta[FLIP]['top1']:.2f}%" in out


def test_predict_tta_prints_the_mean_probabilities(run_cli, read_csv, preprocessed, model, work: dict,
                                                   capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    files = work["files"][:4]
    code, _, err = run_cli(capsys, "predict", "--weights", work["run"], "--tta", "--topk", "3", "-b", "3",
                           "--device", "cpu", "--output", tmp_path / "tta.csv", *files)
    assert code == 0, err
    rows = read_csv(tmp_path / "tta.csv")
    assert [r["file"] for r in rows] == [str(p) for p in files]
    x = preprocessed(model, files)
    with torch.inference_mode():
        by_hand = torch.stack([model(x).softmax(1), model(x.flip(3)).softmax(1)]).mean(0)
        plain = model(x).softmax(1)
    got = torch.tensor([[float(r[f"top{i}_prob"]) for i in (1, 2, 3)] for r in rows])
    order = [[CLASSES.index(r[f"top{i}_class"]) for i in (1, 2, 3)] for r in rows]
    expected = torch.stack([by_hand[n, idx] for n, idx in enumerate(order)])
    assert torch.allclose(got, expected, atol=1e-5)  # across batches: the BN-folded copy from the second on
    assert not torch.allclose(got, torch.stack([plain[n, idx] for n, idx in enumerate(order)]), atol=1e-4)


@pytest.mark.parametrize("command", ["eval", "predict"])
@pytest.mark.parametrize("size, says", [("2", "downsamples by 4, so use at least 4"),
                                        ("0", "--tta-size must be positive"),
                                        ("32", "is the test size already")])
def test_a_tta_size_the_model_cannot_use_is_one_line(run_cli, assert_one_line_error, work: dict,
                                                     capsys: pytest.CaptureFixture, tmp_path: Path,
                                                     command: str, size: str, says: str) -> None:
    where = ["--data-dir", work["data"], "--output", tmp_path / "out"] if command == "eval" else [work["files"][0]]
    code, out, err = run_cli(capsys, command, "--weights", work["run"], "--tta", "--tta-size", size,
                             "--device", "cpu", *where)
    assert_one_line_error(code, err, command)
    assert says in err and out == ""
    assert not (tmp_path / "out").exists()  # refused before any work


def test_a_model_of_fixed_input_size_takes_flips_but_no_other_size() -> None:
    fixed = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 3))  # as an export traced at 32x32 is
    x = torch.randn(2, 3, 32, 32)
    check_tta(fixed, TTAConfig(), (3, 32, 32), 2, torch.device("cpu"))
    assert TTA(fixed)(x).shape == (2, 3)
    with pytest.raises(ConfigError, match=r"--tta-size 40: the model does not take 40x40 inputs \(a fixed input "
                                          r"size\?\).*; use --tta without --tta-size"):
        check_tta(fixed, TTAConfig(40), (3, 32, 32), 2, torch.device("cpu"))
    assert fixed.training  # the probe left the mode as it found it
    check_tta(nn.Sequential(nn.Conv2d(3, 3, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()), TTAConfig(40), (3, 32, 32),
              2, torch.device("cpu"))  # a model that takes any size passes the probe
