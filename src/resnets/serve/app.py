"""The HTTP service around one classifier: its routes, its API key, and one JSON shape for every error.

`create_app(model, settings)` makes a FastAPI app; `resnets serve` runs it under uvicorn, tests under their own.
Every refused request answers {"detail": "<one line>"} with a 4xx status, and the service goes on.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import importlib.metadata
import io
import math
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any, AsyncIterator, Callable

import numpy as np
import torch
from fastapi import FastAPI, Query, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from torch import nn

import resnets

from ..data.transforms import eval_transform
from ..device import resolve_device, usable_cores
from ..errors import ConfigError
from ..inference.cam import CAM_ALPHA, denormalize, grad_cam
from ..inference.fold import for_inference, has_parameters
from .batching import BatchFailed, MicroBatcher, QueueFull
from .metrics import RequestMetrics, ServeMetrics
from .requests import CLOSE, RequestError, preprocess, read_uploads

KEY_CHARS = frozenset(map(chr, range(0x21, 0x7F)))  # printable ASCII but the space: see check_api_key

OPEN_PATHS = ("/health",)  # answered without the API key: a load balancer's probe holds no secret
REALM = 'Basic realm="resnets"'  # a browser asks for a password, and sends the key as one from then on
PAGE_POLICY = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src blob: data:; "
               "connect-src 'self'")  # the page loads nothing from elsewhere, and a class name cannot make it
IMAGES_BODY = {"requestBody": {"required": True, "content": {
    "image/*": {"schema": {"type": "string", "format": "binary"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}}}}}


@dataclass(frozen=True)
class ServeSettings:
    """Args:
        max_batch: the most images in one forward pass.
        max_wait_ms: how long the first image of a batch waits for others to join it.
        max_queue: the most images waiting for a batch; beyond, requests answer 503.
        max_images: the most images in one request.
        max_body_mb: the largest request body, in MiB.
        max_pixels: the most pixels an image may declare; at most Pillow's own limit (PIL.Image.MAX_IMAGE_PIXELS),
            which decode_image enforces after it.
        read_timeout_s: the whole body must arrive within this many seconds of the headers.
        max_in_flight: the most POST requests (the ones with a body to read and images to decode) served at
            once; beyond, 503 before the body is read.
        api_key: when set, every route but /health asks for it; printable ASCII without spaces.
        device: where a torch model runs (auto, cpu, cuda, cuda:N).
    """

    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 256
    max_images: int = 32
    max_body_mb: float = 20.0
    max_pixels: int = 40_000_000
    read_timeout_s: float = 10.0
    max_in_flight: int = 64
    api_key: str | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queue", "max_images", "max_in_flight"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name, low in (("max_body_mb", 0), ("read_timeout_s", 0)):
            if not low < getattr(self, name) < math.inf:
                raise ConfigError(f"--{name.replace('_', '-')} must be a number > 0, got {getattr(self, name)}")
        if not 0 <= self.max_wait_ms < math.inf:
            raise ConfigError(f"--max-wait-ms must be a number >= 0, got {self.max_wait_ms}")
        if not 1 <= self.max_pixels <= Image.MAX_IMAGE_PIXELS:
            raise ConfigError(f"--max-pixels must be in 1..{Image.MAX_IMAGE_PIXELS:,} (Pillow's decompression bomb "
                              f"limit, PIL.Image.MAX_IMAGE_PIXELS), got {self.max_pixels:,}")
        if self.max_queue < self.max_images:
            raise ConfigError(f"--max-queue {self.max_queue} is below --max-images {self.max_images}: a request of "
                              f"that many images could never be queued")
        if self.api_key is not None:
            check_api_key(self.api_key)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 2**20)

    def limits(self) -> dict[str, Any]:
        """What a client may send, for /metadata (the key left out)."""
        return {k: v for k, v in asdict(self).items() if k not in ("api_key", "device")}


def check_api_key(key: str) -> None:
    """Starlette reads header values as latin-1 and `presented_keys` encodes them as UTF-8, so a key beyond ASCII
    could never match; a space or a control character would not survive a header or a Basic password either."""
    if not key:
        raise ConfigError("the API key is empty")
    if not set(key) <= KEY_CHARS:
        raise ConfigError("the API key must be printable ASCII without spaces or control characters: an HTTP "
                          "header cannot carry it otherwise")


def describe_model(model: nn.Module) -> tuple[str, str]:
    """(architecture, backend) of any model `load_on_backend` returns."""
    return getattr(model, "arch_name", None) or type(model).__name__, getattr(model, "backend", "torch")


def resnets_version() -> str:
    return getattr(resnets, "__version__", None) or importlib.metadata.version("resnets")


def presented_keys(headers: Headers) -> list[bytes]:
    """Every key the request offers: X-API-Key, Authorization: Bearer, or the password of HTTP Basic."""
    keys = [headers["x-api-key"].encode()] if "x-api-key" in headers else []
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        keys.append(value.strip().encode())
    elif scheme.lower() == "basic":
        try:
            keys.append(base64.b64decode(value.strip(), validate=True).partition(b":")[2])
        except binascii.Error:
            keys.append(b"")  # offered, and wrong
    return keys


class ApiKeyAuth:
    """ASGI middleware: every HTTP route but OPEN_PATHS answers 401 without the key, before reading the body."""

    def __init__(self, app: Any, key: str, on_refused: Callable[[], None]) -> None:
        self.app, self.key, self.on_refused = app, key.encode(), on_refused

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        offered = presented_keys(Headers(scope=scope))
        # compare_digest takes as long for any wrong key: no timing tells how much of it was right
        if any(hmac.compare_digest(key, self.key) for key in offered):
            await self.app(scope, receive, send)
            return
        self.on_refused()
        detail = ("wrong API key" if offered else
                  "missing API key: send Authorization: Bearer KEY, X-API-Key: KEY, or HTTP Basic with KEY as password")
        headers = {"WWW-Authenticate": REALM, **CLOSE}  # the body, if any, stays unread
        await JSONResponse({"detail": detail}, 401, headers=headers)(scope, receive, send)


class RequestLimit:
    """ASGI middleware: at most `limit` POST requests in flight; beyond, 503 before any of the body is read.

    Each holds a body of up to --max-body-mb while it is read and parsed, and nothing else bounded how many
    were. Not uvicorn's limit_concurrency: it counts open connections, its own and idle kept-alive ones too, so
    N - 1 silent sockets refuse every request for as long as they stay open (uvicorn 0.55, measured), and its
    503 is plain text. GETs read no body and are answered in microseconds: /health and /metrics still answer
    when the service is full, which is when a probe or a scrape matters."""

    def __init__(self, app: Any, limit: int, on_refused: Callable[[], None]) -> None:
        self.app, self.limit, self.on_refused = app, limit, on_refused
        self.in_flight = 0

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            self.on_refused()
            detail = f"busy: {self.in_flight} requests in flight, the {self.limit} of --max-in-flight; retry later"
            await JSONResponse({"detail": detail}, 503, headers={"Retry-After": "1", **CLOSE})(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


def cam_png(model: nn.Module, image: torch.Tensor, device: torch.device) -> tuple[bytes, int]:
    """The Grad-CAM heatmap of the predicted class over the preprocessed (C, H, W) `image`, as PNG bytes; and
    that class."""
    from matplotlib import colormaps  # only /cam draws

    result = grad_cam(model, image[None].to(device))
    rgb = denormalize(image, model.pretrained_cfg)  # (H, W, 3) in [0, 1]
    overlay = (1 - CAM_ALPHA) * rgb + CAM_ALPHA * colormaps["jet"](result.heatmaps[0].numpy())[..., :3]
    out = io.BytesIO()
    Image.fromarray((overlay.clip(0, 1) * 255).round().astype(np.uint8)).save(out, format="PNG")
    return out.getvalue(), result.predicted[0]


def top_classes(probabilities: torch.Tensor, k: int, names: list[str]) -> list[dict[str, Any]]:
    values, indices = probabilities.topk(k)
    return [{"class": names[i], "index": i, "probability": p} for p, i in zip(values.tolist(), indices.tolist())]


def add_error_handlers(app: FastAPI, metrics: ServeMetrics) -> None:
    """Every refusal and failure as {"detail": "<one line>"}, counted by reason."""
    def error(status: int, reason: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
        metrics.errors.labels(reason).inc()
        return JSONResponse({"detail": detail}, status, headers=headers)

    @app.exception_handler(RequestError)
    async def refused(request: Request, e: RequestError) -> JSONResponse:
        return error(e.status, e.reason, e.detail, e.headers)

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, e: QueueFull) -> JSONResponse:
        return error(503, "queue_full", f"busy: {e}; retry later", {"Retry-After": "1"})

    @app.exception_handler(BatchFailed)  # its text names the type only; the model's message went to the log
    async def batch_failed(request: Request, e: BatchFailed) -> JSONResponse:
        return error(500, "model", str(e))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0]
        where = ".".join(str(part) for part in first["loc"] if part != "query")
        return error(422, "invalid_parameter", f"{where}: {first['msg']}")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> Response:
        metrics.errors.labels(f"http_{e.status_code}").inc()
        return await http_exception_handler(request, e)

    @app.exception_handler(Exception)  # a bug: Starlette still logs its traceback after this answer
    async def internal(request: Request, e: Exception) -> JSONResponse:
        # Starlette raises the exception again once this is sent, and uvicorn then drops the connection: a client
        # that sent its next request on it meanwhile read a reset. Closing it here tells the client not to.
        return error(500, "internal", f"internal error ({type(e).__name__}); the server's log has the traceback",
                     CLOSE)


def add_info_routes(app: FastAPI, model_info: dict[str, Any], metrics: ServeMetrics, page: str) -> None:
    """/health, /metadata, /metrics and the web page: what the service says about itself."""
    @app.get("/health", summary="liveness: answers while the service runs, without the API key")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metadata", summary="the model, its preprocessing and the service's limits")
    async def metadata() -> dict[str, Any]:
        return model_info

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def web_page() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_POLICY})


def batch_forward(model: nn.Module, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """What the batches run: on the CPU a BN-folded copy (`for_inference`); Grad-CAM keeps the original."""
    model.to(device).eval()
    runner = for_inference(model, device)
    return lambda batch: runner(batch.to(device))


def create_app(model: nn.Module,  # long: the routes are closures over one model's batcher, metrics and limits
               settings: ServeSettings = ServeSettings(), decoders: int | None = None) -> FastAPI:
    """The service of `model` (any classifier `export.pipeline.load_on_backend` returns), started and stopped by
    the ASGI lifespan: run it under uvicorn, or any ASGI server that sends lifespan events. A torch model is moved
    to `settings.device`; an exported one runs where its runtime puts it. At most `decoders` images (default: one
    per usable core) are decoded at once."""
    names, cfg = model.labels(), model.pretrained_cfg.for_eval()
    arch, backend = describe_model(model)
    transform = eval_transform(cfg)
    explains, device = has_parameters(model), resolve_device(settings.device)
    forward = batch_forward(model, device) if explains else model
    metrics = ServeMetrics(settings.max_batch)
    batcher = MicroBatcher(forward, max_batch=settings.max_batch, max_wait_s=settings.max_wait_ms / 1000,
                           max_queue=settings.max_queue, on_batch=metrics.batch_size.observe)
    metrics.queue_depth.set_function(lambda: batcher.depth)  # read when /metrics is asked for
    # Decoding is CPU work in threads: more at once than cores cannot go faster, and each holds up to
    # --max-pixels x 3 bytes, where Starlette's thread pool alone would run 40.
    decoding = asyncio.Semaphore(decoders or usable_cores())
    page = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")
    model_info = {"model": arch, "num_classes": len(names), "class_names": names, "preprocessing": cfg.to_dict(),
                  "resnets_version": resnets_version(), "backend": backend, "grad_cam": explains,
                  "limits": settings.limits()}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        try:
            yield
        finally:  # uvicorn sends shutdown once the requests in flight have their answers
            await batcher.stop()

    app = FastAPI(title="resnets classifier", version=resnets_version(), lifespan=lifespan,
                  description=f"{arch}: {len(names)} classes. POST images to /predict.")
    app.add_middleware(RequestLimit, limit=settings.max_in_flight,  # inside ApiKeyAuth: a 401 takes no place
                       on_refused=lambda: metrics.errors.labels("busy").inc())
    if settings.api_key is not None:
        app.add_middleware(ApiKeyAuth, key=settings.api_key,
                           on_refused=lambda: metrics.errors.labels("unauthorized").inc())
    app.add_middleware(RequestMetrics, metrics=metrics)  # added last, so outermost: it sees the 401s too

    add_error_handlers(app, metrics)

    async def images_of(request: Request, max_images: int, limit: str) -> tuple[list[str], list[torch.Tensor]]:
        uploads = await read_uploads(request, max_bytes=settings.max_body_bytes, timeout_s=settings.read_timeout_s,
                                     max_images=max_images, limit=limit)
        async with decoding:
            images = await run_in_threadpool(preprocess, uploads, transform, settings.max_pixels)
        return [u.name for u in uploads], images

    @app.post("/predict", openapi_extra=IMAGES_BODY, summary="top-k classes of one image or several")
    async def predict(request: Request, topk: int | None = Query(None, description="default: 5, or every class if "
                                                                                   "fewer")) -> dict[str, Any]:
        k = min(5, len(names)) if topk is None else topk
        if not 1 <= k <= len(names):
            raise RequestError(400, "bad_topk", f"topk {k}: the model has {len(names)} classes, so k must be in "
                                                f"1..{len(names)}")
        files, images = await images_of(request, settings.max_images, "--max-images")
        probabilities = await batcher.submit(images)
        metrics.images.inc(len(images))
        return {"model": arch, "predictions": [{"file": file, "top": top_classes(p, k, names)}
                                               for file, p in zip(files, probabilities)]}

    @app.post("/cam", openapi_extra=IMAGES_BODY, response_class=Response,
              responses={200: {"content": {"image/png": {}}, "description": "the heatmap over the model's input"}},
              summary="Grad-CAM of the predicted class over one image (torch backend)")
    async def cam(request: Request) -> Response:
        if not explains:
            raise RequestError(400, "no_gradients", f"Grad-CAM needs the torch backend; this model runs on {backend}")
        _, images = await images_of(request, 1, "/cam takes one image")
        png, predicted = await batcher.run_exclusive(cam_png, model, images[0], device)
        return Response(png, media_type="image/png", headers={"X-Predicted-Index": str(predicted)})

    add_info_routes(app, model_info, metrics, page)
    return app
