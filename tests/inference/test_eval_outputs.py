"""`resnets eval`'s per-image outputs: predictions.csv agrees with eval.json image by image, top_losses.png shows the
known mistakes (with Grad-CAM on request), the confused pairs are the known confusions, and a broken file shifts
no row onto another image's path."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from resnets.data.datasets import TensorImages
from resnets.evaluation import EvalResult, evaluate, merge_results
from resnets.per_image import confused_pairs, evaluated_items, top_losses
from resnets.training.run_dir import RunDir

CLASSES = ["apple", "banana", "cherry"]  # as conftest.py names them
PER_CLASS = 5


def test_predictions_csv_agrees_with_eval_json(run_cli, read_csv, work: dict, capsys, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    before = {f: f.read_bytes() for f in work["files"]}
    code, stdout, err = run_cli(capsys, "eval", "--weights", work["run"], "--data-dir", work["data"], "-j", "0",
                                "-b", "4", "--output", out)
    assert code == 0, err
    assert {f: f.read_bytes() for f in work["files"]} == before  # every output went into --output
    summary = json.loads((out / "eval.json").read_text())
    rows = read_csv(out / "predictions.csv")
    assert list(rows[0]) == ["path", "true", "predicted", "probability", "loss"]
    assert sorted(r["path"] for r in rows) == sorted(str(f) for f in work["files"])
    for r in rows:  # each row is the image its path names: the true class is its folder
        assert r["true"] == Path(r["path"]).parent.name
        assert 1 / len(CLASSES) <= float(r["probability"]) <= 1
    assert 100 * sum(r["true"] == r["predicted"] for r in rows) / len(rows) == pytest.approx(summary["top1"])
    assert np.mean([float(r["loss"]) for r in rows]) == pytest.approx(summary["loss"], abs=1e-5)
    # The fixture's known mistakes: each class's last image shows the next class's pattern.
    wrong = {(r["true"], r["predicted"]) for r in rows if r["true"] != r["predicted"]}
    assert wrong == {("apple", "banana"), ("banana", "cherry"), ("cherry", "apple")}
    assert {(p["true"], p["predicted"], p["count"]) for p in summary["confused_pairs"]} == {
        (t, p, 1) for t, p in wrong}
    assert all(p["share_of_true"] == pytest.approx(1 / PER_CLASS) for p in summary["confused_pairs"])
    assert "most confused (true -> predicted): " in stdout
    with Image.open(out / "top_losses.png") as img:
        assert img.format == "PNG" and img.width > 3 * 150  # three tiles side by side
    assert summary["files"]["top_losses"] == str(out / "top_losses.png")
    page = (out / "report.html").read_text(encoding="utf-8")
    assert json.dumps(summary["top1"]) in page and "Most-confused pairs" in page


def test_top_losses_flags(run_cli, work: dict, capsys, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    base = ["eval", "--weights", work["run"], "--data-dir", work["data"], "-j", "0", "--output", out]
    assert run_cli(capsys, *base, "--top-losses", "1")[0] == 0
    one = Image.open(out / "top_losses.png")
    assert run_cli(capsys, *base, "--top-losses", "1", "--top-losses-cam")[0] == 0
    with_cam = Image.open(out / "top_losses.png")
    assert with_cam.size == one.size and one.width < 400  # a single tile
    diff = np.abs(np.asarray(with_cam.convert("RGB"), dtype=int) - np.asarray(one.convert("RGB"), dtype=int))
    assert diff.mean() > 5  # the heatmap is over the image
    assert run_cli(capsys, *base, "--top-losses", "0")[0] == 0
    assert not (out / "top_losses.png").exists()  # the earlier grid is gone, not left to mislead
    assert "top_losses" not in json.loads((out / "eval.json").read_text())["files"]
    code, _, err = run_cli(capsys, *base, "--top-losses", "-1")
    assert code == 2 and "--top-losses must be >= 0" in err


def test_a_broken_file_shifts_no_row(run_cli, read_csv, work: dict, capsys, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(work["data"], data)
    broken = data / "val" / "banana" / "banana_0.png"  # sorts among the first of its class: rows after it shift
    broken.write_bytes(b"not an image")
    out = tmp_path / "eval"
    code, _, err = run_cli(capsys, "eval", "--weights", work["run"], "--data-dir", data, "-j", "0", "-b", "4",
                           "--output", out, "--max-bad-fraction", "0.2")
    assert code == 0, err
    rows = read_csv(out / "predictions.csv")
    assert len(rows) == len(CLASSES) * PER_CLASS - 1 and str(broken) not in {r["path"] for r in rows}
    assert all(r["true"] == Path(r["path"]).parent.name for r in rows)
    assert "banana_0.png" in (out / "report.html").read_text(encoding="utf-8")  # in the unreadable files' list


def _result(targets, predictions, losses):
    n = len(targets)
    return type("R", (), dict(targets=torch.tensor(targets), predictions=torch.tensor(predictions),
                              losses=torch.tensor(losses), num_samples=n))


def test_top_losses_are_the_wrong_ones_worst_first() -> None:
    result = _result([0, 1, 2, 0, 1], [0, 2, 2, 1, 0], [9.0, 1.5, 0.1, 2.5, 0.7])
    assert top_losses(result, 10) == [3, 1, 4]  # row 0 has the highest loss but is right
    assert top_losses(result, 2) == [3, 1]
    assert top_losses(_result([0, 1], [0, 1], [1.0, 2.0]), 5) == []


def test_confused_pairs_are_the_largest_off_diagonal_cells() -> None:
    cm = np.array([[50, 3, 0], [7, 40, 1], [0, 0, 9]])
    pairs = confused_pairs(cm, ["a", "b", "c"], k=2)
    assert pairs == [{"true": "b", "predicted": "a", "count": 7, "share_of_true": pytest.approx(7 / 48)},
                     {"true": "a", "predicted": "b", "count": 3, "share_of_true": pytest.approx(3 / 53)}]
    assert len(confused_pairs(cm, ["a", "b", "c"])) == 3  # only cells that hold a mistake
    assert confused_pairs(np.diag([4, 5]), ["a", "b"]) == []


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_items_follow_the_shards_as_merged(world_size: int) -> None:
    """The training's val shards (rank r: r, r + W, ...) merged in rank order give rows that `evaluated_items`
    names: each row's target is its item's label."""
    labels = [i % 4 for i in range(11)]
    images = torch.arange(11, dtype=torch.uint8)[:, None, None, None].expand(11, 3, 4, 4).contiguous()
    dataset = TensorImages(images, labels)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 4))
    parts = [evaluate(model, DataLoader(dataset, batch_size=2, sampler=range(r, 11, world_size)),
                      torch.device("cpu"), keep_losses=True, allow_empty=True,
                      normalize=lambda x: x.float() / 255) for r in range(world_size)]
    result = merge_results(parts)
    items = evaluated_items(dataset, world_size=world_size)
    assert [labels[int(name[1:])] for name in items.names] == result.targets.tolist()
    assert [int(items.image(row)[0, 0, 0]) for row in range(11)] == [int(n[1:]) for n in items.names]
    assert float(result.losses.sum()) == pytest.approx(result.loss_sum)
    assert result.confidences.shape == (11,) and (result.confidences >= 0.25).all()
    # with the unreadable ones left out of the names as they were out of the batches
    assert evaluated_items(dataset, skipped={"#3", "#4"}, world_size=world_size).indices == [
        i for i in items.indices if i not in (3, 4)]


def test_keep_losses_matches_cross_entropy() -> None:
    logits = torch.randn(6, 5)
    targets = torch.tensor([0, 1, 2, 3, 4, 0])
    model = torch.nn.Identity()
    result = evaluate(model, [(logits[:4], targets[:4]), (logits[4:], targets[4:])], torch.device("cpu"),
                      keep_losses=True)
    expected = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    torch.testing.assert_close(result.losses, expected)
    torch.testing.assert_close(result.confidences, logits.softmax(1).amax(1))
    assert result.loss == pytest.approx(float(expected.mean()), rel=1e-6)
    assert evaluate(model, [(logits, targets)], torch.device("cpu")).losses is None  # only when asked


def test_a_run_report_whose_items_do_not_match_writes_no_rows_that_could_be_wrong(tmp_path: Path, capsys) -> None:
    result = EvalResult(3.0, 1, 3, 3, torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]), None,
                        torch.tensor([0.5, 2.0, 0.5]), torch.tensor([0.6, 0.8, 0.6]))
    dataset = TensorImages(torch.zeros(3, 3, 4, 4, dtype=torch.uint8), [0, 0, 1])
    (tmp_path / "predictions.csv").write_text("from an earlier finish")
    RunDir(tmp_path).write_report({"best_top1": 33.3}, result, ["a", "b"], evaluated_items(dataset, skipped={"#1"}))
    assert "no predictions.csv: 2 val images known readable but 3 evaluated" in capsys.readouterr().err
    assert not (tmp_path / "predictions.csv").exists() and (tmp_path / "metrics.json").is_file()
    RunDir(tmp_path).write_report({"best_top1": 33.3}, result, ["a", "b"], evaluated_items(dataset))
    assert len((tmp_path / "predictions.csv").read_text().splitlines()) == 4 and (tmp_path / "top_losses.png").is_file()
    assert "report.html" in {p.name for p in tmp_path.iterdir()}
