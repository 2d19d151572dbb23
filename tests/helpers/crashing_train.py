"""`resnets` with a crash injected, for the torchrun tests: run as `torchrun ... crashing_train.py train ...`.

In the first attempt only (TORCHELASTIC_RESTART_COUNT=0), rank CRASH_RANK fails after CRASH_AFTER batches
of epoch CRASH_EPOCH: with an exception (CRASH_MODE=raise) or as if the kernel killed it (CRASH_MODE=kill).
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

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i == self.batches:
                print(f"injected crash on rank {os.environ['RANK']}", file=sys.stderr, flush=True)
                if os.environ.get("CRASH_MODE") == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise InjectedCrash("injected by the test")
            yield batch


real_train_one_epoch = trainer.train_one_epoch


def crashing_train_one_epoch(step, loader, cfg, progress, checkpoint, batches_per_epoch):
    if (os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0" and step.dist.rank == int(os.environ["CRASH_RANK"])
            and progress.epoch == int(os.environ["CRASH_EPOCH"])):
        loader = CrashAfter(loader, int(os.environ["CRASH_AFTER"]))
    return real_train_one_epoch(step, loader, cfg, progress, checkpoint, batches_per_epoch)


trainer.train_one_epoch = crashing_train_one_epoch
sys.exit(cli.main())
