"""The learning-rate range test: `find_lr` puts everything back, `suggest` reads a curve robustly, `resnets lr-find`
plots and prints, `resnets train --lr auto` trains at the suggestion; a sweep with nothing to suggest is one line."""
from __future__ import annotations

import copy
import math
import random

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

import resnets
from resnets.cli import build_parser, main
from resnets.errors import TrainingError
from resnets.models import build_model, get_config
from resnets.training import lr_find as lr_find_module
from resnets.training.config import TrainConfig, config_from_args
from resnets.training.lr_find import find_lr, lr_option, suggest, sweep_config, sweep_steps
from resnets.training.run_dir import BEST
from resnets.training.step import make_train_step

FAST = dict(progress=False, workers=0, img_size=16)  # 16 px digits: a sweep of 100 steps in ~10 s on 2 cores


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error(err: str) -> str:
    """The error line of stderr (the recipe's line may come before it), which must be its last and only one."""
    errors = [line for line in err.splitlines() if "error" in line or "Traceback" in line]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    return errors[0]


def tiny_step(opt: str, mixup: float = 0.0):
    """A CIFAR ResNet-20's training step at 16 px on the CPU, with one real step taken (optimizer state to keep)."""
    cfg = TrainConfig(opt=opt, mixup=mixup, img_size=16).resolved()
    model = build_model(cfg.model, num_classes=10)
    pretrained_cfg = get_config(cfg.model).default_pretrained_cfg().with_img_size(16)
    step = make_train_step(model, sweep_config(cfg), pretrained_cfg, torch.device("cpu"), "off", False)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=g),
                torch.randint(0, 10, (8,), generator=g)) for _ in range(3)]
    step(*batches[0])
    return step, batches


@pytest.mark.parametrize("opt,mixup,classifier_only", [("sgd", 0.0, False), ("adamw", 0.5, True)])
def test_the_sweep_puts_weights_optimizer_random_state_and_trainable_parameters_back_bit_for_bit(
        monkeypatch, opt, mixup, classifier_only):
    step, batches = tiny_step(opt, mixup)
    model = step.model
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = copy.deepcopy(step.optimizer.state_dict())
    rng, py_rng, np_rng = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    modes = [m.training for m in model.modules()]
    trainable = [p.requires_grad for p in model.parameters()]
    swept = {}
    restore = lr_find_module._Saved.restore

    def seen_then_restore(saved, step):  # the sweep did change them: the test would pass trivially otherwise
        swept["weights"] = any(not torch.equal(v, weights[k]) for k, v in model.state_dict().items())
        swept["trainable"] = [p.requires_grad for p in model.parameters()] != trainable
        restore(saved, step)

    monkeypatch.setattr(lr_find_module._Saved, "restore", seen_then_restore)
    try:
        find_lr(step, batches, steps=8, start_lr=1e-3, end_lr=1.0, classifier_only=classifier_only)
    except TrainingError:  # random data may well show no fall: the state must come back all the same
        pass
    assert swept == {"weights": True, "trainable": classifier_only}
    for key, value in model.state_dict().items():
        assert torch.equal(value, weights[key]), key
    after = step.optimizer.state_dict()
    assert after["param_groups"] == optimizer["param_groups"]
    for index, state in optimizer["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(after["state"][index][name]), torch.as_tensor(value)), (index, name)
    assert torch.equal(torch.get_rng_state(), rng) and random.getstate() == py_rng
    assert np.array_equal(np.random.get_state()[1], np_rng)
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == trainable
    assert all(p.grad is None for p in model.parameters())


def sweep_curve(n: int = 100, noise: float = 0.0, seed: int = 0) -> tuple[list[float], list[float]]:
    """A range test's loss: flat at 2.3 up to lr 1e-3, falling to 0.5 at lr 0.3, then exploding."""
    lrs = list(np.geomspace(1e-7, 10, n))
    rng = np.random.default_rng(seed)
    losses = []
    for lr in lrs:
        x = math.log10(lr)
        loss = 2.3 - 1.8 * min(max((x + 3) / 2.5, 0.0), 1.0) + (max(x + 0.5, 0.0) * 8) ** 2
        losses.append(loss + noise * rng.standard_normal())
    return [float(v) for v in lrs], losses


def test_the_suggestion_is_a_tenth_of_the_lr_where_the_smoothed_loss_turns():
    lrs, losses = sweep_curve()
    found = suggest(lrs, losses)
    assert 0.3 < found.lr_at_min < 0.6  # the fall ends at 0.32; the smoothed curve turns a little later
    assert found.suggestion == pytest.approx(found.lr_at_min / 10)
    assert len(found.smoothed) == len(losses) and "still fell" not in found.reason
    rising_to_the_end = suggest(lrs[:80], losses[:80])  # a sweep that never turned says so
    assert rising_to_the_end.lr_at_min == lrs[79] and "still fell at the end" in rising_to_the_end.reason


@pytest.mark.parametrize("seed", range(5))
def test_batch_noise_on_the_flat_start_does_not_move_the_suggestion_there(seed):
    lrs, losses = sweep_curve(noise=0.15, seed=seed)
    losses[30] -= 1.0  # a lucky batch at lr ~5e-5: a sharp dip out of nothing
    found = suggest(lrs, losses)
    assert 1e-3 < found.suggestion < 0.1, found


@pytest.mark.parametrize("losses,needle", [
    ([math.nan] * 3, "non-finite at the first step"),
    ([2.3] * 60, "never fell"),
    ([2.3, 2.31, 2.29, 2.3, math.nan], "never fell"),
])
def test_a_sweep_with_nothing_to_suggest_is_a_one_line_training_error(losses, needle):
    lrs = list(np.geomspace(1e-7, 10, 60))[:len(losses)]
    with pytest.raises(TrainingError) as error:
        suggest(lrs, losses)
    message = str(error.value)
    assert needle in message and "\n" not in message
    assert "--lr" in message or "check" in message


def test_sweeps_are_shorter_for_short_runs_on_little_data_but_never_too_coarse():
    assert sweep_steps(batches_per_epoch=1000, epochs=90) == 100
    assert sweep_steps(batches_per_epoch=22, epochs=3) == 66  # no more steps than the run trains
    assert sweep_steps(batches_per_epoch=3, epochs=2) == 50
    assert sweep_steps(batches_per_epoch=3, epochs=2, requested=10) == 10


def test_the_lr_option_gives_the_found_rate_through_scale_lr():
    cfg = TrainConfig(batch_size=64, accum_steps=2, scale_lr="linear", lr_base_batch=256)
    assert lr_option(0.05, cfg, world_size=2) == pytest.approx(0.05)  # 64 x 2 x 2 = 256: no scaling
    assert lr_option(0.05, TrainConfig(batch_size=64, scale_lr="linear"), 1) == pytest.approx(0.2)
    assert lr_option(0.05, TrainConfig(batch_size=64), 4) == 0.05  # --scale-lr none: --lr is the step's rate


def test_lr_auto_is_a_value_of_the_flag_and_the_yaml_key(tmp_path):
    assert config_from_args(build_parser().parse_args(["train", "--lr", "auto"])).lr == "auto"
    assert config_from_args(build_parser().parse_args(["train", "--lr", "0.05"])).lr == 0.05
    for text, value in (("lr: auto\n", "auto"), ("lr: 2e-1\n", 0.2), ("lr: 0.3\n", 0.3)):  # YAML reads 2e-1 as text
        (tmp_path / "c.yaml").write_text(text)
        assert config_from_args(build_parser().parse_args(["train", "-c", str(tmp_path / "c.yaml")])).lr == value


@pytest.mark.parametrize("argv,needle", [
    (["train", "--lr", "fast"], "lr must be auto or a finite number > 0, got fast"),
    (["train", "--lr", "0"], "lr must be auto"),
    (["lr-find", "--steps", "1"], "--steps must be >= 2"),
    (["lr-find", "--resume", "auto"], "drop --resume"),
    (["lr-find", "--output", "{tmp}"], "is a folder"),
])
def test_lr_mistakes_are_one_line_errors(tmp_path, capsys, monkeypatch, argv, needle):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, *[a.replace("{tmp}", str(tmp_path)) for a in argv], "--no-progress")
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "lr_find.png").exists()


def test_lr_find_on_digits_suggests_a_sane_sgd_lr_plots_it_and_makes_no_run_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "lr-find", "--img-size", "16", "--no-progress", "--steps", "50")
    assert code == 0, err
    first, plot = out.strip().splitlines()
    assert first.startswith("suggested lr ") and plot == "lr_find.png"
    lr = float(first.split()[2])
    assert 1e-3 <= lr <= 1.0, out  # measured: 0.013 (nesterov, batch 32: the recipe's choices for the digits)
    assert (tmp_path / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lr_find.png"]  # no runs/, no temp file left


def test_train_lr_auto_trains_at_the_suggestion_records_it_and_a_resume_keeps_it(tmp_path, capsys):
    result = resnets.train(lr="auto", epochs=1, output=str(tmp_path), **FAST)
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if line.startswith("lr-find: suggested lr ")]
    assert len(said) == 1, err
    config = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert config["lr"] == "auto"  # as given: `-c config.yaml` runs the test again
    lr = config["resolved_lr"]
    assert 1e-3 <= lr <= 1.0 and f"{lr:.3g}" in said[0]
    assert result.best_top1 >= 35.0, result.metrics  # chance: 10; measured: 52.6 (lr 0.0083 from a 50-step sweep)
    checkpoint = torch.load(sorted(result.run_dir.glob("checkpoint-*.pt"))[-1], weights_only=True)
    assert checkpoint["config"]["lr"] == lr  # what a resume trains on

    # A resume (or a torchrun restart, which repeats `--lr auto`) goes on at the found lr, without a new sweep
    code, out, err = run_cli(capsys, "train", "--resume", result.run_dir, "--lr", "auto", "--epochs", "2",
                             "--no-progress", "--img-size", "16", "-j", "0")
    assert code == 0, err
    assert "lr-find" not in err
    assert yaml.safe_load((result.run_dir / "config.yaml").read_text())["resolved_lr"] == lr


def test_a_model_that_diverges_at_once_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch,
                                                                      poison_losses):
    monkeypatch.chdir(tmp_path)
    poison_losses(set(range(1, 10_000)))  # every loss NaN
    code, out, err = run_cli(capsys, "lr-find", "--img-size", "16", "--no-progress")
    assert code == 2 and one_error(err).startswith("resnets lr-find: error: lr range test: the loss is non-finite "
                                                   "at the first step"), err
    code, out, err = run_cli(capsys, "train", "--lr", "auto", "--img-size", "16", "--no-progress", "--output",
                             tmp_path / "runs")
    assert code == 2 and one_error(err).startswith("resnets train: error: lr range test: the loss is non-finite"), err
    poison_losses(set(range(2, 10_000)))  # one finite loss, then NaN: no fall to read
    code, out, err = run_cli(capsys, "lr-find", "--img-size", "16", "--no-progress")
    assert code == 2 and "never fell" in one_error(err) and "give --lr explicitly" in err, err
    assert not list(tmp_path.iterdir())  # no plot, no run folder


@pytest.mark.slow
def test_a_run_at_lr_auto_is_the_run_at_the_lr_it_found(tmp_path):
    """The sweep leaves no trace: the same weights as a run given the found lr, bit for bit."""
    auto = resnets.train(lr="auto", epochs=1, output=str(tmp_path / "a"), **FAST)
    lr = yaml.safe_load((auto.run_dir / "config.yaml").read_text())["resolved_lr"]
    given = resnets.train(lr=lr, epochs=1, output=str(tmp_path / "b"), **FAST)
    a, b = load_file(auto.run_dir / BEST), load_file(given.run_dir / BEST)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
