"""Micro-batching: images from concurrent requests share one forward pass.

A ResNet-50 forward of 32 images on a CPU costs far less than 32 forwards of one (the convolutions become
matrix products large enough to use every core), so a service that answers many small requests gains by
holding the first image up to `max_wait_s` for others to join it. The model runs in one dedicated thread:
the event loop keeps accepting and decoding requests meanwhile, batches never run concurrently (one model,
one set of threads), and Grad-CAM, which runs the same model, takes its turn in that thread too.
"""
from __future__ import annotations

import asyncio
import collections
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from ..messages import one_line


class QueueFull(Exception):
    """More images waiting than `max_queue`, or the service stopping: the client should retry later."""


class BatchFailed(Exception):
    """The model raised on the batch this image was in."""


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
        max_queue: the most images waiting; beyond, `submit` raises QueueFull at once rather than let the
            latency of every request grow without bound.
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

    async def submit(self, images: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Softmax probabilities (num_classes,) of each image, in order, once the batches they joined have run."""
        if self._stopping:
            raise QueueFull("the service is stopping")
        if len(self._waiting) + len(images) > self.max_queue:
            raise QueueFull(f"{len(self._waiting)} images are waiting already; this request's {len(images)} would "
                            f"pass the {self.max_queue} of --max-queue")
        now = self._loop.time()
        waiting = [_Waiting(image, self._loop.create_future(), now) for image in images]
        self._waiting.extend(waiting)
        self._arrived.set()
        return list(await asyncio.gather(*(w.future for w in waiting)))

    async def run_exclusive(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` in the model thread, between batches."""
        return await self._loop.run_in_executor(self._executor, fn, *args)

    async def _consume(self) -> None:
        while True:
            if not self._waiting:
                if self._stopping:
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
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
            batch = [self._waiting.popleft() for _ in range(min(self.max_batch, len(self._waiting)))]
            await self._run([w for w in batch if not w.future.done()])  # done: its request was cancelled

    async def _run(self, batch: list[_Waiting]) -> None:
        if not batch:
            return
        self.on_batch(len(batch))
        try:
            probabilities = await self._loop.run_in_executor(self._executor, self._probabilities,
                                                             [w.image for w in batch])
        except Exception as e:  # noqa: BLE001 - the model's failure is this batch's answer, not the service's end
            failure = BatchFailed(f"the model failed on a batch of {len(batch)}: {type(e).__name__}: {one_line(e)}")
            for w in batch:
                if not w.future.done():
                    w.future.set_exception(failure)
            return
        for w, row in zip(batch, probabilities):
            if not w.future.done():
                w.future.set_result(row)

    def _probabilities(self, images: list[torch.Tensor]) -> torch.Tensor:
        with torch.inference_mode():
            logits = torch.as_tensor(self.forward(torch.stack(images)))  # an exported model may hand back numpy
            return logits.float().softmax(dim=1).cpu()  # (B, num_classes)
