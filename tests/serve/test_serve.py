"""`resnets serve`'s app over real HTTP on 127.0.0.1: predictions equal to `resnets predict`'s, micro-batching seen
in the metrics, every bad request refused with a 4xx and one line while the service goes on, and the API key."""
from __future__ import annotations

import asyncio
import copy
import io
import socket
import struct
import threading
import time
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

import resnets  # noqa: E402
from resnets.inference.predict import predict_images  # noqa: E402

CLASSES = ["apple", "banana", "cherry"]
TIMEOUT = 30  # seconds, every client call
LIMITS = dict(max_body_mb=0.25, max_images=4, max_queue=16, max_pixels=1_000_000, read_timeout_s=1.0)
KEY = "s3cret-key"


def mime(path: Path) -> str:
    return "image/png" if path.suffix == ".png" else "image/jpeg"


def raw(path: Path) -> dict:
    return dict(content=path.read_bytes(), headers={"Content-Type": mime(path)})


def samples(metrics_text: str) -> dict[tuple, float]:
    """{(sample name, ((label, value), ...)): value} of a Prometheus text page."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(metrics_text) for s in family.samples}


def batch_sizes(client: httpx.Client) -> tuple[float, float, float]:
    """(batches, images in them, batches of one) from the batch size histogram."""
    page = samples(client.get("/metrics").text)
    return (page[("resnets_batch_size_count", ())], page[("resnets_batch_size_sum", ())],
            page[("resnets_batch_size_bucket", (("le", "1.0"),))])


def assert_refused(response: httpx.Response, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and fragment in detail, detail


def assert_serving(client: httpx.Client, tiny: dict) -> None:
    """The service still answers a good request after a bad one."""
    r = client.post("/predict", **raw(tiny["files"][1]))
    assert r.status_code == 200 and r.json()["predictions"][0]["top"][0]["class"] == "banana", r.text


@pytest.fixture(scope="module")
def url(tiny: dict, serving) -> str:
    with serving(tiny["model"], **LIMITS) as url:
        yield url


@pytest.fixture
def client(url: str) -> httpx.Client:
    with httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        yield client


def test_each_image_gets_the_classes_and_probabilities_resnets_predict_gives_it(client, tiny):
    expected = predict_images(tiny["model"], tiny["files"], topk=3, device="cpu")
    assert len({p.classes[0] for p in expected}) == 3  # the model tells the classes apart: the test can fail
    for file, want in zip(tiny["files"], expected):
        r = client.post("/predict", params={"topk": 3}, **raw(file))
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["model"] == "cifar_resnet20" and len(answer["predictions"]) == 1
        prediction = answer["predictions"][0]
        assert prediction["file"] == "image"
        assert [t["class"] for t in prediction["top"]] == want.classes
        assert [t["index"] for t in prediction["top"]] == [CLASSES.index(c) for c in want.classes]
        np.testing.assert_allclose([t["probability"] for t in prediction["top"]], want.probabilities, atol=1e-4)


def test_a_form_of_several_images_answers_each_in_order_with_its_file_name(client, tiny):
    files = tiny["files"][::-1]
    expected = predict_images(tiny["model"], files, device="cpu")
    form = [("images", (f.name, f.read_bytes(), mime(f))) for f in files[:4]]
    r = client.post("/predict", files=form)
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    assert [p["file"] for p in predictions] == [f.name for f in files[:4]]
    for p, want in zip(predictions, expected):
        assert len(p["top"]) == 3  # the default: 5, or every class when there are fewer
        assert p["top"][0]["class"] == want.classes[0]
        assert abs(p["top"][0]["probability"] - want.probabilities[0]) < 1e-4
    one = client.post("/predict", params={"topk": 1}, files=form[:2]).json()["predictions"]
    assert [len(p["top"]) for p in one] == [1, 1]


def test_a_topk_outside_the_classes_is_refused(client, tiny):
    for k in (0, 4):
        assert_refused(client.post("/predict", params={"topk": k}, **raw(tiny["files"][0])), 400, "k must be in 1..3")
    assert_refused(client.post("/predict", params={"topk": "two"}, **raw(tiny["files"][0])), 422, "topk: ")
    assert_serving(client, tiny)


def png_declaring(width: int, height: int) -> bytes:
    """A PNG header declaring width x height grey pixels, with no pixel data: decoding it would fail as
    truncated, so a refusal that names the size shows the size was judged before decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _chunks(data: bytes, size: int = 65536):
    for i in range(0, len(data), size):
        yield data[i:i + size]  # an iterator: httpx sends it chunked, with no Content-Length


def _multipart(parts: bytes, boundary: str | None = "B") -> dict:
    content_type = "multipart/form-data" + (f"; boundary={boundary}" if boundary else "")
    return dict(content=parts, headers={"Content-Type": content_type})


PNG = {"Content-Type": "image/png"}
BAD_REQUESTS = {
    "declared body over --max-body-mb": (lambda t: dict(content=b"\0" * 300_000, headers=PNG), 413,
                                         "body too large: 0.29 MiB, over the 0.25 MiB of --max-body-mb"),
    "chunked body over --max-body-mb": (lambda t: dict(content=_chunks(b"\0" * 600_000), headers=PNG), 413,
                                        "MiB or more, over the 0.25 MiB of --max-body-mb"),
    "decompression bomb over --max-pixels": (lambda t: dict(content=png_declaring(2000, 2000), headers=PNG), 400,
                                             "image: decompression bomb: 2,000 x 2,000 = 4,000,000 pixels, over the "
                                             "1,000,000 of --max-pixels"),
    "decompression bomb over Pillow's limit": (lambda t: dict(content=png_declaring(20000, 20000), headers=PNG), 400,
                                               "image: decompression bomb: more than"),
    "bytes that are no image": (lambda t: dict(content=b"GIF? no: plain text " * 20, headers=PNG), 400,
                                "image: not an image"),
    "truncated JPEG": (lambda t: dict(content=t["files"][3].read_bytes()[:400], headers={"Content-Type": "image/jpeg"}),
                       400, "image: truncated or corrupt"),
    "JSON": (lambda t: dict(json={"image": "cat.jpg"}), 415, "Content-Type application/json is not accepted"),
    "text": (lambda t: dict(content=b"cat", headers={"Content-Type": "text/plain"}), 415, "Content-Type text/plain"),
    "no content type": (lambda t: dict(content=t["files"][0].read_bytes()), 415, "Content-Type (none)"),
    "more images than --max-images": (lambda t: dict(files=[("f", (f.name, f.read_bytes())) for f in t["files"][:5]]),
                                      413, "too many images: more than 4 in one request (--max-images)"),
    "empty body": (lambda t: dict(content=b"", headers=PNG), 400, "empty body"),
    "a form with no file": (lambda t: _multipart(b'--B\r\nContent-Disposition: form-data; name="a"\r\n\r\nb\r\n'
                                                 b'--B--\r\n'), 400, "the form holds no file"),
    "a form without its boundary": (lambda t: _multipart(b"--B--\r\n", None), 400, "malformed multipart body"),
    "a form with one broken file": (lambda t: dict(files=[("f", ("ok.png", t["files"][0].read_bytes())),
                                                          ("f", ("notes.txt", b"not an image at all"))]),
                                    400, "notes.txt: not an image"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_a_bad_request_is_refused_with_one_line_and_the_service_goes_on(client, tiny, case):
    make, status, fragment = BAD_REQUESTS[case]
    assert_refused(client.post("/predict", **make(tiny)), status, fragment)
    assert_serving(client, tiny)


def test_a_client_that_stalls_mid_body_gets_408_after_the_read_timeout(client, tiny, url):
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n"
                     + b"\x89PNG\r\n\x1a\n\0\0")  # 10 of the 1,000 bytes, then nothing
        start, answer = time.monotonic(), b""
        while chunk := sock.recv(65536):  # the server closes the connection after its answer
            answer += chunk
        elapsed = time.monotonic() - start
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer
    assert b"within 1 s of the headers (--read-timeout-s); 10 bytes came" in body
    assert 0.9 < elapsed < 5
    assert_serving(client, tiny)


def test_health_metadata_metrics_docs_and_the_page(client, tiny):
    assert client.get("/health").json() == {"status": "ok"}
    meta = client.get("/metadata").json()
    assert meta["model"] == "cifar_resnet20" and meta["num_classes"] == 3 and meta["class_names"] == CLASSES
    assert meta["preprocessing"] == tiny["model"].pretrained_cfg.for_eval().to_dict()
    assert meta["resnets_version"] == resnets.__version__ and meta["backend"] == "torch" and meta["grad_cam"]
    assert meta["limits"]["max_images"] == 4 and meta["limits"]["max_body_mb"] == 0.25
    assert meta["limits"]["max_batch"] == 32 and "api_key" not in meta["limits"]

    client.post("/predict", **raw(tiny["files"][0]))
    client.post("/predict", json={})
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    page = samples(r.text)
    assert page[("resnets_requests_total", (("route", "/predict"), ("status", "200")))] >= 1
    assert page[("resnets_requests_total", (("route", "/predict"), ("status", "415")))] >= 1
    assert page[("resnets_errors_total", (("reason", "content_type"),))] >= 1
    assert page[("resnets_request_latency_seconds_count", (("route", "/predict"),))] >= 2
    assert page[("resnets_batch_size_count", ())] >= 1 and page[("resnets_images_total", ())] >= 1
    assert page[("resnets_queue_depth", ())] == 0
    client.get("/no/such/page")
    assert ("resnets_requests_total", (("route", "other"), ("status", "404"))) in samples(client.get("/metrics").text)

    docs = client.get("/docs")
    assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html") and "swagger" in docs.text
    spec = client.get("/openapi.json").json()
    assert {"/predict", "/cam", "/health", "/metadata", "/metrics"} <= set(spec["paths"])
    assert "multipart/form-data" in spec["paths"]["/predict"]["post"]["requestBody"]["content"]
    page = client.get("/")
    assert page.status_code == 200 and 'id="file"' in page.text and 'id="top-class"' in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]


def test_grad_cam_answers_a_png_of_the_model_input(client, tiny):
    r = client.post("/cam", **raw(tiny["files"][2]))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text
    image = Image.open(io.BytesIO(r.content))
    assert image.format == "PNG" and image.size == (32, 32) and image.mode == "RGB"
    assert r.headers["x-predicted-index"] == str(CLASSES.index("cherry"))
    assert np.asarray(image).std() > 5  # a heatmap over an image, not a blank square
    assert_refused(client.post("/cam", content=b"no image", headers=PNG), 400, "not an image")
    assert_serving(client, tiny)


def test_grad_cam_refuses_a_form_of_two_files_before_decoding_either(client, tiny):
    form = [("f", ("a.png", b"not an image")), ("f", ("b.png", b"nor this"))]  # decoded, a.png would be refused
    assert_refused(client.post("/cam", files=form), 413, "too many images: more than 1 in one request (/cam takes "
                                                         "one image)")
    assert_serving(client, tiny)


def _fire(url: str, files: list[Path], n: int) -> list[httpx.Response]:
    """`n` requests of one image each, all sent at once."""
    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as client:
            return await asyncio.gather(*(client.post("/predict", **raw(files[i % len(files)])) for i in range(n)))

    return asyncio.run(fire())


def test_concurrent_requests_share_batches(tiny, serving):
    with serving(tiny["model"], max_wait_ms=500) as url:
        answers = _fire(url, tiny["files"], 16)
        assert all(r.status_code == 200 for r in answers)
        for i, r in enumerate(answers):
            assert r.json()["predictions"][0]["top"][0]["class"] == CLASSES[i % 3]
        with httpx.Client(base_url=url, timeout=TIMEOUT) as client:
            batches, images, singles = batch_sizes(client)
    assert images == 16 and batches < 16 and singles < batches  # at least one batch of several images


def test_max_batch_1_runs_every_image_alone(tiny, serving):
    with serving(tiny["model"], max_batch=1, max_wait_ms=200) as url:
        assert all(r.status_code == 200 for r in _fire(url, tiny["files"], 8))
        with httpx.Client(base_url=url, timeout=TIMEOUT) as client:
            assert batch_sizes(client) == (8, 8, 8)


def test_a_full_queue_answers_503_and_the_waiting_requests_still_get_theirs(tiny, serving):
    with serving(tiny["model"], max_batch=8, max_wait_ms=1500, max_queue=4, max_images=4) as url:
        async def scenario() -> tuple[httpx.Response, httpx.Response]:
            async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as client:
                form = [("f", (f.name, f.read_bytes())) for f in tiny["files"][:4]]
                waiting = asyncio.create_task(client.post("/predict", files=form))
                deadline = time.monotonic() + 10
                while samples((await client.get("/metrics")).text)[("resnets_queue_depth", ())] < 4:
                    assert time.monotonic() < deadline and not waiting.done()
                    await asyncio.sleep(0.02)
                refused = await client.post("/predict", **raw(tiny["files"][0]))
                return refused, await waiting

        refused, first = asyncio.run(scenario())
        assert_refused(refused, 503, "pass the 4 of --max-queue")
        assert refused.headers["retry-after"] == "1"
        assert first.status_code == 200 and len(first.json()["predictions"]) == 4
        with httpx.Client(base_url=url, timeout=TIMEOUT) as client:
            assert_serving(client, tiny)


def _has_blank(batch: torch.Tensor) -> bool:
    return bool((batch.flatten(2).std(dim=2) < 1e-6).all(dim=1).any())  # (B, C) spreads: some image is one colour


def _with_pre_hook(model: torch.nn.Module, hook: Callable[[torch.Tensor], None]) -> torch.nn.Module:
    """A copy of `model` that calls `hook(batch)` before each forward (a forward pre-hook also keeps
    `for_inference` from folding it: the hook must run)."""
    hooked = copy.deepcopy(model)
    hooked.register_forward_pre_hook(lambda module, args: hook(args[0]))
    return hooked


def _refuse_white(batch: torch.Tensor) -> None:
    if _has_blank(batch):
        raise RuntimeError("injected failure on a blank image")


def test_a_model_failure_fails_its_batch_with_500_and_the_service_goes_on(tiny, serving, encode, capsys):
    white = encode(np.full((40, 40, 3), 255, np.uint8), "PNG")
    with serving(_with_pre_hook(tiny["model"], _refuse_white)) as url, \
            httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        r = client.post("/predict", content=white, headers=PNG)
        # The client reads the type; the model's own words, which may name files or inputs, go to the log
        assert_refused(r, 500, "the model failed on a batch of 1 (RuntimeError); the server's log has the error")
        assert "blank image" not in r.text
        assert ("resnets serve: the model failed on a batch of 1: RuntimeError: injected failure on a blank image"
                in capsys.readouterr().err)
        assert_serving(client, tiny)
        r = client.post("/cam", content=white, headers=PNG)
        assert_refused(r, 500, "internal error (RuntimeError); the server's log has the traceback")
        assert r.headers["connection"] == "close"  # uvicorn drops it after a bug's answer: no client may reuse it
        assert_serving(client, tiny)
        page = samples(client.get("/metrics").text)
        assert page[("resnets_errors_total", (("reason", "model"),))] == 1
        assert page[("resnets_errors_total", (("reason", "internal"),))] == 1


def test_grad_cam_jobs_count_against_the_queue_limit(tiny, serving):
    slow = _with_pre_hook(tiny["model"], lambda batch: time.sleep(0.75))  # Grad-CAM runs the hooked model
    with serving(slow, max_queue=2, max_images=1) as url:
        async def fire() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as client:
                return await asyncio.gather(*(client.post("/cam", **raw(tiny["files"][0])) for _ in range(4)))

        answers = asyncio.run(fire())
    statuses = [r.status_code for r in answers]
    # One runs and one waits; those arriving meanwhile are refused (all four within the first 0.75 s, but for
    # a very busy machine)
    assert set(statuses) == {200, 503} and statuses.count(200) >= 2, statuses
    assert_refused(next(r for r in answers if r.status_code == 503), 503, "would pass the 2 of --max-queue")


def test_no_more_images_are_decoded_at_once_than_there_are_cores(tiny, serving, monkeypatch):
    import resnets.serve.app as app_module
    from resnets.serve.requests import preprocess

    lock, decoding, most = threading.Lock(), 0, 0

    def slow_preprocess(*args):
        nonlocal decoding, most
        with lock:
            decoding += 1
            most = max(most, decoding)
        time.sleep(0.2)
        try:
            return preprocess(*args)
        finally:
            with lock:
                decoding -= 1

    monkeypatch.setattr(app_module, "usable_cores", lambda: 2)
    monkeypatch.setattr(app_module, "preprocess", slow_preprocess)
    with serving(tiny["model"]) as url:
        assert all(r.status_code == 200 for r in _fire(url, tiny["files"], 6))
    assert most == 2  # Starlette's thread pool alone would have run all six at once


def test_post_requests_beyond_max_in_flight_answer_503_before_their_body_is_read(tiny, serving):
    with serving(tiny["model"], max_in_flight=2, max_wait_ms=1000) as url:
        async def scenario() -> tuple[httpx.Response, list[httpx.Response]]:
            async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as client:
                waiting = [asyncio.create_task(client.post("/predict", **raw(f))) for f in tiny["files"][:2]]
                deadline = time.monotonic() + 10
                while samples((await client.get("/metrics")).text)[("resnets_queue_depth", ())] < 2:
                    assert time.monotonic() < deadline and not any(t.done() for t in waiting)
                    await asyncio.sleep(0.02)
                assert (await client.get("/health")).status_code == 200  # a GET reads no body: still answered
                refused = await client.post("/predict", **raw(tiny["files"][0]))
                return refused, list(await asyncio.gather(*waiting))

        refused, served = asyncio.run(scenario())
        assert_refused(refused, 503, "busy: 2 requests in flight, the 2 of --max-in-flight; retry later")
        assert refused.headers["retry-after"] == "1" and refused.headers["connection"] == "close"
        assert [r.status_code for r in served] == [200, 200]
        with httpx.Client(base_url=url, timeout=TIMEOUT) as client:
            assert_serving(client, tiny)
            assert samples(client.get("/metrics").text)[("resnets_errors_total", (("reason", "busy"),))] == 1


class WithoutGradients(torch.nn.Module):
    """A classifier with the model's interface and no parameters, as an exported file's runtime is."""

    backend = "onnxruntime"

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.__dict__["inner"] = model  # not a submodule: its parameters are not this module's
        self.num_classes, self.pretrained_cfg, self.arch_name = model.num_classes, model.pretrained_cfg, model.arch_name

    def labels(self) -> list[str]:
        return self.inner.labels()

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.inner(batch).numpy()  # a runtime's answer: numpy


def test_a_model_without_gradients_predicts_but_refuses_grad_cam(tiny, serving):
    with serving(WithoutGradients(tiny["model"])) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        assert client.get("/metadata").json()["backend"] == "onnxruntime"
        r = client.post("/predict", **raw(tiny["files"][2]))
        assert r.status_code == 200 and r.json()["predictions"][0]["top"][0]["class"] == "cherry"
        assert_refused(client.post("/cam", **raw(tiny["files"][2])), 400,
                       "Grad-CAM needs the torch backend; this model runs on onnxruntime")


class WrongRows(WithoutGradients):
    """Answers a batch holding an all-white image with one row of logits too few (extra=-1) or too many (+1)."""

    def __init__(self, model: torch.nn.Module, extra: int) -> None:
        super().__init__(model)
        self.extra = extra

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        logits = self.inner(batch)
        if _has_blank(batch):
            logits = logits[:-1] if self.extra < 0 else torch.cat([logits, logits[:1]])
        return logits.numpy()


@pytest.mark.parametrize("extra", [-1, 1])
def test_a_model_answering_the_wrong_number_of_rows_fails_its_batch_and_the_service_goes_on(tiny, serving, encode,
                                                                                          capsys, extra):
    white = encode(np.full((40, 40, 3), 255, np.uint8), "PNG")
    # A short timeout: a request whose row never comes would otherwise wait for the client's 30 s
    with serving(WrongRows(tiny["model"], extra)) as url, httpx.Client(base_url=url, timeout=5) as client:
        r = client.post("/predict", content=white, headers=PNG)
        assert_refused(r, 500, "the model failed on a batch of 1 (ValueError); the server's log has the error")
        assert_serving(client, tiny)
    err = capsys.readouterr().err
    assert f"the model answered a ({1 + extra}, 3) tensor to a batch of 1; expected (1, num_classes)" in err


def test_an_error_in_the_batcher_fails_its_batch_and_later_batches_still_run(capsys):
    from resnets.serve.batching import MicroBatcher

    sizes: list[int] = []

    def on_batch(size: int) -> None:  # a bug in the batch's bookkeeping, once
        sizes.append(size)
        if len(sizes) == 1:
            raise TypeError("injected bug")

    async def scenario() -> list[torch.Tensor]:
        batcher = MicroBatcher(lambda x: torch.zeros(len(x), 3), max_batch=4, max_wait_s=0, max_queue=8,
                               on_batch=on_batch)
        await batcher.start()
        try:
            with pytest.raises(TypeError, match="injected bug"):
                await asyncio.wait_for(batcher.submit([torch.zeros(3, 2, 2)]), 5)
            return await asyncio.wait_for(batcher.submit([torch.zeros(3, 2, 2)] * 2), 5)
        finally:
            await batcher.stop()

    rows = asyncio.run(scenario())
    assert sizes == [1, 2] and [r.shape for r in rows] == [(3,), (3,)]
    assert "the batcher failed on a batch of 1: TypeError: injected bug" in capsys.readouterr().err


def test_weights_served_on_onnx_runtime_answer_as_torch_does(tiny, serving, client):
    for module in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(module)
    from resnets.export.pipeline import load_on_backend

    model = load_on_backend(tiny["run"], backend="onnx")  # exported in memory, checked against the torch model
    form = [("f", (f.name, f.read_bytes())) for f in tiny["files"][:4]]
    with serving(model) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as onnx:
        assert onnx.get("/metadata").json()["backend"] == "onnx"
        served, eager = (c.post("/predict", files=form).json()["predictions"] for c in (onnx, client))
        assert_refused(onnx.post("/cam", **raw(tiny["files"][0])), 400, "Grad-CAM needs the torch backend")
    for a, b in zip(served, eager):
        assert [t["class"] for t in a["top"]] == [t["class"] for t in b["top"]]
        np.testing.assert_allclose([t["probability"] for t in a["top"]], [t["probability"] for t in b["top"]],
                                   atol=1e-4)


@pytest.fixture(scope="module")
def keyed_url(tiny: dict, serving) -> str:
    with serving(tiny["model"], api_key=KEY) as url:
        yield url


@pytest.mark.parametrize("route", ["/predict", "/cam", "/metadata", "/metrics", "/", "/docs", "/openapi.json"])
def test_with_a_key_every_route_but_health_asks_for_it(keyed_url, tiny, route):
    with httpx.Client(base_url=keyed_url, timeout=TIMEOUT) as client:
        assert client.get("/health").status_code == 200
        def send(headers: dict[str, str] | None = None, auth: tuple[str, str] | None = None) -> httpx.Response:
            if route in ("/predict", "/cam"):
                body = raw(tiny["files"][0])
                return client.post(route, content=body["content"], headers={**body["headers"], **(headers or {})},
                                   auth=auth)
            return client.get(route, headers=headers, auth=auth)

        r = send()
        assert_refused(r, 401, "missing API key: send Authorization: Bearer KEY, X-API-Key: KEY, or HTTP Basic")
        assert r.headers["www-authenticate"] == 'Basic realm="resnets"'
        for wrong in ({"Authorization": "Bearer nope"}, {"X-API-Key": KEY[:-1]}, {"Authorization": "Basic !!"}):
            assert_refused(send(headers=wrong), 401, "wrong API key")
        assert_refused(send(auth=("user", "nope")), 401, "wrong API key")
        for right in ({"Authorization": f"Bearer {KEY}"}, {"X-API-Key": KEY}):
            assert send(headers=right).status_code == 200
        assert send(auth=("any-user", KEY)).status_code == 200  # HTTP Basic: how a browser sends it


def test_the_key_is_asked_for_before_the_body_is_read(keyed_url):
    with httpx.Client(base_url=keyed_url, timeout=TIMEOUT) as client:
        r = client.post("/predict", content=b"\0" * 30 * 2**20, headers=PNG)  # over --max-body-mb as well
        assert_refused(r, 401, "missing API key")
        assert samples(client.get("/metrics", headers={"X-API-Key": KEY}).text)[
            ("resnets_errors_total", (("reason", "unauthorized"),))] >= 1
