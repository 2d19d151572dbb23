"""The load test of BENCHMARKS.md in short: benchmarks/serve_load.py's clients against a real server, bounded in
requests and time; every request answered, none refused, and the concurrent ones batched together."""
from __future__ import annotations

import contextlib
import http.server
import importlib.util
import re
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

pytest.importorskip("fastapi")
SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "serve_load.py"


@pytest.fixture(scope="module")
def serve_load():
    spec = importlib.util.spec_from_file_location("serve_load", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("clients", [1, 8])
def test_a_bounded_load_is_served_without_errors(serve_load, tiny, serving, clients) -> None:
    images = serve_load.jpeg_images(8, 64)
    with serving(tiny["model"], max_wait_ms=20) as url:
        row = serve_load.load_test(url, images, clients=clients, requests=48, time_limit_s=60)
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
    assert row["errors"] == 0 and row["ok"] == 48 and not row["stopped_by_time"], row["error_examples"]
    assert row["img_per_s"] > 0 and row["p50_ms"] <= row["p99_ms"]
    batches = float(re.search(r"^resnets_batch_size_count (\S+)$", metrics, re.M).group(1))
    images_done = float(re.search(r"^resnets_images_total (\S+)$", metrics, re.M).group(1))
    assert images_done >= 48
    if clients == 1:
        assert batches == images_done  # one client waits for each answer: nothing to batch
    else:
        assert batches < images_done  # 8 clients' images shared forward passes


class SlowHandler(http.server.BaseHTTPRequestHandler):
    """Answers every POST with 200 after half a second."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(0.5)
        body = b'{"predictions": []}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # no line on stderr for each request
        pass


@contextlib.contextmanager
def slow_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_load_test_stops_by_itself_at_its_time_limit(serve_load) -> None:
    with slow_server() as url:
        start = time.monotonic()
        row = serve_load.load_test(url, serve_load.jpeg_images(1, 16), clients=2, requests=100, time_limit_s=1)
        elapsed = time.monotonic() - start
    # Two clients at 0.5 s a request send 4 to 6 in the second: the limit, not the 100, ended the level
    assert row["stopped_by_time"] and row["errors"] == 0 and 2 <= row["ok"] <= 8, row
    assert elapsed < 3


def test_failed_requests_are_counted_as_errors(serve_load) -> None:
    # Nothing listens on this port: every request fails fast, and the level still ends, with its errors counted.
    row = serve_load.load_test(f"http://127.0.0.1:{serve_load.free_port()}", serve_load.jpeg_images(1, 16),
                               clients=2, requests=6, time_limit_s=30)
    assert row["errors"] == 6 and row["ok"] == 0 and not row["stopped_by_time"]
