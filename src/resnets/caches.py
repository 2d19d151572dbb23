"""Where resnets keeps what it can rebuild (decoded image stores of --in-memory, torch.compile's caches), and
torch.compile's modes."""
from __future__ import annotations

import getpass
import os
import tempfile
from pathlib import Path

# torch.compile's modes: reduce-overhead adds CUDA graphs; max-autotune times Triton kernels and adds CUDA graphs
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def compile_mode_arg(mode: str) -> str | None:
    """torch.compile's `mode` argument for one of COMPILE_MODES ("default" is None there)."""
    return None if mode == "default" else mode


_SET_HERE: set[str] = set()  # values this process gave TORCHINDUCTOR_CACHE_DIR: not the user's choice either


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "resnets"


def _torch_default_compile_cache() -> str:
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir as torch_default

        return torch_default()
    except ImportError:  # torch before that module: the same rule
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = "unknown_user"
        return os.path.join(tempfile.gettempdir(), f"torchinductor_{user}")


def keep_compile_cache(cache_dir: str | os.PathLike | None = None) -> Path:
    """Point torch.compile's caches (FX graphs, AOTAutograd, autotuning, the Triton kernels beneath) at
    `cache_dir`/inductor, unless the user set TORCHINDUCTOR_CACHE_DIR. Torch's own default is
    /tmp/torchinductor_$USER, which a reboot may empty; with the cache a second run skips most of the
    compilation (BENCHMARKS.md, "torch.compile's kept cache on the CPU")."""
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    # Importing torch._dynamo writes torch's default into the variable, and an earlier call here wrote
    # its own: neither is the user's choice.
    if current is None or os.path.abspath(current) in {os.path.abspath(_torch_default_compile_cache()), *_SET_HERE}:
        chosen = os.path.abspath(Path(cache_dir or default_cache_dir()) / "inductor")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = chosen
        _SET_HERE.add(chosen)
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
