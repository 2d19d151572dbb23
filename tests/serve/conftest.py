"""Fixtures of the `resnets serve` tests: a tiny trained classifier saved as a run, images of its classes, and
servers on free ports of 127.0.0.1, in a thread of the test process (uvicorn.Server) or as `python -m resnets`.

FastAPI and uvicorn are imported inside the fixtures, not when this file loads: without the serve extra the test
modules skip (pytest.importorskip) rather than the whole folder failing to collect.
"""
from __future__ import annotations

import contextlib
import io
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
import torch
from PIL import Image

from resnets.models.weights import save_weights

CLASSES = ["apple", "banana", "cherry"]
START_TIMEOUT = 90  # seconds for a server process to answer /health: imports torch on 2 busy cores


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory, tiny_classifier: torch.nn.Module,
         synthetic_image: Callable) -> dict:
    """The model saved as a run folder, loaded back as `resnets serve` loads it, and six images (PNG and JPEG,
    two of each class) with their bytes."""
    from resnets.export.pipeline import load_on_backend

    root = tmp_path_factory.mktemp("serve")
    save_weights(tiny_classifier, root / "run" / "best.safetensors")
    rng = np.random.default_rng(2)
    files = []
    for i in range(6):
        path = root / "images" / f"{CLASSES[i % 3]}_{i}.{'png' if i < 3 else 'jpg'}"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(synthetic_image(i % 3, rng)).save(path)
        files.append(path)
    return {"run": root / "run", "model": load_on_backend(root / "run"), "files": files, "root": root}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _serving(model: torch.nn.Module, **settings) -> Iterator[str]:
    """`create_app(model, ServeSettings(**settings))` under uvicorn in a thread; yields its base URL."""
    import uvicorn

    from resnets.serve.app import ServeSettings, create_app

    sock = socket.socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as `resnets serve` binds its socket
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(model, ServeSettings(**settings)), log_level="warning", ws="none",
                            lifespan="on", timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the server thread did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture(scope="session")
def serving() -> Callable[..., contextlib.AbstractContextManager[str]]:
    """`with serving(model, max_batch=8, ...) as url:` a server of `model` with those ServeSettings."""
    return _serving


class ServerProcess:
    """`python -m resnets serve ...` with its output in files (a pipe nobody reads could fill and block it)."""

    def __init__(self, args: list[str], folder: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.out, self.err = folder / "stdout.txt", folder / "stderr.txt"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.process = subprocess.Popen([sys.executable, "-m", "resnets", "serve", *args, "--port",
                                             str(self.port)], stdout=out, stderr=err)

    def output(self) -> str:
        return self.out.read_text() + self.err.read_text()

    def wait_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the server exited with {self.process.returncode}: {self.output()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        pytest.fail(f"the server did not answer /health within {START_TIMEOUT} s: {self.output()[-2000:]}")

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, and its exit code."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """`server_process(*args)`: a started `resnets serve` process (killed after the test if still running)."""
    started: list[ServerProcess] = []

    def start(*args: str | Path) -> ServerProcess:
        folder = tmp_path / f"server{len(started)}"
        folder.mkdir()
        started.append(ServerProcess([str(a) for a in args], folder))
        return started[-1]

    yield start
    for server in started:
        server.kill()


def image_bytes(array: np.ndarray, fmt: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format=fmt)
    return out.getvalue()


@pytest.fixture
def encode() -> Callable[[np.ndarray, str], bytes]:
    """`encode(array, "PNG")`: an image file's bytes."""
    return image_bytes
