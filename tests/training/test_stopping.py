"""Stopping on SIGTERM / SIGINT without losing the run: the step finishes, a resume state is written at that exact
place, one line says so, the exit code is the shell's for the signal; the resumed run ends bit-identical to one
never stopped. A second signal stops at once. (Two processes under torchrun: test_distributed.py.)"""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from resnets.errors import RunStopped
from resnets.training.checkpoint import list_checkpoints
from resnets.training.stopping import StopRequest

HELPER = Path(__file__).resolve().parents[1] / "helpers" / "crashing_train.py"
SMALL = ["--img-size", "16", "-b", "32", "--epochs", "2", "--no-progress"]  # digits: 44 steps an epoch
ENV = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def train(args: list, env: dict | None = None, script: Path | None = None) -> subprocess.CompletedProcess:
    """`resnets train` in its own session (a signal to its process group reaches nothing of pytest's)."""
    target = [str(script)] if script else ["-m", "resnets"]
    return subprocess.run([sys.executable, *target, "train", *map(str, args)], env={**os.environ, **ENV, **(env or {})},
                          capture_output=True, text=True, timeout=600, start_new_session=True,
                          preexec_fn=default_signals)


def default_signals() -> None:
    """In the child before it starts: SIGINT and SIGTERM as a terminal's process has them. A suite started in
    the background (`make test &`, some CI runners) passes SIGINT on ignored, and resnets leaves alone a
    signal its process was started ignoring."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def signalled(name: str, after: int, epoch: int = 1, **extra: str) -> dict:
    """The helper's environment: send signal `name` when batch `after` of `epoch` is about to be trained."""
    return {"CRASH_RANK": "0", "CRASH_EPOCH": str(epoch), "CRASH_AFTER": str(after), "CRASH_MODE": name, **extra}


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_file(str(a)), load_file(str(b))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """A run never stopped: what every stopped-and-resumed run must end as."""
    output = tmp_path_factory.mktemp("straight")
    done = train([*SMALL, "--output", output, "--name", "run"])
    assert done.returncode == 0, done.stderr[-3000:]
    return output / "run"


@pytest.mark.parametrize("name,workers,target", [("SIGTERM", 0, "self"), ("SIGINT", 2, "group")])
def test_a_signal_mid_epoch_saves_that_step_and_the_resume_ends_as_if_never_stopped(tmp_path, straight, name, workers,
                                                                                   target):
    # SIGINT to the whole group is Ctrl-C in a terminal: the DataLoader workers get it too and must keep serving
    stopped = train([*SMALL, "-j", workers, "--output", tmp_path, "--name", "run"],
                    signalled(name, after=9, CRASH_TARGET=target), script=HELPER)
    code = 128 + signal.Signals[name]
    assert stopped.returncode == code, stopped.stderr[-3000:]
    last = stopped.stderr.strip().splitlines()[-1]
    assert last == (f"resnets train: stopped by {name} at epoch 1, image 320/1,438 (step 10), saved; go on with "
                    f"`resnets train --resume {tmp_path / 'run'}`")
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["checkpoint-0001-000000010.pt"]
    assert "Traceback" not in stopped.stderr and not (tmp_path / "run" / "metrics.json").exists()
    resumed = train(["--resume", tmp_path / "run", "-j", workers, "--no-progress"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "epoch 1, image 320/1,438, step 10" in resumed.stderr
    for weights in ("last.safetensors", "best.safetensors"):
        assert same_weights(tmp_path / "run" / weights, straight / weights), weights
    assert epochs_of(tmp_path / "run") == epochs_of(straight)


def epochs_of(run_dir: Path) -> list[dict[str, str]]:
    """summary.csv's rows but for the wall time, which no two runs share."""
    rows = csv.DictReader((run_dir / "summary.csv").open())
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def test_a_second_signal_stops_at_once(tmp_path):
    # Ctrl-C, then SIGTERM: the second ends the process by the signal itself, as if nothing had caught either
    stopped = train([*SMALL, "--output", tmp_path, "--name", "run"],
                    signalled("SIGINT", after=9, CRASH_THEN="SIGTERM"), script=HELPER)
    assert stopped.returncode == -signal.SIGTERM and "Traceback" not in stopped.stderr, stopped.stderr[-2000:]
    assert list_checkpoints(tmp_path / "run") == []  # no step finished after it, nothing saved


def test_a_signal_to_the_group_from_outside_leaves_the_loader_workers_serving(tmp_path):
    # As torchrun's shutdown and `kill -- -PGID` do: the whole group, sent by another process. With 4 batches an
    # accumulation cycle the stop needs batches after the signal, which workers killed by it could not give.
    proc = subprocess.Popen([sys.executable, "-m", "resnets", "train", *SMALL, "-j", "2", "--accum-steps", "4",
                             "--checkpoint-every", "1", "--output", str(tmp_path), "--name", "run"],
                            env={**os.environ, **ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=default_signals)
    try:
        deadline = time.time() + 300
        while not list_checkpoints(tmp_path / "run") and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)  # the first checkpoint: training is under way
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-3000:]
    assert "stopped by SIGTERM at epoch" in err and "Traceback" not in err


def test_a_signal_at_an_epochs_last_step_stops_after_its_checkpoint(tmp_path):
    stopped = train([*SMALL, "--output", tmp_path, "--name", "run"], signalled("SIGTERM", after=43), script=HELPER)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert "epoch   1/2" in stopped.stderr  # the epoch was validated and reported first
    assert "stopped by SIGTERM at epoch 2, image 0/1,438 (step 44)" in stopped.stderr
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["checkpoint-0002-000000044.pt"]


def test_before_training_begins_a_signal_stops_at_once_with_its_line():
    stop = StopRequest()
    with stop.installed(), pytest.raises(RunStopped, match="stopped by SIGTERM before training began") as info:
        os.kill(os.getpid(), signal.SIGTERM)
    assert info.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handlers are put back


def test_an_armed_request_only_notes_the_first_signal(monkeypatch):
    monkeypatch.setattr(signal, "getsignal", lambda sig: signal.SIG_DFL)  # as in a terminal, whatever ran pytest
    stop = StopRequest()
    with stop.installed():
        stop.armed = True
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signum == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):  # the second: at once
            os.kill(os.getpid(), signal.SIGINT)
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGINT) is not stop._handle  # put back


def test_a_signal_the_process_was_started_ignoring_stays_ignored(monkeypatch):
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)  # `cmd &` in a script starts cmd so
    try:
        with StopRequest().installed():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
