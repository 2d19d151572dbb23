"""`resnets` with a crash injected, for the torchrun tests: run as `torchrun ... crashing_train.py train ...`
(or with python alone, as one process).

In the first attempt only (TORCHELASTIC_RESTART_COUNT=0), rank CRASH_RANK fails after CRASH_AFTER batches
of epoch CRASH_EPOCH: with an exception (CRASH_MODE=raise) or as if the kernel killed it (CRASH_MODE=kill); or
it is sent a signal there, as a scheduler would send it: CRASH_MODE=SIGTERM or SIGINT to the process itself,
then CRASH_THEN (another signal) at once; with CRASH_TARGET=group to its whole process group.
"""
from __future__ import annotations

import os
import signal
import sys

from resnets import cli
from resnets.training import trainer


class InjectedCrash(RuntimeError):
    pass


class CrashAfter:
    def __init__(self, loader, batches: int):
        self.loader, self.batches = loader, batches

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str):  # what the epoch asks of its loader (yields_empty_batches, ...)
        return getattr(self.loader, name)

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i == self.batches:
                mode = os.environ.get("CRASH_MODE")
                if mode in ("SIGTERM", "SIGINT"):
                    for name in (mode, *filter(None, [os.environ.get("CRASH_THEN")])):
                        if os.environ.get("CRASH_TARGET") == "group":
                            os.killpg(os.getpgrp(), signal.Signals[name])
                        else:
                            os.kill(os.getpid(), signal.Signals[name])
                else:
                    print(f"injected crash on rank {os.environ.get('RANK', '0')}", file=sys.stderr, flush=True)
                    if mode == "kill":
                        os.kill(os.getpid(), signal.SIGKILL)
                    raise InjectedCrash("injected by the test")
            yield batch


real_train_one_epoch = trainer.train_one_epoch


def crashing_train_one_epoch(step, loader, cfg, progress, checkpoint, batches_per_epoch, stop=None):
    if (os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0" and step.dist.rank == int(os.environ["CRASH_RANK"])
            and progress.epoch == int(os.environ["CRASH_EPOCH"])):
        loader = CrashAfter(loader, int(os.environ["CRASH_AFTER"]))
    return real_train_one_epoch(step, loader, cfg, progress, checkpoint, batches_per_epoch, stop)


trainer.train_one_epoch = crashing_train_one_epoch
sys.exit(cli.main())
