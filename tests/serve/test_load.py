"""The load test of BENCHMARKS.md in short: benchmarks/serve_load.py's clients against a real server, bounded in
requests and time; every request answered, none refused, and the concurrent ones batched together."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

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


def test_the_load_test_stops_by_itself(serve_load) -> None:
    # Nothing listens on this port: every request fails fast, and the level still ends, with its errors counted.
    row = serve_load.load_test(f"http://127.0.0.1:{serve_load.free_port()}", serve_load.jpeg_images(1, 16),
                               clients=2, requests=6, time_limit_s=30)
    assert row["errors"] == 6 and row["ok"] == 0
