"""Never lose a run: atomic checkpoints, retention, exact resume after SIGKILL, damaged and unsafe files."""
from __future__ import annotations

import csv
import dataclasses
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

import resnets
from resnets.errors import CheckpointError
from resnets.training.checkpoint import (find_checkpoint, list_checkpoints, load_checkpoint,
                                         remove_stray_temp_files, save_checkpoint)
from resnets.errors import TrainingError
from resnets.models.registry import build_model
from resnets.training.checkpoint import rng_state
from resnets.training.config import make_config
from resnets.training.epoch import Progress
from resnets.training.optim import make_optimizer

SMALL = ["--img-size", "16", "-b", "32", "--epochs", "2", "--no-progress"]  # digits, 45 steps an epoch


# Runs that go side by side take one thread each: two processes of 2 threads on 2 cores take longer together
# than one after the other (measured 42 s against 27 s for test_deterministic_runs_are_identical).
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def run_train(args: list[str], env_extra: dict | None = None,
              wait: bool = True) -> subprocess.Popen | subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    cmd = [sys.executable, "-m", "resnets", "train", *map(str, args)]
    if wait:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def reaped():
    """`reaped(run_train(..., wait=False))`: the run is killed if it is still going when the test ends (a
    failed assert), so it does not hold the cores the next tests need."""
    procs: list[subprocess.Popen] = []
    yield lambda proc: procs.append(proc) or proc
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def finished(proc: subprocess.Popen) -> str:
    """The stderr of a run started with wait=False, once it has ended well."""
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return err


def weights_of(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "last.safetensors"))


def loss_log(run_dir: Path) -> list[tuple[str, ...]]:
    rows = list(csv.DictReader((run_dir / "summary.csv").open()))
    return [(r["epoch"], r["train_loss"], r["train_top1"], r["val_loss"], r["val_top1"], r["lr"]) for r in rows]


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(tmp_path, workers, reaped):
    common = [*SMALL, "-j", workers, "--checkpoint-every", "5", "--output", tmp_path]
    straight = reaped(run_train([*common, "--name", "straight"], ONE_THREAD, wait=False))  # beside the victim
    victim = reaped(run_train([*common, "--name", "killed"], ONE_THREAD, wait=False))
    run_dir = tmp_path / "killed"
    deadline = time.time() + 300
    while time.time() < deadline:  # kill right after the second mid-epoch checkpoint of epoch 1
        files = list_checkpoints(run_dir) if run_dir.exists() else []
        if any(f.name.startswith("checkpoint-0001-") and int(f.stem.split("-")[2]) >= 10 for f in files):
            break
        assert victim.poll() is None, victim.communicate()
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (run_dir / "metrics.json").exists()  # it really died mid-run
    (run_dir / ".last.safetensors.abc123.tmp").write_bytes(b"half a file")  # what a kill mid-write leaves

    resumed = reaped(run_train(["--resume", run_dir, "--epochs", "2", "-j", workers, "--no-progress"], ONE_THREAD,
                               wait=False))
    finished(straight)
    err = finished(resumed)
    assert "resuming" in err and re.search(r"epoch 1, image \d+/1,438", err)
    assert not list(run_dir.glob(".*.tmp"))  # stray temp files cleaned at the start
    a, b = weights_of(tmp_path / "straight"), weights_of(run_dir)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert loss_log(tmp_path / "straight") == loss_log(run_dir)


def test_sigkill_during_saves_never_leaves_a_partial_file(tmp_path):
    template = tmp_path / "template.pt"
    torch.save(_state(0), template)
    script = f"""
import torch, itertools
from pathlib import Path
from resnets.training.checkpoint import save_checkpoint
state = dict(torch.load({str(template)!r}, weights_only=True), padding=torch.randn(2_000_000))  # 8 MB a save
print("ready", flush=True)
for step in itertools.count():
    save_checkpoint(Path({str(tmp_path)!r}), dict(state, global_step=step), keep=3)
"""
    for delay in (0.3, 0.45, 0.6, 0.8, 1.1):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        finals = list_checkpoints(tmp_path)
        assert finals, "nothing was saved before the kill"
        for path in finals:  # every file under a final name is complete and verified
            assert load_checkpoint(path)["global_step"] >= 0
        assert len(finals) <= 4  # retention ran (one extra can exist between rename and cleanup)
    remove_stray_temp_files(tmp_path)
    assert not list(tmp_path.glob(".*.tmp"))


def _state(step: int) -> dict:
    """A resume state its schema takes (training/state_schema.py): cifar_resnet20 for 3 classes, weights = step."""
    cfg = make_config({})
    model = build_model(cfg.model, num_classes=3)
    return dict(model={k: torch.full_like(v, step) for k, v in model.state_dict().items()},
                optimizer=make_optimizer(model, cfg).state_dict(), epoch=1, batch_in_epoch=step, global_step=step,
                progress=dataclasses.asdict(Progress(batch_in_epoch=step, global_step=step)), config=cfg.to_dict(),
                history=[], class_names=["a", "b", "c"], rng=rng_state())


def test_retention_keeps_the_newest_and_resume_auto_falls_back(tmp_path, capsys):
    old_run, new_run = tmp_path / "a", tmp_path / "b"
    for run_dir in (old_run, new_run):
        run_dir.mkdir()
        for step in range(1, 6):
            save_checkpoint(run_dir, _state(step), keep=2)
    assert [p.name for p in list_checkpoints(new_run)] == ["checkpoint-0001-000000004.pt",
                                                          "checkpoint-0001-000000005.pt"]
    newest = list_checkpoints(new_run)[-1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # truncated by a crash of the disk
    run_dir, path, state = find_checkpoint("auto", tmp_path)
    assert run_dir == new_run and path.name.endswith("000000004.pt") and state["global_step"] == 4
    assert "checkpoint-0001-000000005.pt" in capsys.readouterr().err  # warned about the damaged one
    with pytest.raises(CheckpointError, match="000000005.pt"):
        load_checkpoint(newest)


def test_resume_with_an_unsafe_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    bad = tmp_path / "checkpoint-0001-000000001.pt"
    torch.save(dict(_state(1), extra=Payload()), bad)
    with pytest.raises(CheckpointError, match="checkpoint-0001-000000001.pt"):
        load_checkpoint(bad)
    assert not marker.exists()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_files_give_a_clear_error_or_identical_content(tmp_path, data):
    model = resnets.create_model("cifar_resnet20", num_classes=3)
    weights = tmp_path / "w.safetensors"
    resnets.models.weights.save_weights(model, weights)
    resume = save_checkpoint(tmp_path, _state(7), keep=5)
    for path in (weights, resume):
        original = path.read_bytes()
        kind = data.draw(st.sampled_from(["truncate", "flip", "random", "empty"]))
        if kind == "truncate":
            mutated = original[: data.draw(st.integers(0, len(original) - 1))]
        elif kind == "flip":
            pos, bit = data.draw(st.integers(0, len(original) - 1)), data.draw(st.integers(0, 7))
            mutated = bytearray(original)
            mutated[pos] ^= 1 << bit
            mutated = bytes(mutated)
        elif kind == "random":
            mutated = data.draw(st.binary(min_size=1, max_size=4096))
        else:
            mutated = b""
        bad = tmp_path / ("bad" + path.suffix)
        bad.write_bytes(mutated)
        try:
            if path.suffix == ".safetensors":
                got = resnets.models.weights.read_state_dict(bad)[0]
                expected = load_file(str(weights))
            else:
                got, expected = load_checkpoint(bad)["model"], _state(7)["model"]
        except CheckpointError as e:
            assert str(bad) in str(e) and "\n" not in str(e)
        else:  # the flip hit bytes that carry no content: what loads must be exactly the original
            assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)


def test_nonfinite_loss_stops_with_epoch_and_step_or_is_skipped(tmp_path, poison_losses):
    poison_losses({3, 4})
    small = dict(epochs=1, img_size=16, batch_size=64, progress=False, workers=0)
    with pytest.raises(TrainingError, match=r"epoch 1, step 3 \(batch 3\)"):
        resnets.train(output=str(tmp_path / "stop"), **small)
    with pytest.raises(TrainingError, match="step 3 .batch 4"):  # two in a row, one allowed
        resnets.train(output=str(tmp_path / "one"), skip_nonfinite=1, **small)
    result = resnets.train(output=str(tmp_path / "two"), skip_nonfinite=2, **small)
    assert result.metrics["global_steps"] == 22 - 2  # 22 batches, two skipped
    weights = load_file(str(result.run_dir / "last.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_nonfinite_weights_are_never_saved(tmp_path):
    model = resnets.create_model("cifar_resnet20", num_classes=3)
    with torch.no_grad():
        model.fc.weight[0, 0] = float("inf")
    with pytest.raises(CheckpointError, match="fc.weight"):
        resnets.models.weights.save_weights(model, tmp_path / "w.safetensors")
    assert not list(tmp_path.iterdir())


def test_deterministic_runs_are_identical(tmp_path, reaped):
    args = [*SMALL, "--epochs", "1", "--deterministic", "--mixup", "0.2", "--drop-path-rate", "0.1",
            "--output", tmp_path]
    # Two separate processes (nothing shared but the files), side by side
    for run in [reaped(run_train([*args, "--name", name], ONE_THREAD, wait=False)) for name in ("one", "two")]:
        finished(run)
    a, b = weights_of(tmp_path / "one"), weights_of(tmp_path / "two")
    assert resnets.fileio.content_digest(a) == resnets.fileio.content_digest(b)
    assert loss_log(tmp_path / "one") == loss_log(tmp_path / "two")


def test_resume_of_a_finished_run_needs_more_epochs(tmp_path, capsys):
    from resnets.cli import main  # in this process: four runs would pay four torch imports as subprocesses

    def train(*args) -> tuple[int, str]:
        code = main(["train", *map(str, args)])
        return code, capsys.readouterr().err

    assert train(*SMALL, "--epochs", "1", "--output", tmp_path, "--name", "r")[0] == 0
    code, err = train("--resume", "auto", "--output", tmp_path, "--no-progress")  # keeps the run's 1 epoch
    assert code == 2 and "raise --epochs" in err
    code, err = train("--resume", "auto", "--output", tmp_path, "--epochs", "2", "--lr", "0.5")
    assert code == 2 and "differ from it: lr" in err
    code, err = train("--resume", "auto", "--output", tmp_path, "--epochs", "2", "--no-progress")
    assert code == 0, err
    assert [row[0] for row in loss_log(tmp_path / "r")] == ["1", "2"]


def test_resuming_an_older_state_moves_the_newer_ones_aside(tmp_path):
    from resnets.training.checkpoint import abandon_newer_checkpoints

    for step in range(1, 6):
        save_checkpoint(tmp_path, _state(step), keep=5)
    older = list_checkpoints(tmp_path)[2]
    moved = abandon_newer_checkpoints(tmp_path, older)
    assert [p.name for p in moved] == ["checkpoint-0001-000000004.pt", "checkpoint-0001-000000005.pt"]
    assert list_checkpoints(tmp_path)[-1] == older and all(p.is_file() for p in moved)


def test_atomic_copy_gives_the_same_bytes_or_leaves_the_old_file(tmp_path, monkeypatch):
    from resnets.fileio import atomic_copy

    source, target = tmp_path / "last.safetensors", tmp_path / "best.safetensors"
    source.write_bytes(os.urandom(3 << 20))  # over the 1 MiB copy chunk
    target.write_bytes(b"the previous best")
    assert atomic_copy(source, target) == target and target.read_bytes() == source.read_bytes()

    def copy_then_fail(src, dst, length=0):
        dst.write(src.read(1000))
        raise OSError("disk full")

    target.write_bytes(b"the previous best")
    monkeypatch.setattr("shutil.copyfileobj", copy_then_fail)
    with pytest.raises(OSError, match="disk full"):
        atomic_copy(source, target)
    assert target.read_bytes() == b"the previous best"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.safetensors", "last.safetensors"]


def test_a_resume_applies_a_flag_that_repeats_its_default(monkeypatch):
    """`--epochs 8` is a request even though 8 is the default: the CLI hands the trainer exactly the given
    options, and a resume applies them over the run's own (a run of 30 epochs resumed with --epochs 8)."""
    import dataclasses
    import types

    from resnets.cli import main
    from resnets.training.config import TrainConfig
    from resnets.training.resume import resumed_config

    given: dict = {}
    finished_run = types.SimpleNamespace(best_top1=0.0, best_epoch=0, run_dir="runs/r")
    monkeypatch.setattr("resnets.training.commands.train", lambda **kw: given.update(kw) or finished_run)
    assert main(["train", "--resume", "auto", "--epochs", "8", "--patience", "0"]) == 0
    assert given == {"resume": "auto", "epochs": 8, "patience": 0}
    state = {"config": dataclasses.asdict(TrainConfig(epochs=30, patience=3))}
    cfg = resumed_config(TrainConfig(**given), state, explicit=set(given))
    assert (cfg.epochs, cfg.patience) == (8, 0)


def test_a_file_that_is_no_checkpoint_is_named_so(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hi\n")  # was 'not a readable resume state (KeyError: 105)'
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(path)
