"""Shared fixtures for eval, predict, export and cam: a tiny trained model, its files and a folder of images.

The model is cifar_resnet20 with a classifier fitted on three synthetic classes, so its predictions and
Grad-CAM maps depend on the image (a random network's might not).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from resnets.cli import main
from resnets.data import eval_transform, load_image
from resnets import create_model
from resnets.models.weights import save_weights

CLASSES = ["apple", "banana", "cherry"]  # listed in an order that is also their sorted order
PER_CLASS = 5


def _synthetic_image(label: int, rng: np.random.Generator, size: int = 40) -> np.ndarray:
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


def _write_image_folder(root: Path, classes: list[str], per_class: int, seed: int) -> list[Path]:
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
            Image.fromarray(_synthetic_image(shown, rng)).save(path)
            files.append(path)
    return files


def _train_tiny_model(num_images: int = 48, steps: int = 150) -> torch.nn.Module:
    """Random backbone, classifier fitted on its pooled features: a model whose outputs depend on the image,
    in ~1 s (full training of even cifar_resnet20 costs ~0.5 s a step on 2 busy cores)."""
    torch.manual_seed(0)
    model = create_model("cifar_resnet20", num_classes=len(CLASSES), zero_init_last=False).eval()
    transform = eval_transform(model.pretrained_cfg)
    rng = np.random.default_rng(1)
    labels = torch.arange(num_images) % len(CLASSES)
    images = torch.stack([transform(Image.fromarray(_synthetic_image(int(y), rng))) for y in labels])
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


@pytest.fixture(scope="session")
def work(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The trained model as a run folder and as a bare state dict, a val/ folder of its classes and a folder of
    other classes. Built once a session (it was once a module, when these tests were one file); the tests
    write nothing into it but `eval`'s default output folder, run/eval/."""
    root = tmp_path_factory.mktemp("tasks")
    model = _train_tiny_model()
    run = root / "run"
    save_weights(model, run / "best.safetensors")
    bare = root / "bare" / "weights.pth"
    bare.parent.mkdir()
    torch.save(model.state_dict(), bare)
    files = _write_image_folder(root / "data" / "val", CLASSES, PER_CLASS, seed=2)
    _write_image_folder(root / "other", ["apple", "banana", "durian"], 2, seed=3)
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
def write_image_folder() -> Callable[..., list[Path]]:
    """`write_image_folder(root, classes, per_class, seed)`: PNG and JPEG files of the synthetic classes."""
    return _write_image_folder


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
