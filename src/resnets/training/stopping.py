"""Stopping a run on request without losing it: SIGTERM (what SLURM, Kubernetes and spot instances send before
they take the machine) and SIGINT (Ctrl-C).

The first signal is only noted. The run finishes the step it is in, writes a resume state at that exact place
(mid-epoch too) and ends with RunStopped, which the CLI turns into one line and the shell's code for the signal
(130, 143). A second signal stops at once, as if nothing caught the first. Before training starts there is
nothing to save: the first signal ends the run at once, with RunStopped.

The DataLoader workers leave the trainer's process group, so a signal to the group (Ctrl-C in a terminal,
torchrun's shutdown) reaches only the trainer. SLURM's own signal goes to every process of a job step,
workers too: with `-j N`, ask for it at the batch shell only (`#SBATCH --signal=B:TERM@120`) and have the shell
pass it on to the trainer (`trap 'kill -TERM $pid' TERM`).

Under torchrun each process may get the signal at another step, or alone; the processes agree on a stop
through a small host-side exchange every `POLL_STEPS` optimizer steps, so they all save the same step.
"""
from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Iterator

from ..errors import RunStopped
from .distributed import Distributed

SIGNALS = (signal.SIGINT, signal.SIGTERM)
POLL_STEPS = 8  # between exchanges under torchrun: a stop waits at most this many steps, which cost little


class StopRequest:
    """The signal that asked this process to stop, if one did; `armed` once there is progress to save."""

    def __init__(self) -> None:
        self.signum = 0
        self.armed = False
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum:  # the second: stop now, as if nothing had caught either
            self.restore()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signum)
            return
        if not self.armed:
            raise RunStopped(f"stopped by {self.name(signum)} before training began; nothing to save",
                             128 + signum)
        self.signum = signum

    @contextmanager
    def installed(self) -> Iterator["StopRequest"]:
        """Handlers for SIGINT and SIGTERM while the block runs (main thread only: elsewhere, e.g. a training
        loop inside a web server's worker thread, Python does not deliver signals, and nothing changes)."""
        if threading.current_thread() is threading.main_thread():
            # A signal the process was started ignoring (SIGINT of a `cmd &` job in a script) stays ignored
            self._previous = {sig: signal.signal(sig, self._handle) for sig in SIGNALS
                              if signal.getsignal(sig) is not signal.SIG_IGN}
        try:
            yield self
        finally:
            self.restore()

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous = {}

    def agreed(self, ctx: Distributed, step: int | None = None) -> int:
        """The signal every process stops for (0: go on). Alone, whether one came; under torchrun the largest
        any process got, asked every POLL_STEPS steps (`step`), or now when `step` is None."""
        if not ctx.enabled:
            return self.signum
        if step is not None and step % POLL_STEPS:
            return 0
        return ctx.max(self.signum)

    @staticmethod
    def name(signum: int) -> str:
        return signal.Signals(signum).name
