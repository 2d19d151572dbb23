"""`resnets train --img-size 20000`, or a resumed run whose config says so, is refused before the data loaders
exist (the first batch's resize ended in the allocator's traceback), in one line naming the flag and a size
that could fit. The memory is set to 2 GiB here, and reaching the loaders fails the test."""
from __future__ import annotations

import dataclasses
import io

import pytest
import torch

import resnets
from resnets.analysis import memory
from resnets.errors import ConfigError
from resnets.fileio import content_digest
from resnets.models.registry import build_model
from resnets.training import run
from resnets.training.checkpoint import checkpoint_name, rng_state
from resnets.training.config import make_config
from resnets.training.epoch import Progress
from resnets.training.optim import make_optimizer


@pytest.fixture
def two_gib(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 2 * 2**30)

    def reached(*args, **kwargs):
        raise AssertionError("the data loaders were made: the size was not checked first")

    monkeypatch.setattr(run, "make_loaders", reached)


def test_an_img_size_that_cannot_fit_is_refused(tmp_path, two_gib):
    with pytest.raises(ConfigError, match=r"^--img-size 20000: 64 image\(s\) of 20000x20000 need at least .* "
                                          r"at most --img-size \d+ could fit$"):
        resnets.train(img_size=20000, epochs=1, batch_size=64, progress=False, device="cpu", output=str(tmp_path))


def test_a_resumed_run_at_a_size_that_cannot_fit_is_refused(tmp_path, two_gib):
    cfg = make_config({"img_size": 20000, "epochs": 2, "device": "cpu", "output": str(tmp_path)})
    model = build_model(cfg.model, num_classes=10)
    progress = dataclasses.asdict(Progress(batch_in_epoch=1, global_step=1))
    state = dict(model=model.state_dict(), optimizer=make_optimizer(model, cfg).state_dict(), epoch=1,
                 batch_in_epoch=1, global_step=1, progress=progress, history=[], config=cfg.to_dict(),
                 class_names=[str(i) for i in range(10)], rng=rng_state())
    state["digest"] = content_digest(state)
    (tmp_path / "run").mkdir()
    buf = io.BytesIO()
    torch.save(state, buf)
    path = tmp_path / "run" / checkpoint_name(1, 1)
    path.write_bytes(buf.getvalue())
    with pytest.raises(ConfigError, match="^--img-size 20000: "):
        resnets.train(resume=str(path), progress=False)
