"""Fine-tuning from pretrained weights (issue 17): the classifier alone for --head-epochs (backbone and its BN
statistics untouched), then the whole model with --layer-decay; and what it is for, a model fine-tuned on a few
images per class far ahead of the same model trained from scratch on them."""
from __future__ import annotations

import contextlib
import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

import resnets
import resnets.training.run_dir as run_dir_module
from resnets.data.datasets import digits_images
from resnets.errors import ConfigError
from resnets.models import build_model, list_models
from resnets.models.weights import save_weights
from resnets.training.checkpoint import list_checkpoints, load_checkpoint
from resnets.training.config import TrainConfig, make_config
from resnets.training.finetune import head_only, set_trainable
from resnets.training.optim import OPTIMIZERS, head_lr, make_optimizer, param_groups, set_lr

# The options as given: --recipe auto would choose the lr, the batch, the head epochs and the layer decay itself.
# 16 px: the 8x8 digits lose nothing, at a quarter of 32 px's compute.
AS_GIVEN = dict(recipe="imagenet", img_size=16, progress=False, workers=0)


@contextlib.contextmanager
def pictures_off() -> Iterator[None]:
    """The curves and the final report are not what these tests are about, and cost ~2 s an epoch and ~8 s a
    run on two cores."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run_dir_module, "plot_curves", lambda *args, **kwargs: {})
        patch.setattr(run_dir_module.RunDir, "write_report", lambda self, metrics, *args, **kwargs: metrics)
        yield


@pytest.fixture(autouse=True)
def no_pictures():
    with pictures_off():
        yield


def write_digits(root: Path, indices: np.ndarray, images: torch.Tensor, labels: np.ndarray) -> Path:
    """PNG files of the built-in digits in class folders."""
    for i in indices:
        folder = root / str(labels[i])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i].permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    return root


def digit_split(root: Path, classes: range, train_per_class: int, val_per_class: int, seed: int) -> Path:
    """train/ and val/ folders of the digits `classes`: `train_per_class` images of each to learn from."""
    images, labels = digits_images()
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    for c in classes:
        chosen = rng.permutation(np.flatnonzero(labels == c))
        write_digits(root / "train", chosen[:train_per_class], images, labels)
        write_digits(root / "val", chosen[train_per_class:train_per_class + val_per_class], images, labels)
    return root


@pytest.fixture(scope="module")
def few_fives_to_nines(tmp_path_factory) -> Path:
    """The target set: 10 training images of each digit 5-9, 60 of each to validate on."""
    return digit_split(tmp_path_factory.mktemp("target"), range(5, 10), 10, 60, seed=0)


@pytest.fixture(scope="module")
def trained_on_zero_to_four(tmp_path_factory) -> Path:
    """The run folder of a cifar_resnet20 trained on the digits 0-4 (901 images, 721 to train on): 100% of its
    validation images right, in ~11 s on two cores."""
    images, labels = digits_images()
    labels = np.asarray(labels)
    root = tmp_path_factory.mktemp("source")
    write_digits(root / "digits", np.flatnonzero(labels < 5), images, labels)
    with pictures_off():
        return resnets.train(data_dir=str(root / "digits"), epochs=8, batch_size=64, output=str(root / "runs"),
                             name="zero-to-four", **AS_GIVEN).run_dir


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory) -> Path:
    """Weights to fine-tune from in the mechanism tests: random, for 10 classes, with BN statistics of their own
    (a fresh model's mean 0 and variance 1 would also pass for "as loaded" if loading had skipped them)."""
    model = build_model("cifar_resnet20", num_classes=10)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
    path = tmp_path_factory.mktemp("weights") / "random.safetensors"
    save_weights(model, path)
    return path


# ---------------------------------------------------------------- layer-wise lr decay

def expected_scale(name: str, stages: list[str], decay: float) -> float:
    top = name.split(".")[0]
    if top == "fc":
        return 1.0
    depth = stages.index(top) + 1 if top in stages else 0  # conv1, bn1 (a deep stem's conv1.0 ...): the stem
    return decay ** (len(stages) + 1 - depth)


@pytest.mark.parametrize("name", list_models())
def test_layer_decay_scales_each_stage_from_the_head_back(name):
    with torch.device("meta"):
        model = build_model(name, num_classes=5)
    stages = [info["module"] for info in model.feature_info if info["module"].startswith("layer")]
    assert len(stages) in (3, 4)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = param_groups(model, weight_decay=1e-4, layer_decay=0.5)
    assert sorted(id(p) for g in groups for p in g["params"]) == sorted(names)  # each parameter once
    for group in groups:
        for p in group["params"]:
            assert group["lr_scale"] == expected_scale(names[id(p)], stages, 0.5), names[id(p)]
            assert group["weight_decay"] == (1e-4 if p.ndim > 1 else 0.0), names[id(p)]  # none on BN and biases
    assert min(g["lr_scale"] for g in groups) == 0.5 ** (len(stages) + 1)  # the stem, slowest


@pytest.mark.parametrize("off", [None, 1.0])
def test_without_layer_decay_two_groups_as_before(off):
    model = build_model("cifar_resnet20", num_classes=5)
    groups = param_groups(model, weight_decay=1e-4, layer_decay=off)
    assert [(g["weight_decay"], g["lr_scale"]) for g in groups] == [(1e-4, 1.0), (0.0, 1.0)]
    assert [len(g["params"]) for g in groups] == [sum(p.ndim > 1 for p in model.parameters()),
                                                  sum(p.ndim <= 1 for p in model.parameters())]


def test_each_step_sets_the_scheduled_lr_times_the_groups_scale():
    model = build_model("cifar_resnet20", num_classes=5)
    optimizer = make_optimizer(model, TrainConfig(layer_decay=0.7))
    set_lr(optimizer, 0.2, 0.5)
    assert [g["lr"] for g in optimizer.param_groups] == [0.1 * g["lr_scale"] for g in optimizer.param_groups]
    assert {round(g["lr_scale"], 6) for g in optimizer.param_groups} == {1.0, 0.7, 0.49, 0.343, 0.2401}
    assert head_lr(optimizer) == 0.1  # what summary.csv logs: the schedule's own rate


@pytest.mark.parametrize("values, needle", [
    (dict(layer_decay=0.0), "layer-decay must be in"), (dict(layer_decay=1.5), "layer-decay must be in"),
    (dict(head_epochs=-1), "head-epochs must be >= 0"),
    (dict(head_epochs=8, epochs=8), "no epoch of --epochs 8"),
    (dict(head_epochs=1, freeze_backbone=True), "drop --head-epochs"),
    (dict(layer_decay=0.5, freeze_backbone=True), "--layer-decay slows the backbone"),
    (dict(head_epochs=1, ddp_static_graph=True), "--ddp-static-graph"),
])
def test_fine_tuning_mistakes_are_one_line_errors(values, needle):
    with pytest.raises(ConfigError, match=needle):
        make_config(values).resolved()


# ---------------------------------------------------------------- the head alone first

@pytest.mark.parametrize("opt", OPTIMIZERS)
def test_the_head_epochs_leave_the_backbone_and_its_bn_statistics_bit_for_bit(opt):
    # Weight decay and momentum would move a parameter whose gradient is zero: frozen means no gradient at all,
    # in each optimizer (fused, as on the CPU since torch 2.4, and on GPUs)
    model = build_model("cifar_resnet20", num_classes=5)
    cfg = TrainConfig(opt=opt, head_epochs=1, epochs=2, weight_decay=0.05, layer_decay=0.7)
    optimizer = make_optimizer(model, cfg)
    assert optimizer.defaults["fused"]
    generator = torch.Generator().manual_seed(0)

    def train(epoch: int, steps: int) -> None:
        set_trainable(model, head_only(cfg, epoch))
        set_lr(optimizer, 0.1, 1.0)
        for _ in range(steps):
            images = torch.randn(8, 3, 16, 16, generator=generator)
            labels = torch.randint(0, 5, (8,), generator=generator)
            F.cross_entropy(model(images), labels).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    def weights() -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in model.state_dict().items()}

    start = weights()
    train(epoch=1, steps=3)
    after_head = weights()
    assert {k for k in start if not torch.equal(start[k], after_head[k])} == {"fc.weight", "fc.bias"}
    train(epoch=2, steps=1)  # then everything: weights and statistics
    moved = {k for k in start if not torch.equal(after_head[k], model.state_dict()[k])}
    assert {"conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer3.2.bn2.running_var"} <= moved


def test_training_a_whole_model_asks_nothing_of_its_classifier():
    plain = torch.nn.Linear(4, 3)  # what the trainer's own step tests train: no get_classifier()
    set_trainable(plain, head_only=False)
    assert plain.training and all(p.requires_grad for p in plain.parameters())


def summary_rows(run_dir: Path) -> list[tuple[str, ...]]:
    """summary.csv's numbers, but the time they took."""
    keys = ("epoch", "train_loss", "train_top1", "val_loss", "val_top1", "lr")
    return [tuple(row[k] for k in keys) for row in csv.DictReader((run_dir / "summary.csv").open())]


def test_resume_in_and_after_the_head_epochs_equals_the_uninterrupted_run(few_fives_to_nines, random_weights,
                                                                           tmp_path):
    # 50 images in batches of 16: 3 steps an epoch, a checkpoint after each
    options = dict(data_dir=str(few_fives_to_nines), pretrained=str(random_weights), remap_classes=True, epochs=3,
                   head_epochs=1, layer_decay=0.5, lr=0.05, batch_size=16, checkpoint_every=1, keep_checkpoints=20,
                   **AS_GIVEN)
    straight = resnets.train(output=str(tmp_path), name="straight", **options).run_dir
    # After the head epoch: the backbone, its BN statistics included, exactly as loaded
    loaded = load_file(str(random_weights))
    boundary = load_checkpoint(straight / "checkpoint-0002-000000003.pt")["model"]
    assert all(torch.equal(boundary[k], v) for k, v in loaded.items() if not k.startswith("fc."))
    final = load_file(str(straight / "last.safetensors"))
    assert not torch.equal(final["conv1.weight"], loaded["conv1.weight"])  # then it trained

    for name in ("checkpoint-0001-000000002.pt", "checkpoint-0002-000000003.pt"):  # within, and at the end of, it
        copy = tmp_path / f"from-{name}"
        shutil.copytree(straight, copy)
        resnets.train(resume=str(copy / name), progress=False)
        resumed = load_file(str(copy / "last.safetensors"))
        assert all(torch.equal(resumed[k], final[k]) for k in final), name
        assert summary_rows(copy) == summary_rows(straight), name


def test_two_processes_train_the_head_alone_then_everything(few_fives_to_nines, random_weights, tmp_path):
    # DDP waits for a gradient of every parameter unless told that some get none: the head epochs must neither
    # hang nor fail, and must leave the backbone as loaded on every process
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "--monitor-interval=0.5"]
    args = ["--data-dir", few_fives_to_nines, "--pretrained", random_weights, "--remap-classes", "--epochs", "2",
            "--head-epochs", "1", "--layer-decay", "0.5", "--lr", "0.05", "-b", "8", "--recipe", "imagenet",
            "--img-size", "16", "--no-progress", "--device", "cpu", "--output", tmp_path, "--name", "ddp"]
    done = subprocess.run([*launcher, "-m", "resnets", "train", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = load_file(str(random_weights))
    run_dir = tmp_path / "ddp"
    (boundary,) = [p for p in list_checkpoints(run_dir) if p.name.startswith("checkpoint-0002-")]
    after_head = load_checkpoint(boundary)["model"]
    assert all(torch.equal(after_head[k], v) for k, v in loaded.items() if not k.startswith("fc."))
    final = load_file(str(run_dir / "last.safetensors"))
    assert not torch.equal(final["conv1.weight"], loaded["conv1.weight"])  # the second epoch trained everything


# ---------------------------------------------------------------- what it is for

def test_fine_tuned_from_other_digits_beats_the_same_model_from_scratch(trained_on_zero_to_four, few_fives_to_nines,
                                                                        tmp_path):
    # 5-9 from 10 images each, 40 steps (batches of 25, 20 epochs), the same options but the start. Over seeds
    # 0-9 (each its own draw of the 10 images): fine-tuned 82 top-1 on average, from scratch 62 (32 to 77); the
    # margin 11 to 55 points, 15 the median. Seed 0, this test: 74 against 60.
    common = dict(data_dir=str(few_fives_to_nines), epochs=20, batch_size=25, lr=0.1, output=str(tmp_path), **AS_GIVEN)
    scratch = resnets.train(name="scratch", **common)
    tuned = resnets.train(name="tuned", pretrained=str(trained_on_zero_to_four), remap_classes=True, head_epochs=4,
                          **common)
    assert tuned.best_top1 >= scratch.best_top1 + 10, (tuned.best_top1, scratch.best_top1)
