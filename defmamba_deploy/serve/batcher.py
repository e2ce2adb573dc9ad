"""Dynamic batching: concurrent requests merged into batches for a pool of runner instances.

``Batcher(runners, max_batch=8, max_delay_s=0.005, max_queue=64)``: ``submit(x)`` queues one
(B, 3, H, W) request and returns a :class:`concurrent.futures.Future` of its outputs. Each runner
has one worker thread; a worker takes the oldest request, then waits up to ``max_delay_s`` (from
that request's arrival) for more requests **of the same shape** until the batch holds
``max_batch`` images, runs it once and splits the outputs back in request order. Requests of other
shapes stay queued in order for the next batch. A model with a fixed batch dim is served without
merging (``merge=False``). When ``max_queue`` requests wait, ``submit`` raises :class:`QueueFull`
at once (the server's 503); a request cancelled while queued (its client timed out) is dropped.

Threads, not processes: ONNX Runtime releases the GIL in ``run``, so N sessions use N cores.
"""
from __future__ import annotations

import collections
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..checks import count, number


class QueueFull(Exception):
    """The queue holds ``max_queue`` requests: the caller should retry later."""


@dataclass(eq=False)  # identity: deque.remove must not compare arrays
class _Item:
    x: np.ndarray
    future: Future
    arrived: float = field(default_factory=time.monotonic)


class Batcher:
    def __init__(self, runners: Sequence, *, max_batch: int = 8, max_delay_s: float = 0.005, max_queue: int = 64,
                 merge: bool = True, on_batch: Callable[[int, float], None] | None = None) -> None:
        if not runners:
            raise ValueError("a Batcher needs at least one runner")
        self.max_batch = count(max_batch, "max batch")
        self.max_delay_s = number(max_delay_s, "max delay", low=0)
        self.max_queue = count(max_queue, "max queue")
        self.merge = merge
        self.on_batch = on_batch  # called with (batch images, seconds) after each run: metrics
        self._queue: collections.deque[_Item] = collections.deque()
        self._cv = threading.Condition()
        self._closing = False
        self._busy = 0
        self._workers = [threading.Thread(target=self._work, args=(r,), name=f"defmamba-batcher-{i}", daemon=True)
                         for i, r in enumerate(runners)]
        for t in self._workers:
            t.start()

    # --- the caller's side ---------------------------------------------------------------------
    def submit(self, x: np.ndarray) -> Future:
        """Queue one request; its future gives the list of outputs for its own rows."""
        fut: Future = Future()
        with self._cv:
            if self._closing:
                raise QueueFull("the server is shutting down")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"{len(self._queue)} requests are queued (--max-queue {self.max_queue})")
            self._queue.append(_Item(x, fut))
            self._cv.notify()
        return fut

    def depth(self) -> int:
        """Requests waiting (not yet taken by a worker)."""
        with self._cv:
            return len(self._queue)

    def close(self, timeout: float | None = None) -> None:
        """Finish what is queued, then stop the workers."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        for t in self._workers:
            t.join(timeout)

    # --- the workers -----------------------------------------------------------------------------
    def _take(self) -> list[_Item] | None:
        """The next batch (oldest request first, then same-shape ones), or None when closed and empty."""
        with self._cv:
            while True:
                while self._queue and self._queue[0].future.cancelled():
                    self._queue.popleft()
                if self._queue:
                    break
                if self._closing:
                    return None
                self._cv.wait()
            first = self._queue.popleft()
            batch, images = [first], len(first.x)
            if self.merge:
                deadline = first.arrived + self.max_delay_s
                while images < self.max_batch:
                    for item in list(self._queue):
                        if item.future.cancelled():
                            self._queue.remove(item)
                        elif item.x.shape[1:] == first.x.shape[1:] and images + len(item.x) <= self.max_batch:
                            self._queue.remove(item)
                            batch.append(item)
                            images += len(item.x)
                    left = deadline - time.monotonic()
                    if images >= self.max_batch or left <= 0 or self._closing:
                        break
                    self._cv.wait(left)
            self._busy += 1
        return [b for b in batch if b.future.set_running_or_notify_cancel()]

    def _work(self, runner) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                if batch:
                    self._run(runner, batch)
            finally:
                with self._cv:
                    self._busy -= 1

    def _run(self, runner, batch: list[_Item]) -> None:
        x = batch[0].x if len(batch) == 1 else np.concatenate([b.x for b in batch])
        t0 = time.perf_counter()
        try:
            outputs = runner.infer(x)
        except BaseException as e:  # noqa: BLE001 - each waiting request gets the runner's error
            for b in batch:
                b.future.set_exception(e)
            return
        if self.on_batch is not None:
            self.on_batch(len(x), time.perf_counter() - t0)
        start = 0
        for b in batch:
            n = len(b.x)
            b.future.set_result([o[start:start + n] for o in outputs])
            start += n
