"""Distributed training: torchrun with 2 gloo processes on the CPU, the sharded data order, resumes across
process counts, failures on one rank and torchrun restarts."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader

import resnets
from resnets.errors import ConfigError
from resnets.training.checkpoint import list_checkpoints, load_checkpoint
from resnets.training.config import TrainConfig
from resnets.training.distributed import Distributed, convert_sync_bn
from resnets.training.optim import scaled_lr
from resnets.training.sampling import EpochSampler

HELPERS = Path(__file__).resolve().parents[1] / "helpers"
HELPER = HELPERS / "crashing_train.py"
# digits: 1,438 train images, 719 per process, 22 batches of 32 per process and epoch.
# --ema-decay: the EMA averages each process's own BN statistics; a resumed run must carry on from them exactly
SMALL = ["--img-size", "16", "-b", "32", "--epochs", "2", "--checkpoint-every", "5", "--ema-decay", "0.9",
         "--no-progress"]


def torchrun(args: list[str], output: Path, script: Path | None = None, restarts: int = 0, env: dict | None = None,
             nproc: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                f"--max-restarts={restarts}", "--monitor-interval=0.5"]
    target = [str(script)] if script else ["-m", "resnets"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    # --device cpu: these are gloo tests; on a one-GPU machine "auto" would give rank 1 no GPU of its own.
    return subprocess.run([*launcher, *target, "train", *args, "--device", "cpu", "--output", str(output)], env=env,
                          capture_output=True, text=True, timeout=timeout)


def same_weights(a: Path, b: Path) -> list[str]:
    """Names of the tensors that differ between two weights files (all must exist in both)."""
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    return [k for k in wa if not torch.equal(wa[k], wb[k])]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> Path:
    """An uninterrupted 2-process run: the reference the other tests compare with."""
    output = tmp_path_factory.mktemp("ddp")
    done = torchrun([*SMALL, "--name", "run"], output)
    assert done.returncode == 0, done.stderr[-3000:]
    return output / "run"


# ---------------------------------------------------------------- the data order, without processes

@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("start", [0, 7, 64])
def test_ranks_share_the_epoch_order_without_overlap(world, start):
    samplers = [EpochSampler(100, seed=3, rank=r, world_size=world) for r in range(world)]
    for s in samplers:
        s.set_epoch(2, start=start)
    shares = [[index for _, index in s] for s in samplers]
    assert len({len(share) for share in shares}) == 1 and len(shares[0]) == len(samplers[0])  # DDP's lockstep
    order = samplers[0].order(2).tolist()
    # Interleaved, the shares are the order itself from `start`: positions are consumed front to back.
    interleaved = [share[i] for i in range(len(shares[0])) for share in shares]
    assert interleaved == order[start:start + len(interleaved)]
    assert len(interleaved) > 100 - start - world


def test_a_resume_with_another_process_count_continues_at_the_same_position():
    batch, consumed_batches = 4, 5
    two = [EpochSampler(90, seed=1, rank=r, world_size=2) for r in range(2)]
    seen = set()
    for s in two:
        s.set_epoch(1)
        seen |= {i for _, i in list(s)[:consumed_batches * batch]}
    one = EpochSampler(90, seed=1)
    one.set_epoch(1, start=consumed_batches * batch * 2)  # Progress.samples_in_epoch after 5 batches on 2
    rest = [i for _, i in one]
    assert not seen & set(rest) and seen | set(rest) == set(range(90))


def test_lr_scales_with_the_global_batch_when_asked():
    cfg = TrainConfig(lr=0.1, lr_base_batch=256)
    assert scaled_lr(cfg, 1024) == pytest.approx(0.1)
    assert scaled_lr(TrainConfig(lr=0.1, scale_lr="linear"), 1024) == pytest.approx(0.4)
    assert scaled_lr(TrainConfig(lr=0.1, scale_lr="sqrt"), 1024) == pytest.approx(0.2)
    with pytest.raises(ConfigError, match="scale-lr"):
        TrainConfig(scale_lr="cubic").validate()


def test_sync_bn_is_refused_on_cpu_processes_and_converts_alone():
    model = resnets.create_model("cifar_resnet20", num_classes=3)
    with pytest.raises(ConfigError, match="CUDA"):
        convert_sync_bn(model, Distributed(rank=0, world_size=2), torch.device("cpu"))
    converted = convert_sync_bn(model, Distributed(), torch.device("cpu"))
    assert any(isinstance(m, nn.SyncBatchNorm) for m in converted.modules())
    assert not any(type(m) is nn.BatchNorm2d for m in converted.modules())


def test_a_single_process_run_with_sync_bn_saves_plain_batchnorm_weights(tmp_path):
    result = resnets.train(output=str(tmp_path), epochs=1, img_size=16, batch_size=64, sync_bn=True, lr=0.1,
                           scale_lr="linear", lr_base_batch=128, progress=False)
    config = (result.run_dir / "config.yaml").read_text()
    assert "resolved_lr: 0.05" in config and "world_size: 1" in config
    plain = resnets.create_model("cifar_resnet20", num_classes=10)
    plain.load_state_dict(load_file(str(result.run_dir / "best.safetensors")))


# ---------------------------------------------------------------- 2 gloo processes under torchrun

def test_two_processes_write_once_and_count_every_val_image_once(two_process_run):
    output = two_process_run.parent
    assert [p.name for p in output.iterdir()] == ["run"]  # one run directory: only rank 0 creates and writes
    metrics = json.loads((two_process_run / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["val_samples"] == 359 and metrics["global_steps"] == 44
    assert sum(row["support"] for row in metrics["per_class"] if row["class"] in metrics["class_names"]) == 359
    state = load_checkpoint(list_checkpoints(two_process_run)[-1])
    assert state["world_size"] == 2 and len(state["rng_per_rank"]) == 2

    # The distributed validation equals one process evaluating the whole split with the same weights.
    from resnets.data import eval_transform, load_splits
    from resnets.evaluation import evaluate

    model = resnets.load_model(two_process_run / "best.safetensors")
    splits = load_splits("digits", None, val_fraction=0.2, seed=0,
                         eval_transform=eval_transform(model.pretrained_cfg, 16))
    alone = evaluate(model, DataLoader(splits.val, batch_size=32), torch.device("cpu"))
    assert alone.num_samples == 359
    assert alone.top1 == pytest.approx(metrics["best_top1"]) and alone.top5 == pytest.approx(metrics["best_top5"])


def test_a_crash_with_max_restarts_resumes_by_itself_and_matches_the_uninterrupted_run(tmp_path, two_process_run):
    env = {"CRASH_RANK": "1", "CRASH_EPOCH": "2", "CRASH_AFTER": "9", "CRASH_MODE": "kill"}
    done = torchrun([*SMALL, "--name", "run"], tmp_path, script=HELPER, restarts=1, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "injected crash on rank 1" in done.stderr
    assert "torchrun restart 1: resuming" in done.stderr and "from checkpoint-0002-000000030.pt" in done.stderr
    # Same data order, same augmentation, each rank's RNG restored: the same weights, bit for bit.
    for name in ("last.safetensors", "best.safetensors"):
        assert same_weights(tmp_path / "run" / name, two_process_run / name) == []


def test_a_signal_to_one_rank_stops_both_at_the_same_step_and_the_resume_matches(tmp_path, two_process_run):
    # Only rank 1 is sent SIGTERM (in epoch 2, before its batch 9): the ranks agree on the stop at their next
    # exchange, every 8 steps, so both save step 22 + 16 = 38 and end with 143.
    env = {"CRASH_RANK": "1", "CRASH_EPOCH": "2", "CRASH_AFTER": "9", "CRASH_MODE": "SIGTERM"}
    stopped = torchrun([*SMALL, "--name", "run"], tmp_path, script=HELPER, env=env)
    assert stopped.returncode != 0
    assert ("resnets train: stopped by SIGTERM at epoch 2, image 1,024/1,438 (step 38), saved; go on with "
            f"`resnets train --resume {tmp_path / 'run'}`") in stopped.stderr
    # torchrun reports the exit codes (and its own traceback); no traceback passes through resnets' code
    assert "exitcode  : 143" in stopped.stderr and f"{os.sep}resnets{os.sep}training" not in stopped.stderr
    assert list_checkpoints(tmp_path / "run")[-1].name == "checkpoint-0002-000000038.pt"
    resumed = torchrun(["--resume", str(tmp_path / "run"), "--no-progress"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for name in ("last.safetensors", "best.safetensors"):
        assert same_weights(tmp_path / "run" / name, two_process_run / name) == []


def test_an_exception_on_one_rank_ends_the_job_with_an_error(tmp_path):
    env = {"CRASH_RANK": "1", "CRASH_EPOCH": "1", "CRASH_AFTER": "3", "CRASH_MODE": "raise"}
    started = time.monotonic()
    done = torchrun([*SMALL, "--name", "run", "--dist-timeout", "60"], tmp_path, script=HELPER, env=env)
    assert done.returncode != 0 and "InjectedCrash" in done.stderr
    assert time.monotonic() - started < 120  # torchrun stops rank 0, which waits in an all-reduce
    assert not list(tmp_path.rglob(".*.tmp"))  # no half-written file left behind


def test_a_user_error_found_by_rank_0_ends_every_rank_with_one_line(tmp_path):
    done = torchrun([*SMALL, "--resume", str(tmp_path / "missing.pt")], tmp_path, timeout=120)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("resnets train: error:")]
    assert errors and all("no such checkpoint" in line for line in errors)
    assert "resnets/training" not in done.stderr  # no traceback of ours (torchrun prints its own summary)


def test_two_process_state_resumes_in_one_process(tmp_path, two_process_run):
    run_dir = tmp_path / "run"
    shutil.copytree(two_process_run, run_dir)
    mid_epoch = list_checkpoints(run_dir)[0]  # epoch 2, step 40: 18 batches x 32 x 2 processes consumed
    assert mid_epoch.name == "checkpoint-0002-000000040.pt"
    result = resnets.train(resume=str(mid_epoch), epochs=3, progress=False)
    # The rest of epoch 2 (1,438 - 1,152 = 286 images: 8 batches of 32 alone), then a whole epoch of 44.
    assert result.metrics["global_steps"] == 40 + 8 + 44 and result.metrics["world_size"] == 1
    assert len((run_dir / "summary.csv").read_text().splitlines()) == 1 + 3


@pytest.mark.slow
def test_one_process_state_resumes_in_two_processes(tmp_path):
    first = resnets.train(output=str(tmp_path), name="run", epochs=1, img_size=16, batch_size=32,
                          progress=False)
    assert first.metrics["global_steps"] == 44
    done = torchrun(["--resume", str(first.run_dir), "--epochs", "2", "--no-progress"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((first.run_dir / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["global_steps"] == 44 + 22 and metrics["epochs_run"] == 2


def test_two_processes_train_from_the_in_memory_store(tmp_path):
    done = torchrun(["--in-memory", "--img-size", "16", "-b", "32", "--epochs", "1", "--no-progress", "--name", "m"],
                    tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("in memory: 1,438 training images") == 1  # said once, by rank 0
    assert json.loads((tmp_path / "m" / "metrics.json").read_text())["global_steps"] == 22


def test_a_cycle_whose_last_batch_a_rank_could_not_read_still_averages_its_gradients():
    # the cycle's other batches ran under no_sync: without an all-reduce the ranks' weights drift apart
    script = HELPERS / "ddp_accumulation.py"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == dict(steps=3, agree=True, averaged=True)
