"""What every DataLoader worker of resnets does first."""
from __future__ import annotations

import os


def own_process_group(worker_id: int) -> None:
    """A DataLoader worker's start: out of the trainer's process group. Ctrl-C, `kill -- -PGID` and torchrun's
    shutdown (os.killpg) signal the trainer's whole group; a worker ended by them would fail the very steps the
    trainer still takes before it saves. Workers end with the trainer anyway: torch's watchdog sees their
    parent go, and the trainer ends them itself at its exit."""
    os.setpgid(0, 0)
