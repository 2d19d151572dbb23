"""A bounded load test of `resnets serve` from a real HTTP client, against `resnets predict`'s batch rate.

    python benchmarks/serve_load.py SOURCE [--backend torch|onnx] [--clients 1,8,32] [--requests 256]
        [--max-batch 32] [--max-wait-ms 5] [--workers 1] [--time-limit-s 120] [--label NAME]
        [--results FILE.jsonl]

The server runs as `resnets serve SOURCE --port P --workers N` in its own processes on 127.0.0.1. For each number
of clients, that many httpx clients send one image per request (raw JPEG bytes) until `--requests` have been sent,
or the time limit ends the level (the test stops by itself); throughput (images/s over the level's wall time), p50
and p99 latency and errors are recorded. The baseline is `predict_images` on the same JPEG files at batch 32 in this
process on the same backend (decode and preprocessing included, as the server's are): "ratio" is served img/s
over it. Results: one JSON line per level in benchmarks/results/<date>-cpu-serve.jsonl, and a markdown table.

`load_test` is what the test suite runs with small numbers (tests/serve/test_load.py).
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def jpeg_images(count: int, side: int, seed: int = 0) -> list[bytes]:
    """`count` different JPEG files of side x side noise with a shape on it (decoding costs what a photo's does)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        image = Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8))
        x, y = rng.integers(0, side // 2, 2)
        ImageDraw.Draw(image).ellipse((x, y, x + side // 3, y + side // 3), fill=tuple(rng.integers(0, 255, 3)))
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


async def _load(url: str, images: list[bytes], clients: int, requests: int, time_limit_s: float,
                headers: dict[str, str]) -> dict:
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    sent = 0
    deadline = time.perf_counter() + time_limit_s

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal sent
        while sent < requests and time.perf_counter() < deadline:
            body = images[sent % len(images)]
            sent += 1
            start = time.perf_counter()
            try:
                r = await http.post(url + "/predict", content=body,
                                    headers={"content-type": "image/jpeg", **headers})
                if r.status_code != 200:
                    errors.append(f"{r.status_code}: {r.text[:100]}")
                    continue
            except httpx.HTTPError as e:
                errors.append(f"{type(e).__name__}: {e}")
                continue
            latencies.append(time.perf_counter() - start)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=httpx.Timeout(max(30.0, time_limit_s)), limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {"clients": clients, "requests": len(latencies) + len(errors), "ok": len(latencies),
            "errors": len(errors), "error_examples": errors[:3], "wall_s": round(wall, 3),
            "img_per_s": len(latencies) / wall if wall > 0 else 0.0, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "stopped_by_time": len(latencies) + len(errors) < requests}


def load_test(url: str, images: list[bytes], clients: int, requests: int, time_limit_s: float = 120.0,
              headers: dict[str, str] | None = None) -> dict:
    """`requests` single-image POSTs to `url`/predict from `clients` concurrent clients, bounded by `time_limit_s`."""
    return asyncio.run(_load(url.rstrip("/"), images, clients, requests, time_limit_s, headers or {}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, timeout_s: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            if httpx.get(url + "/health", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"the server did not answer /health within {timeout_s} s")


def predict_rate(source: str, backend: str, images: list[bytes], batch_size: int = 32) -> float:
    """img/s of `predict_images` over the same JPEG files (decode and preprocessing included)."""
    from resnets.export.pipeline import load_on_backend
    from resnets.inference.predict import predict_images

    model = load_on_backend(source, backend=backend)
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        files = []
        for i, data in enumerate(images):
            files.append(Path(tmp) / f"{i:05d}.jpg")
            files[-1].write_bytes(data)
        predict_images(model, files[:batch_size], batch_size=batch_size, device="cpu")  # warm-up
        start = time.perf_counter()
        predict_images(model, files, batch_size=batch_size, device="cpu")
        return len(files) / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source")
    p.add_argument("--backend", default="torch")
    p.add_argument("--clients", default="1,8,32")
    p.add_argument("--requests", type=int, default=256)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--workers", type=int, default=1, help="resnets serve --workers")
    p.add_argument("--image-side", type=int, default=256)
    p.add_argument("--time-limit-s", type=float, default=120.0)
    p.add_argument("--label", default=None)
    p.add_argument("--results", default=str(RESULTS / f"{datetime.date.today()}-cpu-serve.jsonl"))
    args = p.parse_args()

    images = jpeg_images(64, args.image_side)
    baseline = predict_rate(args.source, args.backend, images * 4)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "resnets", "serve", args.source, "--port", str(port), "--backend", args.backend,
               "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
               "--workers", str(args.workers)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    rows = []
    try:
        wait_healthy(url, server)
        load_test(url, images, 4, 16)  # warm-up: first batches, thread pools
        for clients in map(int, args.clients.split(",")):
            row = load_test(url, images, clients, args.requests, args.time_limit_s)
            row |= {"label": args.label or Path(args.source).name, "source": args.source, "backend": args.backend,
                    "workers": args.workers, "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms,
                    "image_side": args.image_side, "predict_img_per_s": baseline, "ratio": row["img_per_s"] / baseline,
                    "load_average": os.getloadavg()[0], "date": datetime.datetime.now().isoformat(timespec="seconds")}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
            Path(args.results).parent.mkdir(parents=True, exist_ok=True)
            with open(args.results, "a") as f:
                f.write(json.dumps(row) + "\n")
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    print("| model | backend | workers | clients | requests | img/s | p50 ms | p99 ms | errors | predict b32 img/s "
          "| ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['label']} | {r['backend']} | {r['workers']} | {r['clients']} | {r['requests']} | "
              f"{r['img_per_s']:.1f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['errors']} | "
              f"{r['predict_img_per_s']:.1f} | {r['ratio']:.2f} |")


if __name__ == "__main__":
    main()
