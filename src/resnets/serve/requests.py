"""From an HTTP request to preprocessed images, within limits: what is refused, and with which status.

The order matters. Headers are judged before any byte of the body is read (415 for a content type that is not
an image, 413 for a declared length over the limit); the body is then counted as it streams (a chunked upload
declares no length) under one deadline for all of it (408), and each image's size is read from its header
before a pixel is decoded (400 for a decompression bomb). Every refusal is a `RequestError` with one line
that names the problem and the option that sets the limit.
"""
from __future__ import annotations

import asyncio
import io
import warnings
from dataclasses import dataclass
from typing import AsyncIterator, Callable

import torch
from PIL import Image
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

from ..data.images import FORMATS, decode_image
from ..errors import BrokenImageError

RAW_TYPES = ("application/octet-stream",)  # besides image/*
MULTIPART = "multipart/form-data"
# On an answer given before the body was read to its end: without it uvicorn keeps the connection open for
# the rest of a body nobody will read, until its keep-alive timeout.
CLOSE = {"Connection": "close"}


class RequestError(Exception):
    """A request the service refuses: its HTTP status, a short `reason` (the errors metric's label) and the
    one-line `detail` the client reads."""

    def __init__(self, status: int, reason: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.reason, self.detail, self.headers = status, reason, detail, headers


@dataclass
class Upload:
    name: str  # the multipart part's file name, or "image" for a raw body
    data: bytes


def body_kind(content_type: str | None) -> str:
    """"raw" (the body is one image) or "multipart" (its file parts are images); 415 for anything else, such as
    curl's default for --data-binary, application/x-www-form-urlencoded."""
    mime = (content_type or "").split(";", 1)[0].strip().lower()
    if mime == MULTIPART:
        return "multipart"
    if mime.startswith("image/") or mime in RAW_TYPES:
        return "raw"
    raise RequestError(415, "content_type", f"Content-Type {mime or '(none)'} is not accepted: send one image "
                                            f"(image/* or application/octet-stream) or {MULTIPART} with image files",
                       CLOSE)


def _mib(n: float) -> str:
    return f"{n / 2**20:,.2f}".rstrip("0").rstrip(".")


def body_too_large(size: int, max_bytes: int, more: str = "") -> RequestError:
    return RequestError(413, "body_too_large", f"body too large: {_mib(size)} MiB{more}, over the "
                                               f"{_mib(max_bytes)} MiB of --max-body-mb", CLOSE)


async def read_body(request: Request, max_bytes: int, timeout_s: float) -> bytes:
    """The whole body, refused as soon as it is known to be over `max_bytes`, or when it has not all arrived
    `timeout_s` after the headers: a client that trickles its bytes would otherwise hold a connection and its
    buffer for as long as it likes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise body_too_large(int(declared), max_bytes)
    chunks: list[bytes] = []
    received = 0

    async def receive_all() -> None:
        nonlocal received
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:
                raise body_too_large(received, max_bytes, " or more")
            chunks.append(chunk)

    try:
        await asyncio.wait_for(receive_all(), timeout_s)
    except asyncio.TimeoutError:
        raise RequestError(408, "slow_client", f"the body did not arrive within {timeout_s:g} s of the headers "
                                               f"(--read-timeout-s); {received:,} bytes came", CLOSE) from None
    except ClientDisconnect:
        raise RequestError(400, "disconnected", "the client closed the connection before the body ended") from None
    if received == 0:
        raise RequestError(400, "empty_body", "empty body: send one image, or multipart/form-data with image files")
    return b"".join(chunks)


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body


async def parse_multipart(headers: Headers, body: bytes, max_images: int, limit: str) -> list[Upload]:
    """The file parts of a form, in order; other fields are ignored (but count against the same limit, so a
    form of a million tiny fields is refused like one of a million files). `limit` names what sets `max_images`
    in the refusal."""
    parser = MultiPartParser(headers, _once(body), max_files=max_images, max_fields=max_images,
                             max_part_size=len(body))
    try:
        form = await parser.parse()
    except MultiPartException as e:
        if e.message.startswith("Too many files"):
            raise RequestError(413, "too_many_images", f"too many images: more than {max_images} in one request "
                                                       f"({limit})") from None
        raise RequestError(400, "bad_multipart", f"malformed multipart body: {e.message}") from None
    try:
        files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
        if not files:
            raise RequestError(400, "no_image", "the form holds no file: send each image as a file part")
        return [Upload(f.filename or "image", await f.read()) for f in files]
    finally:
        await form.close()


async def read_uploads(request: Request, *, max_bytes: int, timeout_s: float, max_images: int,
                       limit: str) -> list[Upload]:
    """The images of a request: its raw body, or the file parts of its form, refused before any is decoded when
    there are more than `max_images` (`limit` names what sets it)."""
    kind = body_kind(request.headers.get("content-type"))
    body = await read_body(request, max_bytes, timeout_s)
    if kind == "raw":
        return [Upload("image", body)]
    return await parse_multipart(request.headers, body, max_images, limit)


def _bomb(name: str, what: str) -> RequestError:
    return RequestError(400, "decompression_bomb", f"{name}: decompression bomb: {what}")


def check_pixels(upload: Upload, max_pixels: int) -> None:
    """Refuse an image whose header declares more than `max_pixels`, before decoding: Image.open reads the
    header alone, and a 50 KB PNG can declare 20,000 x 20,000 pixels (1.2 GB once decoded). Files Pillow cannot
    open are left to `decode_image`, which names what is wrong with them."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # judged below, against our limit
            with Image.open(io.BytesIO(upload.data), formats=FORMATS) as img:
                width, height = img.size
    except Image.DecompressionBombError:  # over twice Pillow's own limit, which is above ours (ServeSettings)
        raise _bomb(upload.name, f"more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels declared") from None
    except Exception:  # noqa: BLE001 - any reason Pillow cannot open it, decode_image words
        return
    if width * height > max_pixels:
        raise _bomb(upload.name, f"{width:,} x {height:,} = {width * height:,} pixels, over the {max_pixels:,} of "
                                 f"--max-pixels")


def preprocess(uploads: list[Upload], transform: Callable, max_pixels: int) -> list[torch.Tensor]:
    """Each upload decoded as `resnets predict` decodes a file, then the model's eval transform: (C, H, W)
    tensors. Runs in a thread: decoding a large JPEG takes tens of milliseconds the event loop must not wait."""
    images = []
    for upload in uploads:
        check_pixels(upload, max_pixels)
        try:
            image = decode_image(upload.data, upload.name)
        except BrokenImageError as e:
            reason = "decompression_bomb" if "decompression bomb" in e.reason else "bad_image"
            raise RequestError(400, reason, str(e)) from None
        images.append(transform(image))
    return images
