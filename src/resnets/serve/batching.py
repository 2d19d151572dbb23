"""Micro-batching: images from concurrent requests share one forward pass.

A forward of many images can cost less per image than one of each: ResNet-50 at 224 px on onnxruntime ran 51
img/s at batch 32 against 42 at batch 1 on our 2-core CPU, and a GPU gains far more; the service then serves
0.93 of the batch rate (BENCHMARKS.md, "Exports" and "Serving"). So the first image waits up to `max_wait_s` for
others to join it. Eager torch on that CPU gained nothing from batch 32 (23-27 against 27-30 img/s at batch 1):
`--max-batch` is the knob. The model runs in one dedicated thread:
the event loop keeps accepting and decoding requests meanwhile, batches never run concurrently (one model,
one set of threads), and Grad-CAM, which runs the same model, takes its turn in that thread too.
"""
from __future__ import annotations

import asyncio
import collections
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from ..messages import one_line


class QueueFull(Exception):
    """More images waiting than `max_queue`, or the service stopping: the client should retry later."""


class BatchFailed(Exception):
    """The model raised on the batch this image was in, or answered it with the wrong shape."""


@dataclass
class _Waiting:
    image: torch.Tensor  # (C, H, W), preprocessed
    future: asyncio.Future
    arrived: float  # loop time


class MicroBatcher:
    """Args:
        forward: a (B, C, H, W) batch to (B, num_classes) logits; called in the model thread under inference mode.
        max_batch: the most images in one forward.
        max_wait_s: how long the first image of a batch waits for others.
        max_queue: the most images waiting, a Grad-CAM job counted as one; beyond, `submit` and `run_exclusive`
            raise QueueFull at once rather than let the latency of every request grow without bound.
        on_batch: called with each batch's size (the batch size histogram).
    """

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], *, max_batch: int, max_wait_s: float,
                 max_queue: int, on_batch: Callable[[int], None] = lambda size: None) -> None:
        self.forward, self.max_batch, self.max_wait_s, self.max_queue = forward, max_batch, max_wait_s, max_queue
        self.on_batch = on_batch
        # A deque and an event rather than an asyncio.Queue: the consumer takes up to max_batch at once and
        # looks at the first item's arrival time without removing it.
        self._waiting: collections.deque[_Waiting] = collections.deque()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="resnets-model")
        self._exclusive = 0  # run_exclusive jobs waiting for the model thread or running in it
        self._task: asyncio.Task | None = None
        self._stopping = False

    @property
    def depth(self) -> int:
        """Images waiting for a batch (the one running not included)."""
        return len(self._waiting)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._arrived = asyncio.Event()
        self._task = asyncio.create_task(self._consume(), name="resnets-batcher")

    async def stop(self) -> None:
        """Run what is still waiting, then end the consumer and the model thread."""
        self._stopping = True
        if self._task is not None:
            self._arrived.set()
            await self._task
        self._executor.shutdown(wait=True)

    def _admit(self, count: int) -> None:
        if self._stopping:
            raise QueueFull("the service is stopping")
        queued = len(self._waiting) + self._exclusive
        if queued + count > self.max_queue:
            raise QueueFull(f"{queued} images are waiting already; this request's {count} would pass the "
                            f"{self.max_queue} of --max-queue")

    async def submit(self, images: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Softmax probabilities (num_classes,) of each image, in order, once the batches they joined have run."""
        self._admit(len(images))
        now = self._loop.time()
        waiting = [_Waiting(image, self._loop.create_future(), now) for image in images]
        self._waiting.extend(waiting)
        self._arrived.set()
        return list(await asyncio.gather(*(w.future for w in waiting)))

    async def run_exclusive(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` in the model thread, between batches. The executor's own queue has no bound, so the job
        counts against max_queue until it ends."""
        self._admit(1)
        self._exclusive += 1
        try:
            return await self._loop.run_in_executor(self._executor, fn, *args)
        finally:
            self._exclusive -= 1

    async def _consume(self) -> None:
        while not (self._stopping and not self._waiting):
            batch: list[_Waiting] = []
            try:
                batch = await self._next_batch()
                await self._run([w for w in batch if not w.future.done()])  # done: its request was cancelled
            except Exception as e:  # noqa: BLE001 - a bug: were the loop to end, every later submit would hang
                print(f"resnets serve: the batcher failed on a batch of {len(batch)}: {type(e).__name__}: "
                      f"{one_line(e, limit=2000)}", file=sys.stderr, flush=True)
                _fail(batch, e)

    async def _next_batch(self) -> list[_Waiting]:
        """Up to max_batch images, once the first has waited max_wait_s or the batch is full; none when stopping
        with nothing waiting."""
        while not self._waiting:
            if self._stopping:
                return []
            self._arrived.clear()
            await self._arrived.wait()
        # Measured from the first image's arrival: images that queued while the last batch ran have
        # waited already, and go at once when it ends.
        deadline = self._waiting[0].arrived + self.max_wait_s
        while len(self._waiting) < self.max_batch and not self._stopping:
            left = deadline - self._loop.time()
            if left <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except asyncio.TimeoutError:
                break
        return [self._waiting.popleft() for _ in range(min(self.max_batch, len(self._waiting)))]

    async def _run(self, batch: list[_Waiting]) -> None:
        if not batch:
            return
        self.on_batch(len(batch))
        try:
            probabilities = await self._loop.run_in_executor(self._executor, self._probabilities,
                                                             [w.image for w in batch])
        except Exception as e:  # noqa: BLE001 - the model's failure is this batch's answer, not the service's end
            # The client reads the type alone: a runtime's message can name files, shapes and input values
            print(f"resnets serve: the model failed on a batch of {len(batch)}: {type(e).__name__}: "
                  f"{one_line(e, limit=2000)}", file=sys.stderr, flush=True)
            _fail(batch, BatchFailed(f"the model failed on a batch of {len(batch)} ({type(e).__name__}); the "
                                     f"server's log has the error"))
            return
        for w, row in zip(batch, probabilities, strict=True):
            if not w.future.done():
                w.future.set_result(row)

    def _probabilities(self, images: list[torch.Tensor]) -> torch.Tensor:
        with torch.inference_mode():
            logits = torch.as_tensor(self.forward(torch.stack(images)))  # an exported model may hand back numpy
        if logits.ndim != 2 or len(logits) != len(images):
            # Rows are matched to images by position: one short, and the last request would wait for ever
            raise ValueError(f"the model answered a {tuple(logits.shape)} tensor to a batch of {len(images)}; "
                             f"expected ({len(images)}, num_classes)")
        return logits.float().softmax(dim=1).cpu()  # (B, num_classes)


def _fail(batch: list[_Waiting], error: Exception) -> None:
    for w in batch:
        if not w.future.done():
            w.future.set_exception(error)
