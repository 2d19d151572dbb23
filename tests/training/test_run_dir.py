"""One writer per run folder, a folder deleted mid-run, a resume only onto the run's own data, and a finished run
whose report a stop left unwritten."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import resnets
from resnets.errors import ConfigError, TrainingError
from resnets.training import run_dir as run_dir_module
from resnets.training.checkpoint import list_checkpoints

FAST = dict(model="cifar_resnet20", img_size=16, batch_size=8, workers=0, progress=False)


def write_folder(root: Path, classes=("ant", "bee", "cat"), per_class: int = 8) -> Path:
    rng = np.random.default_rng(0)
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, (12, 12, 3), dtype=np.uint8) + 60 * label
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


@pytest.fixture
def one_epoch(tmp_path) -> tuple[Path, Path]:
    """A folder of images and a run of one epoch on it (checkpointed at its end)."""
    data = write_folder(tmp_path / "data")
    result = resnets.train(data_dir=str(data), epochs=1, output=str(tmp_path / "runs"), name="run", **FAST)
    return data, result.run_dir


def test_a_second_writer_is_refused_with_the_holders_pid_and_a_dead_holder_is_recognised(one_epoch):
    _, run = one_epoch
    holder = subprocess.Popen([sys.executable, "-c", f"""
from resnets.training.run_dir import RunDir
RunDir({str(run)!r}).acquire()
print("holding", flush=True)
import time; time.sleep(600)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        before = sorted(p.name for p in run.iterdir())
        with pytest.raises(ConfigError, match=rf"{run} is in use: another run \(pid {holder.pid}\)"):
            resnets.train(resume="auto", output=str(run.parent), epochs=2, progress=False)
        assert sorted(p.name for p in run.iterdir()) == before  # nothing moved to abandoned/, nothing written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # Its .lock file stays, with its pid, but the lock died with it: the run resumes
    assert (run / run_dir_module.LOCK_FILE).read_text().strip() == str(holder.pid)
    result = resnets.train(resume="auto", output=str(run.parent), epochs=2, progress=False)
    assert result.metrics["epochs_run"] == 2


def test_a_run_holds_its_folder_until_it_ends(one_epoch, monkeypatch):
    data, run = one_epoch
    seen = []
    real = run_dir_module.RunDir.write_epoch

    def try_a_second_writer(self, history, title):  # while the first is between two epochs
        with pytest.raises(ConfigError, match=f"pid {os.getpid()}"):
            run_dir_module.RunDir(self.path).acquire()
        seen.append(len(history))
        return real(self, history, title)

    monkeypatch.setattr(run_dir_module.RunDir, "write_epoch", try_a_second_writer)
    resnets.train(resume=str(run), epochs=2, progress=False)
    assert seen == [2]
    run_dir_module.RunDir(run).acquire().release()  # and lets go at its end


def test_a_run_folder_deleted_mid_run_stops_the_run_and_is_not_recreated(tmp_path, monkeypatch):
    real = run_dir_module.RunDir.write_epoch

    def delete_after_the_first_epoch(self, history, title):
        real(self, history, title)
        shutil.rmtree(self.path)

    monkeypatch.setattr(run_dir_module.RunDir, "write_epoch", delete_after_the_first_epoch)
    with pytest.raises(TrainingError, match="was deleted or moved while this run was writing into it"):
        resnets.train(epochs=2, output=str(tmp_path / "runs"), name="run", **FAST)
    assert not (tmp_path / "runs" / "run").exists(), list((tmp_path / "runs" / "run").rglob("*"))


@pytest.mark.parametrize("change,needle", [
    (lambda data: (data / "cat").rename(data / "cow"), "classes gone: 'cat'; new: 'cow'"),
    (lambda data: (data / "bee").rename(data / "zebra"), "classes gone: 'bee'; new: 'zebra'"),
    (lambda data: [(data / "ant" / f"{i}.png").unlink() for i in range(3)], "train images 18 -> 16; val images 6 -> 5"),
    (lambda data: (data / "ant" / "0.png").rename(data / "ant" / "renamed.png"), "other files or labels"),
])
def test_a_resume_onto_other_data_is_refused_saying_what_changed(one_epoch, change, needle):
    data, run = one_epoch
    change(data)
    with pytest.raises(ConfigError, match=f"the data changed since the checkpoint .*{needle}"):
        resnets.train(resume=str(run), epochs=2, progress=False)
    assert len(list_checkpoints(run)) == 1  # nothing written


def test_a_resume_on_changed_data_goes_on_when_asked_unless_the_head_cannot_fit(one_epoch, capsys):
    data, run = one_epoch
    (data / "cat").rename(data / "cow")
    result = resnets.train(resume=str(run), epochs=2, progress=False, resume_on_changed_data=True)
    assert "resuming on changed data (classes gone: 'cat'; new: 'cow')" in capsys.readouterr().err
    assert result.metrics["class_names"] == ["ant", "bee", "cow"]
    write_folder(data, classes=("dog",))
    with pytest.raises(ConfigError, match="trained for 3 classes, the data has 4"):
        resnets.train(resume=str(run), epochs=3, progress=False, resume_on_changed_data=True)


def test_a_finished_run_whose_report_was_not_written_resumes_to_write_it(one_epoch, capsys):
    data, run = one_epoch
    report = {name: (run / name).read_text() for name in ("per_class.csv", "confusion_matrix.csv")}
    for name in ("metrics.json", "per_class.csv", "confusion_matrix.csv", "confusion_matrix.png"):
        (run / name).unlink()  # what a stop between the last checkpoint and the report leaves
    result = resnets.train(resume=str(run), progress=False)
    assert result.metrics["epochs_run"] == 1 and (run / "metrics.json").is_file()
    assert {name: (run / name).read_text() for name in report} == report
    with pytest.raises(TrainingError, match="raise --epochs"):  # finished and reported: nothing left to do
        resnets.train(resume=str(run), progress=False)


def test_a_forked_child_does_not_keep_the_lock(tmp_path):
    # DataLoader workers are forked while the run holds its lock; flock's lock belongs to the open file, which a
    # fork shares, so a worker still alive after the run let go would keep the folder locked.
    run_dir = run_dir_module.RunDir(tmp_path).acquire()
    ready, tell = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child: its at-fork hooks have run by now)
        import time
        os.write(tell, b"1")
        time.sleep(3)
        os._exit(0)
    try:
        assert os.read(ready, 1) == b"1"
        run_dir.release()
        run_dir_module.RunDir(tmp_path).acquire().release()  # free while the child lives on
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        os.close(ready)
        os.close(tell)


def test_a_lock_file_that_is_a_link_is_refused_and_its_target_kept(one_epoch, tmp_path):
    _, run = one_epoch
    precious = tmp_path / "precious.txt"
    precious.write_text("precious data")
    (run / run_dir_module.LOCK_FILE).unlink()
    (run / run_dir_module.LOCK_FILE).symlink_to(precious)
    with pytest.raises(ConfigError, match=r"\.lock: cannot be this run's lock file"):
        resnets.train(resume=str(run), epochs=2, progress=False)
    assert precious.read_text() == "precious data"


def test_deleting_only_the_lock_file_does_not_stop_the_run(tmp_path, monkeypatch):
    real = run_dir_module.RunDir.write_epoch

    def delete_the_lock(self, history, title):  # "a stale lock file", someone thinks
        (self.path / run_dir_module.LOCK_FILE).unlink(missing_ok=True)
        return real(self, history, title)

    monkeypatch.setattr(run_dir_module.RunDir, "write_epoch", delete_the_lock)
    result = resnets.train(epochs=2, output=str(tmp_path / "runs"), name="run", **FAST)
    assert result.metrics["epochs_run"] == 2


def test_a_moved_data_folder_resumes_from_its_new_place_and_from_another_directory(one_epoch, tmp_path,
                                                                                    monkeypatch):
    data, run = one_epoch
    moved = data.rename(tmp_path / "moved")
    monkeypatch.chdir(tmp_path / "runs")  # a requeued job starts elsewhere
    result = resnets.train(resume=str(run), epochs=2, progress=False, data_dir=str(moved))
    assert result.metrics["epochs_run"] == 2  # the same files, relative to the folder: the same data


def test_loader_processes_are_bounded():
    from resnets.training.config import MAX_WORKERS, TrainConfig

    with pytest.raises(ConfigError, match=f"workers must be <= {MAX_WORKERS}"):
        TrainConfig(workers=10**6).resolved()
