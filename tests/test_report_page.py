"""report.html: written at the end of a run, rebuilt by `resnets report`, self-contained (no script, every image a
data: PNG), escaping the user's names, and saying what is missing for a run that never finished. The last test
loads it in headless Chromium (Debian's `chromium`, which `make test` installs where it can)."""
from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import resnets
from resnets.cli import main

# A class folder named with HTML's special characters: the page must show it as text, never as markup.
CLASSES = ("ant", "bee<b>&", "cat")
FAST = dict(model="cifar_resnet20", img_size=16, batch_size=8, workers=0, progress=False)
BROWSER_TIMEOUT = 120  # seconds: a browser that hangs fails this test, not the suite


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished 1-epoch run on three classes of tiny images (about 3 s)."""
    root = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(0)
    for label, name in enumerate(CLASSES):
        (root / "data" / name).mkdir(parents=True)
        for i in range(8):
            pixels = rng.integers(0, 60, (12, 12, 3), dtype=np.uint8) + 60 * label
            Image.fromarray(pixels).save(root / "data" / name / f"{i}.png")
    return resnets.train(data_dir=str(root / "data"), epochs=1, output=str(root / "runs"), name="run",
                         **FAST).run_dir


def _images(page: str) -> list[Image.Image]:
    """Every <img> of the page, decoded: each must be an inline PNG."""
    sources = re.findall(r"<img [^>]*src='([^']*)'", page)
    assert len(sources) == page.count("<img ")
    images = []
    for src in sources:
        assert src.startswith("data:image/png;base64,"), src[:60]
        image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1], validate=True)))
        image.load()
        assert image.format == "PNG"
        images.append(image)
    return images


def test_the_run_page_holds_the_runs_numbers_and_files(run: Path) -> None:
    page = (run / "report.html").read_text(encoding="utf-8")
    metrics = json.loads((run / "metrics.json").read_text())
    assert json.dumps(metrics["best_top1"]) in page and f"{metrics['best_top1']:.2f}%" in page
    assert json.dumps(metrics["best_val_loss"]) in page
    assert "<script" not in page.lower() and "http://" not in page and "https://" not in page
    assert len(_images(page)) == 2 + (run / "top_losses.png").exists()  # curves, confusion, top losses
    assert html.escape("bee<b>&") in page and "bee<b>" not in page
    for row in (run / "per_class.csv").read_text().splitlines()[1:]:
        assert html.escape(row.split(",")[0].strip('"')) in page
    for pair in metrics["confused_pairs"]:
        assert f"<td>{html.escape(pair['true'])}</td><td>{html.escape(pair['predicted'])}</td>" in page
    assert "Missing:" not in page and "Could not be read" not in page
    assert "recipe" in page and html.escape("img_size: 16") in page  # config.yaml, recipe first


def test_report_rebuilds_the_page_and_refuses_other_folders(run: Path, tmp_path: Path, capsys) -> None:
    (run / "report.html").unlink()
    assert main(["report", str(run)]) == 0
    assert (run / "report.html").is_file() and "wrote" in capsys.readouterr().out
    assert main(["report", str(run), "--output", str(tmp_path / "copy.html")]) == 0
    assert "best_top1" in (tmp_path / "copy.html").read_text(encoding="utf-8")
    for folder, needle in ((tmp_path, "neither a run folder"), (tmp_path / "nope", "no such folder")):
        code = main(["report", str(folder)])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and err.startswith("resnets report: error: ") and needle in err
    assert not (tmp_path / "report.html").exists()


def test_a_run_stopped_in_its_first_epoch_gets_a_page_that_says_what_is_missing(run: Path, tmp_path: Path,
                                                                                capsys) -> None:
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    shutil.copy(run / "config.yaml", stopped)  # what a run has before its first epoch ends
    assert main(["report", str(stopped)]) == 0, capsys.readouterr().err
    page = (stopped / "report.html").read_text(encoding="utf-8")
    assert "metrics.json: the run has not finished" in page and "summary.csv: no epoch has finished" in page
    assert "confusion_matrix.png is missing" in page and "predictions.csv is missing" in page
    assert "cifar_resnet20" in page and "<img" not in page


def test_damaged_files_are_named_on_the_page(run: Path, tmp_path: Path, capsys) -> None:
    damaged = tmp_path / "damaged"
    shutil.copytree(run, damaged, ignore=shutil.ignore_patterns("*.safetensors", "*.pt"))
    (damaged / "metrics.json").write_text("{not json")
    (damaged / "per_class.csv").write_text("")
    (damaged / "curves.png").write_bytes(b"GIF89a")
    (damaged / "config.yaml").write_text("model: [unclosed")
    assert main(["report", str(damaged)]) == 0, capsys.readouterr().err
    page = (damaged / "report.html").read_text(encoding="utf-8")
    assert page.count("Could not be read") == 4
    assert "per_class.csv is empty" in page and "curves.png is not a PNG file" in page
    assert len(_images(page)) == 1 + (run / "top_losses.png").exists()  # confusion matrix, top losses: still there


def test_a_csv_over_the_field_limit_is_named_not_a_traceback(run: Path, tmp_path: Path, capsys) -> None:
    garbled = tmp_path / "garbled"
    shutil.copytree(run, garbled, ignore=shutil.ignore_patterns("*.safetensors", "*.pt"))
    (garbled / "summary.csv").write_text('epoch,train_loss\n"' + "x" * 200_000)  # an unclosed quote to the end
    assert main(["report", str(garbled)]) == 0, capsys.readouterr().err
    assert "Could not be read: field larger than field limit" in (garbled / "report.html").read_text(encoding="utf-8")


def test_an_eval_folder_page_escapes_and_caps_its_lists(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "eval"
    folder.mkdir()
    (folder / "eval.json").write_text(json.dumps({"top1": 12.5, "top5": 50.0, "loss": 2.0, "num_samples": 8,
                                                  "weights": "<script>x</script>.safetensors", "data_dir": "d&d"}))
    rows = "".join(f"d&d/{i}.png,truncated\r\n" for i in range(600))
    (folder / "bad_files.csv").write_text("file,reason\r\n" + rows, encoding="utf-8")
    assert main(["report", str(folder)]) == 0, capsys.readouterr().err
    page = (folder / "report.html").read_text(encoding="utf-8")
    assert "<script" not in page and html.escape("<script>x</script>.safetensors") in page
    assert "12.50%" in page and "d&amp;d/599.png" not in page and "... and 100 more rows" in page
    assert "confusion_matrix.png is missing" in page and "predictions.csv is missing" in page


def _browse(chromium: str, page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
               f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args, page.resolve().as_uri()]
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=BROWSER_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"chromium did not finish within {BROWSER_TIMEOUT} s")


def test_the_page_in_a_real_browser(run: Path, tmp_path: Path, chromium_binary: str) -> None:
    chromium = chromium_binary
    page = run / "report.html"
    shot = tmp_path / "page.png"
    done = _browse(chromium, page, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1200,3000")
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    assert console == []  # no script, no failed load: the console stays empty
    with Image.open(shot) as image:
        assert image.format == "PNG" and image.size == (1200, 3000)
        pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 10 and (pixels < 100).mean() > 0.005  # text and figures drawn, not a blank page

    done = _browse(chromium, page, tmp_path / "profile", "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    metrics = json.loads((run / "metrics.json").read_text())
    assert json.dumps(metrics["best_top1"]) in dom  # the page's text holds the run's numbers, as written
    assert f"{metrics['best_top1']:.2f}%" in dom
    images = re.findall(r'<img [^>]*src="([^"]*)"', dom)  # the DOM as the browser serialises it
    assert len(images) == 2 + (run / "top_losses.png").exists()
    for src in images:
        assert src.startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()
