"""Micro-batching: images from concurrent requests go through the model together.

A request hands its preprocessed images to `MicroBatcher.submit`, which awaits their embeddings. One worker
task takes the oldest job, then keeps gathering jobs until the batch holds `max_batch_size` images or
`max_wait_ms` have passed since it took the first, and runs the model on all of them in one call. While
the model runs, new jobs queue up, so under load batches fill without waiting at all. With `in_flight` (how many
requests the server is handling) it waits only while some request outside the batch could still join it: a
lone request runs at once instead of paying max_wait_ms.

The model runs in ONE dedicated thread (never on the event loop); everything else that touches the model
(text encoding for a new label set, scoring) goes through `call`, so the model is never used concurrently.

The queue is bounded in images: `submit` raises `QueueFull` at once instead of letting callers wait without
bound. Cancellation reaches the work: a job is dropped when its caller stops awaiting it (the awaiting task is
cancelled: a deadline, a client gone) or when the `cancel` event given to `submit` is set. A dropped job's
images are never computed: queued jobs leave the queue, and a batch in the model thread skips them before each
chunk of max_batch_size images. `images_cancelled` counts the images dropped that way.
"""
from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np


class QueueFull(Exception):
    """The queue can't take this job now; retry later."""

    def __init__(self, depth: int, capacity: int, n: int):
        super().__init__(f"queue holds {depth}/{capacity} images, can't take {n} more")
        self.depth, self.capacity, self.n = depth, capacity, n


class Cancelled(Exception):
    """The job's cancel event was set (deadline or client gone) before all its images were computed."""

    def __init__(self) -> None:
        super().__init__("the request was cancelled before its images were computed")


@dataclass(eq=False)
class _Job:
    inputs: list
    future: asyncio.Future
    cancel: Optional[threading.Event] = None  # the caller's flag
    dropped: threading.Event = field(default_factory=threading.Event)  # set once nobody awaits the result
    counted: bool = field(default=True)  # still counted in the queue depth

    def wanted(self) -> bool:
        """Whether the result is still awaited; safe from any thread."""
        return not self.dropped.is_set() and not (self.cancel is not None and self.cancel.is_set())


class MicroBatcher:
    """Gathers `submit`ted inputs into model batches.

    encode: list of inputs (e.g. (3, H, W) tensors) -> (n, D) array, called in the model thread.
    on_batch: optional callback(n_images, seconds) after each model call (metrics).
    in_flight: optional count of requests being handled (each submits at most one job at a time); when every
        one of them is already in the batch, the batch runs without waiting.
    """

    def __init__(self, encode: Callable[[list], np.ndarray], *, max_batch_size: int = 32, max_wait_ms: float = 5.0,
                 queue_size: int = 256, enabled: bool = True,
                 on_batch: Optional[Callable[[int, float], None]] = None,
                 in_flight: Optional[Callable[[], int]] = None):
        self.encode, self.on_batch, self.in_flight = encode, on_batch, in_flight
        self.max_batch_size, self.max_wait_s = max_batch_size, max_wait_ms / 1000.0
        self.queue_size, self.enabled = queue_size, enabled
        self.images_cancelled = 0  # images dropped uncomputed because their request gave up
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="clipkit-model")
        self._jobs: deque[_Job] = deque()
        self._depth = 0
        self._busy_since: Optional[float] = None  # time.monotonic() when the model call in progress began
        self._arrived: Optional[asyncio.Event] = None
        self._worker: Optional[asyncio.Task] = None

    # -- lifecycle
    def start(self) -> None:
        """Start the worker on the running event loop."""
        self._arrived = asyncio.Event()
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="clipkit-batcher")

    async def stop(self) -> None:
        """Stop the worker; jobs still queued fail with RuntimeError; waits for a running model call (a stuck one
        is the shutdown watchdog's business, see server.py)."""
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        while self._jobs:
            job = self._jobs.popleft()
            if not job.future.done():
                job.future.set_exception(RuntimeError("the service is shutting down"))
        await asyncio.to_thread(self._executor.shutdown, True)

    @property
    def depth(self) -> int:
        """Images accepted and not yet handed to the model (queued or being gathered)."""
        return self._depth

    def busy_for(self) -> Optional[float]:
        """Seconds the model thread has been in its current call; None while it is idle. Any thread."""
        since = self._busy_since
        return None if since is None else time.monotonic() - since

    # -- API
    async def submit(self, inputs: Sequence[Any], cancel: Optional[threading.Event] = None) -> np.ndarray:
        """Inputs -> (len(inputs), D) embeddings, in order.

        Raises QueueFull when the queue can't take them, Cancelled when `cancel` is (or gets) set before they are
        all computed. Cancelling the awaiting task drops the job just the same.
        """
        n = len(inputs)
        if self._worker is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        if self._depth + n > self.queue_size and self._depth > 0:
            raise QueueFull(self._depth, self.queue_size, n)
        job = _Job(list(inputs), asyncio.get_running_loop().create_future(), cancel)
        self._depth += n
        job.future.add_done_callback(lambda f, j=job: self._done(j, f))
        self._jobs.append(job)
        self._arrived.set()
        return await job.future  # cancelling the caller cancels the job

    async def call(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """Run fn(*args, **kwargs) in the model thread (for anything else that uses the model)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._timed, functools.partial(fn, *args, **kwargs))

    # -- bookkeeping (event loop)
    def _done(self, job: _Job, future: asyncio.Future) -> None:
        """The job's future completed: nobody waits for its images any more; a queued job frees its places."""
        job.dropped.set()
        if job.counted:
            job.counted = False
            self._depth -= len(job.inputs)
            if future.cancelled() or isinstance(future.exception(), Cancelled):
                self.images_cancelled += len(job.inputs)

    def _live(self, job: _Job) -> bool:
        """A job still wanted; one whose cancel event is set fails with Cancelled (and leaves the queue)."""
        if job.future.done():
            return False
        if not job.wanted():
            job.future.set_exception(Cancelled())
            return False
        return True

    def _take(self) -> Optional[_Job]:
        """Pop the oldest job that is still wanted (cancelled ones are dropped)."""
        while self._jobs:
            job = self._jobs.popleft()
            if self._live(job):
                return job
        return None

    async def _next_batch(self) -> list[_Job]:
        """Wait for a job, then gather more until the batch is full or max_wait has passed."""
        loop = asyncio.get_running_loop()
        first = None
        while first is None:
            first = self._take()
            if first is None:
                self._arrived.clear()
                await self._arrived.wait()
        batch = [first]
        if not self.enabled:
            return batch
        deadline = loop.time() + self.max_wait_s
        while True:
            n = sum(len(j.inputs) for j in batch if not j.future.done())
            if n >= self.max_batch_size:
                break
            if self._jobs and not self._live(self._jobs[0]):
                self._jobs.popleft()  # a cancelled job at the head
                continue
            if self._jobs:
                if n + len(self._jobs[0].inputs) > self.max_batch_size and n > 0:
                    break  # doesn't fit: it starts the next batch
                batch.append(self._jobs.popleft())
                continue
            if self.in_flight is not None and self.in_flight() <= len(batch):
                break  # every request being handled is in this batch: nobody left to wait for
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                break
        return batch

    # -- model thread
    def _timed(self, fn: Callable[[], Any]) -> Any:
        self._busy_since = time.monotonic()
        try:
            return fn()
        finally:
            self._busy_since = None

    def _encode_jobs(self, jobs: list[_Job]) -> tuple[dict[_Job, list], int]:
        """Model thread: the jobs' inputs in chunks of max_batch_size (one request may hold more images than that).
        Before each chunk, inputs of jobs nobody waits for any more are skipped.
        -> ({job: its computed (D,) rows}, number of inputs skipped)."""
        todo = deque((j, x) for j in jobs for x in j.inputs)
        rows: dict[_Job, list] = {j: [] for j in jobs}
        skipped = 0
        while todo:
            chunk = []
            while todo and len(chunk) < self.max_batch_size:
                job, x = todo.popleft()
                if job.wanted():
                    chunk.append((job, x))
                else:
                    skipped += 1
            if not chunk:
                break
            t0 = time.perf_counter()
            out = self._timed(functools.partial(self.encode, [x for _, x in chunk]))
            if self.on_batch is not None:
                self.on_batch(len(chunk), time.perf_counter() - t0)
            for (job, _), row in zip(chunk, out):
                rows[job].append(row)
        return rows, skipped

    # -- worker (event loop)
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            live = [j for j in batch if self._live(j)]
            for j in live:
                self._done_queueing(j)
            if not live:
                continue
            try:
                rows, skipped = await loop.run_in_executor(self._executor, self._encode_jobs, live)
            except asyncio.CancelledError:  # stop() while the model ran
                for j in live:
                    j.future.cancel()
                raise
            except Exception as e:  # the model failed: every job in the batch gets the error
                for j in live:
                    if not j.future.done():
                        j.future.set_exception(e)
                continue
            self.images_cancelled += skipped
            for j in live:
                self._finish(j, rows[j])

    def _done_queueing(self, job: _Job) -> None:
        """The job goes to the model: it no longer counts in the queue depth."""
        if job.counted:
            job.counted = False
            self._depth -= len(job.inputs)

    @staticmethod
    def _finish(job: _Job, rows: list) -> None:
        if job.future.done():
            return
        if len(rows) < len(job.inputs):
            job.future.set_exception(Cancelled())
        else:
            job.future.set_result(np.stack(rows) if rows else np.zeros((0, 0), np.float32))
