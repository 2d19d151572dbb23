"""Shared fixtures for eval, predict, export and cam: a tiny trained model, its files and a folder of images.

The model is cifar_resnet20 with a classifier fitted on three synthetic classes, so its predictions and
Grad-CAM maps depend on the image (a random network's might not).
"""
from __future__ import annotations

import csv
import functools
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from resnets.cli import main
from resnets.data import eval_transform, load_image
from resnets.models.weights import save_weights

CLASSES = ["apple", "banana", "cherry"]  # listed in an order that is also their sorted order
PER_CLASS = 5


def _write_image_folder(synthetic_image: Callable, root: Path, classes: list[str], per_class: int,
                        seed: int) -> list[Path]:
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


@pytest.fixture(scope="session")
def work(tmp_path_factory: pytest.TempPathFactory, tiny_classifier: torch.nn.Module,
         synthetic_image: Callable) -> dict[str, Path]:
    """The trained model as a run folder and as a bare state dict, a val/ folder of its classes and a folder of
    other classes. Built once a session (it was once a module, when these tests were one file); the tests
    write nothing into it but `eval`'s default output folder, run/eval/."""
    root = tmp_path_factory.mktemp("tasks")
    model = tiny_classifier
    run = root / "run"
    save_weights(model, run / "best.safetensors")
    bare = root / "bare" / "weights.pth"
    bare.parent.mkdir()
    torch.save(model.state_dict(), bare)
    files = _write_image_folder(synthetic_image, root / "data" / "val", CLASSES, PER_CLASS, seed=2)
    _write_image_folder(synthetic_image, root / "other", ["apple", "banana", "durian"], 2, seed=3)
    return {"root": root, "run": run, "bare": bare, "data": root / "data", "files": files, "other": root / "other"}


def _run_cli(capsys: pytest.CaptureFixture, *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _preprocessed(model: torch.nn.Module, files: list[Path]) -> torch.Tensor:
    """A batch of `files` through the model's own eval preprocessing, as predict reads them."""
    transform = eval_transform(model.pretrained_cfg)
    return torch.stack([transform(load_image(p)) for p in files])


def _assert_one_line_error(code: int, err: str, command: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"resnets {command}: error: ")


@pytest.fixture
def write_image_folder(synthetic_image: Callable) -> Callable[..., list[Path]]:
    """`write_image_folder(root, classes, per_class, seed)`: PNG and JPEG files of the synthetic classes."""
    return functools.partial(_write_image_folder, synthetic_image)


@pytest.fixture
def run_cli() -> Callable[..., tuple[int, str, str]]:
    """`run_cli(capsys, *argv)`: `resnets.cli.main` as a user runs it; (exit code, stdout, stderr)."""
    return _run_cli


@pytest.fixture
def read_csv() -> Callable[[Path], list[dict[str, str]]]:
    return _read_csv


@pytest.fixture
def preprocessed() -> Callable[[torch.nn.Module, list[Path]], torch.Tensor]:
    """`preprocessed(model, files)`: a batch of `files` through the model's own eval preprocessing."""
    return _preprocessed


@pytest.fixture
def assert_one_line_error() -> Callable[[int, str, str], None]:
    """`assert_one_line_error(code, err, command)`: exit code 2 and one line, `resnets <command>: error: ...`."""
    return _assert_one_line_error
