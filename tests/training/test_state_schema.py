"""A resume state whose checksum is valid but whose fields are not (made by hand, or by another program) is
refused by `load_checkpoint` in one line naming the file and the field. Before, most of these ended in a
TypeError/KeyError/RuntimeError traceback in the run, a wrong-sized momentum buffer in a corrupted heap
(`free(): invalid next size`), and a negative step or 10**30 images silently trained on."""
from __future__ import annotations

import copy
import dataclasses
import io
import sys

import pytest
import torch

from resnets.errors import CheckpointError
from resnets.fileio import content_digest
from resnets.models.registry import build_model
from resnets.training.checkpoint import checkpoint_name, load_checkpoint, rng_state
from resnets.training.config import make_config
from resnets.training.epoch import Progress
from resnets.training.optim import make_optimizer


@pytest.fixture(scope="module")
def valid_state() -> dict:
    """What a run of cifar_resnet20 on 3 classes saves after one step (as `resume.checkpoint_state`)."""
    cfg = make_config({"model": "cifar_resnet20", "img_size": 16})
    model = build_model(cfg.model, num_classes=3)
    optimizer = make_optimizer(model, cfg)
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    optimizer.step()  # momentum buffers in its state
    progress = Progress(samples_in_epoch=64, batch_in_epoch=1, global_step=1)
    classes = ["a", "b", "c"]
    return dict(model=model.state_dict(), optimizer=optimizer.state_dict(), scaler={}, ema=None, epoch=1,
                batch_in_epoch=1, global_step=1, progress=dataclasses.asdict(progress),
                history=[dict(epoch=1, train_loss=1.0, train_top1=50.0, val_loss=1.0, val_top1=50.0, seconds=1.0)],
                config=cfg.to_dict(), class_names=classes, data=dict(classes=classes, train=64, val=16, digest="0"),
                world_size=1, global_batch=64, rng=rng_state(), rng_per_rank=[rng_state()])


def write(tmp_path, state: dict) -> str:
    """`state` under a checkpoint's name, with a valid checksum of its content (as `save_checkpoint` makes it)."""
    state = {**{k: v for k, v in state.items() if k != "digest"}}
    state["digest"] = content_digest(state)
    buf = io.BytesIO()
    torch.save(state, buf)
    path = tmp_path / checkpoint_name(state["epoch"] if isinstance(state["epoch"], int) else 1, 1)
    path.write_bytes(buf.getvalue())
    return str(path)


def deep(n: int) -> list:
    value: list = []
    for _ in range(n):
        value = [value]
    return value


VARIANTS = {  # name: (change to a valid state, the field the error names)
    "epoch a string": (lambda s: s.update(epoch="1"), "epoch"),
    "negative step": (lambda s: s["progress"].update(global_step=-5), "progress.global_step"),
    "10**30 images": (lambda s: s["progress"].update(samples_in_epoch=10**30), "progress.samples_in_epoch"),
    "no progress": (lambda s: s.pop("progress"), "progress is missing"),
    "empty progress": (lambda s: s.update(progress={}), "progress.epoch"),
    "unknown progress field": (lambda s: s["progress"].update(bogus=1), "progress.bogus"),
    "history not a list": (lambda s: s.update(history=5), "history"),
    "history of numbers": (lambda s: s.update(history=[1, 2]), "history[0]"),
    "option of another type": (lambda s: s["config"].update(batch_size="many"), "batch_size"),
    "config not a mapping": (lambda s: s.update(config=[1]), "config"),
    "head of another shape": (lambda s: s["model"].update({"fc.weight": torch.zeros(7, 7)}), "model.fc.weight"),
    "weights missing": (lambda s: s["model"].pop("layer1.0.conv1.weight"), "model.layer1.0.conv1.weight"),
    "optimizer not a mapping": (lambda s: s.update(optimizer=5), "optimizer"),
    "momentum of another size": (lambda s: s["optimizer"]["state"][0].update(momentum_buffer=torch.zeros(7)),
                                 "optimizer.state[0].momentum_buffer"),
    "lr a string": (lambda s: s["optimizer"]["param_groups"][0].update(lr="fast"), "param_groups[0].lr"),
    "rng of python not a state": (lambda s: s["rng"].update(python=5), "rng.python"),
    "rng of torch not a state": (lambda s: s["rng_per_rank"][0].update(torch=torch.zeros(3)), "rng_per_rank[0].torch"),
    "classes not a list": (lambda s: s["data"].update(classes=7), "data.classes"),
    "split size a string": (lambda s: s["data"].update(train="lots"), "data.train"),
    "classes that contradict": (lambda s: s.update(class_names=["x", "y", "z"]), "class_names"),
    "5000 deep": (lambda s: s["history"][0].update(extra=deep(5000)), "nests deeper"),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_valid_checksum_over_invalid_fields_is_refused(variant, valid_state, tmp_path):
    change, field = VARIANTS[variant]
    state = copy.deepcopy(valid_state)
    change(state)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 20_000))  # to checksum and pickle the deep variant at all
    try:
        path = write(tmp_path, state)
    finally:
        sys.setrecursionlimit(limit)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    message = str(e.value)
    assert message.startswith(path) and field in message and "\n" not in message, message


def test_a_valid_state_loads(valid_state, tmp_path):
    assert load_checkpoint(write(tmp_path, valid_state))["global_step"] == 1


def test_an_option_this_version_does_not_have_is_left_out(valid_state, tmp_path):
    # as resumed_config leaves it out: a checkpoint of an older resnets whose option was since removed resumes
    state = copy.deepcopy(valid_state)
    state["config"]["an_option_since_removed"] = 1
    assert load_checkpoint(write(tmp_path, state))["config"]["an_option_since_removed"] == 1
