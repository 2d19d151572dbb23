"""`resnets serve`: arguments, the checks made before the model loads, and uvicorn in one process or several.

FastAPI and uvicorn are imported when the command runs, not when `resnets --help` builds its parser: they are
an extra (`resnets[serve]`).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import socket
from typing import Any, Callable, Iterator

from ..device import resolve_device
from ..errors import ConfigError
from ..fileio import read_bounded
from ..export.pipeline import BACKENDS, load_on_backend
from ..options import add_device_argument

SERVE_EXTRA = "resnets serve needs the serve extra: pip install 'resnets[serve]'"
WORKER_ENV = "RESNETS_SERVE_WORKER"  # JSON of what each worker process loads (--workers > 1)
# Requests in flight get this long to finish after SIGTERM; then uvicorn cancels them. Longer than the worst
# batch of a large model on a CPU, shorter than the 30 s or more a scheduler usually waits before SIGKILL.
GRACEFUL_SHUTDOWN_S = 25
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
KEY_FILE_MAX_BYTES = 64 * 2**10  # a key is a line; a larger file is the wrong file


def add_serve(p: argparse.ArgumentParser) -> None:
    p.description = ("Serve a classifier over HTTP: POST /predict (an image, or multipart/form-data of several), "
                     "POST /cam, GET /health, /metadata, /metrics (Prometheus), /docs (OpenAPI) and / (a web page).")
    p.add_argument("source", nargs="?", default=None, metavar="RUN|WEIGHTS|EXPORTED_FILE",
                   help="a run folder (its best weights), a weights file or folder, hf-hub:ORG/REPO, or an exported "
                        "model (.onnx, .pt2, OpenVINO .xml)")
    p.add_argument("--model", default=None, metavar="NAME",
                   help="without SOURCE: published weights (resnet50.a1_in1k); with it, the architecture of a bare "
                        "state dict")
    p.add_argument("--backend", default=None, choices=BACKENDS,
                   help="what runs the model (default: torch for weights, the file's own runtime for an export)")
    add_device_argument(p)
    net = p.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1", help="0.0.0.0: every interface [default: 127.0.0.1]")
    net.add_argument("--port", type=int, default=8000, help="[default: 8000]")
    net.add_argument("--workers", type=int, default=1, metavar="N",
                     help="server processes, each with its own model and batches; each runs its model (torch, "
                          "onnxruntime or OpenVINO) and decodes images on cores / N threads [default: 1]")
    batching = p.add_argument_group("micro-batching")
    batching.add_argument("--max-batch", type=int, default=32, metavar="N",
                          help="the most images in one forward pass [default: 32]")
    batching.add_argument("--max-wait-ms", type=float, default=5.0, metavar="MS",
                          help="how long an image waits for others to share its batch [default: 5]")
    batching.add_argument("--max-queue", type=int, default=256, metavar="N",
                          help="the most images waiting; beyond, requests answer 503 [default: 256]")
    limits = p.add_argument_group("limits")
    limits.add_argument("--max-body-mb", type=float, default=20.0, metavar="MB",
                        help="larger request bodies answer 413 [default: 20]")
    limits.add_argument("--max-images", type=int, default=32, metavar="N",
                        help="the most images in one request [default: 32]")
    limits.add_argument("--max-pixels", type=int, default=40_000_000, metavar="N",
                        help="images declaring more pixels are refused before decoding [default: 40000000]")
    limits.add_argument("--read-timeout-s", type=float, default=10.0, metavar="S",
                        help="a body not all received this long after its headers answers 408 [default: 10]")
    limits.add_argument("--max-in-flight", type=int, default=64, metavar="N",
                        help="the most POST requests served at once, per worker; beyond, 503 before the body is "
                             "read. Their bodies are in memory together: at worst N x --max-body-mb (64 x 20 MiB = "
                             "1.25 GiB by default), twice that while forms are parsed [default: 64]")
    auth = p.add_argument_group("API key (every route but /health asks for it)").add_mutually_exclusive_group()
    auth.add_argument("--api-key", default=None, metavar="KEY",
                      help="sent as Authorization: Bearer KEY, X-API-Key: KEY, or a Basic password (any user); "
                           "other users of this machine can read it in the process list, --api-key-file they cannot")
    auth.add_argument("--api-key-file", default=None, metavar="FILE", help="the key is this file's first line")


def read_key_file(path: str) -> str:
    """The key on the file's first line. Judged by os.stat before it is opened: opening a FIFO waits for a
    writer for ever, and /dev/zero has no end."""
    try:
        text = read_bounded(path, KEY_FILE_MAX_BYTES, "a key file holds").decode("utf-8")
    except ValueError as e:  # UnicodeDecodeError too
        raise ConfigError(f"--api-key-file {path}: {e}") from None
    except OSError as e:
        raise ConfigError(f"--api-key-file {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    lines = text.splitlines()
    key = lines[0].strip() if lines else ""
    if not key:
        raise ConfigError(f"--api-key-file {path}: its first line is empty; write the key there")
    return key


def settings_from(args: argparse.Namespace) -> Any:
    from .app import ServeSettings

    key = read_key_file(args.api_key_file) if args.api_key_file else args.api_key
    if key is not None and not key.strip():
        raise ConfigError("--api-key is empty")
    return ServeSettings(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                         max_images=args.max_images, max_body_mb=args.max_body_mb, max_pixels=args.max_pixels,
                         read_timeout_s=args.read_timeout_s, max_in_flight=args.max_in_flight,
                         api_key=key and key.strip(), device=args.device)


def check_network(args: argparse.Namespace) -> None:
    if not 1 <= args.port <= 65535:
        raise ConfigError(f"--port must be in 1..65535, got {args.port}")
    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    if args.source is None and args.model is None:
        raise ConfigError("give SOURCE (a run, weights or an exported model) or --model NAME (published weights)")


def listen(host: str, port: int) -> socket.socket:
    """The server's socket, bound now: a port in use is one line before the model loads, not a log record after."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Inherited by every accepted connection (Linux): without it, an answer on a kept-alive connection waited for
    # the client's delayed ACK, 44 ms a request against 0.2 ms (measured with uvicorn 0.55 on sockets passed in)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)  # worker processes serve on it
    return sock


@contextlib.contextmanager
def stop_signals(on_stop: Callable[[], None]) -> Iterator[list[int]]:
    """SIGTERM and SIGINT call `on_stop` and are recorded, for as long as the server runs.

    uvicorn installs its own handlers while it serves, restores the ones it found, then raises the signal it
    caught again so that the process dies of it (exit -15 after a graceful stop). The handler found is this
    one, so the raise is recorded and the command still returns 0. It also covers the moment before uvicorn's
    handlers are in place."""
    caught: list[int] = []

    def record(sig: int, frame: Any) -> None:
        caught.append(sig)
        on_stop()

    previous = {sig: signal.signal(sig, record) for sig in STOP_SIGNALS}
    try:
        yield caught
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _uvicorn() -> Any:
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn
        try:  # python-multipart's module, renamed in 0.0.13 (the old name warns)
            import python_multipart  # noqa: F401
        except ImportError:
            import multipart  # noqa: F401
    except ImportError:
        raise ConfigError(SERVE_EXTRA) from None
    return uvicorn


def _config(uvicorn: Any, app: Any, **kwargs: Any) -> Any:
    # ws="none": no websocket routes; log_level warning: uvicorn's start and stop lines are ours (print below)
    return uvicorn.Config(app, log_level="warning", ws="none", lifespan="on",
                          timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, **kwargs)


def serve_one(uvicorn: Any, model: Any, settings: Any, sock: socket.socket, banner: str) -> list[int]:
    from .app import create_app

    class AnnouncedServer(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                print(banner, flush=True)

    server = AnnouncedServer(_config(uvicorn, create_app(model, settings)))
    with stop_signals(lambda: setattr(server, "should_exit", True)) as caught:
        server.run(sockets=[sock])
    if not server.started:
        raise ConfigError("the server did not start (see uvicorn's message above)")
    return caught


def serve_workers(uvicorn: Any, args: argparse.Namespace, settings: Any, sock: socket.socket, banner: str) -> None:
    """`args.workers` processes, each loading the model (`worker_app`) and serving on the shared socket. uvicorn
    spawns them from an import string, so what they load travels in WORKER_ENV; each takes its share of the
    cores for its model's threads and its decoding, else N workers would run N x cores threads on the same cores.

    The supervisor handles SIGTERM and SIGINT itself: it passes SIGTERM to each worker, which finishes its
    requests in flight, and returns once they have exited."""
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    from ..device import usable_cores

    os.environ[WORKER_ENV] = json.dumps({"source": args.source, "model": args.model, "backend": args.backend,
                                         "settings": dataclasses.asdict(settings),
                                         "threads": max(1, usable_cores() // args.workers)})
    config = _config(uvicorn, f"{__name__}:worker_app", factory=True, workers=args.workers)
    supervisor = Multiprocess(config, sockets=[sock])
    print(banner, flush=True)  # before the workers have loaded the model: /health tells when one has
    supervisor.run()
    if any(process.exitcode == STARTUP_FAILURE for process in supervisor.processes):
        raise ConfigError("a worker process failed to start (see its message above)")


def worker_app() -> Any:
    """The app of one worker process (uvicorn's factory)."""
    import torch

    from .app import ServeSettings, create_app

    spec = json.loads(os.environ[WORKER_ENV])
    # Before the model loads: onnxruntime and OpenVINO size their thread pools from it when they start
    torch.set_num_threads(spec["threads"])
    model = load_on_backend(spec["source"], spec["model"], spec["backend"])
    return create_app(model, ServeSettings(**spec["settings"]), decoders=spec["threads"])


def describe(model: Any, url: str, workers: int) -> str:
    from .app import describe_model

    arch, backend = describe_model(model)
    more = f" with {workers} workers" if workers > 1 else ""
    return f"serving {arch} ({backend}, {model.num_classes} classes) on {url}{more} — docs at /docs"


def run_serve(args: argparse.Namespace) -> int:
    uvicorn = _uvicorn()
    settings = settings_from(args)
    check_network(args)
    resolve_device(args.device)

    url = f"http://{f'[{args.host}]' if ':' in args.host else args.host}:{args.port}"
    sock = listen(args.host, args.port)
    try:
        model = load_on_backend(args.source, args.model, args.backend)
        banner = describe(model, url, args.workers)
        if args.workers == 1:
            caught = serve_one(uvicorn, model, settings, sock, banner)
        else:
            del model  # each worker loads its own
            serve_workers(uvicorn, args, settings, sock, banner)
            caught = []
    finally:
        sock.close()
    why = f" ({signal.Signals(caught[0]).name})" if caught else ""
    print(f"stopped serving on {url}{why}", flush=True)
    return 0


COMMANDS = {"serve": (add_serve, run_serve)}
