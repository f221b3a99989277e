"""Admission for text encoding: a request's own label set costs the model a text pass (100 labels of 200
characters: ~0.35 s with the demo model), so it gets a lane of its own.

- Label sets already encoded (the default one, and the LRU cache of the predictor) are looked up on the event
  loop and never wait for anyone's text work: `TextLane.head_for` returns them at once.
- A new label set is encoded once however many requests ask for it at the same time (single flight), in the
  model thread, at most serve.text_concurrency sets at once, in chunks of TEXT_CHUNK prompts, each after the
  images already queued for the model (for at most YIELD_S); image work so waits behind at most
  text_concurrency chunks, never behind whole passes.
- Labels of the sets waiting or being encoded count against serve.text_queue_labels, and, at the measured
  encoding rate, against serve.text_queue_s (half the request deadline); a set that doesn't fit is
  refused at once with 503 and a Retry-After estimated from that rate, instead of waiting into a 504. A
  request's wait here also counts against its deadline (it runs under `with_deadline`). A pass that no
  request waits for any more (deadline, client gone) stops at its next chunk.
"""
from __future__ import annotations

import asyncio
import math
import time
from typing import Any, Optional, Sequence

from toolkit.serve.errors import ApiError

YIELD_S = 2.0  # the longest a text chunk lets queued images go first
TEXT_CHUNK = 64  # prompts per model call of a text pass (one text batch)


class TextLane:
    def __init__(self, predictor: Any, batcher: Any, concurrency: int = 1, max_queued_labels: int = 1000,
                 retry_after_s: int = 1, max_wait_s: float = 15.0):
        self.predictor, self.batcher = predictor, batcher
        self.max_queued_labels, self.retry_after_s, self.max_wait_s = max_queued_labels, retry_after_s, max_wait_s
        self.queued_labels = 0  # labels of the sets waiting for, or in, a text pass
        self.sets_encoded = self.sets_refused = 0
        self.seconds_per_label = 0.0  # running average of the text passes, for Retry-After
        self._slots = asyncio.Semaphore(concurrency)
        self._pending: dict[tuple[str, ...], asyncio.Task] = {}
        self._waiters: dict[tuple[str, ...], int] = {}  # requests awaiting each pending set

    async def head_for(self, labels: Optional[Sequence[str]]) -> Any:
        """The head for `labels` (None: the default one), encoding it when it isn't cached.
        Raises ApiError 503 when the text queue can't take it; ConfigError for bad labels."""
        head = self.predictor.cached_head(labels)  # validates; no model work
        if head is not None:
            return head
        key = tuple(labels)
        task = self._pending.get(key)
        if task is None:
            if self.queued_labels > 0 and not self._fits(len(key)):
                self.sets_refused += 1
                raise self._busy(len(key))
            self.queued_labels += len(key)
            task = asyncio.get_running_loop().create_task(self._encode(key), name="clipkit-text")
            task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved, even if nobody waits
            self._pending[key] = task
        # shielded: one caller giving up (deadline, client gone) leaves the pass to the others who wait for it;
        # once nobody waits for it, it stops at its next chunk
        self._waiters[key] = self._waiters.get(key, 0) + 1
        try:
            return await asyncio.shield(task)
        finally:
            self._waiters[key] -= 1
            if not self._waiters[key]:
                del self._waiters[key]
                if not task.done():
                    task.cancel()
                    if self._pending.get(key) is task:
                        del self._pending[key]  # a later request for this set starts a pass of its own

    async def _encode(self, key: tuple[str, ...]) -> Any:
        try:
            try:  # the measured rate can't foresee a machine getting busier: the wait itself is bounded too
                await asyncio.wait_for(self._slots.acquire(), self.max_wait_s)
            except asyncio.TimeoutError:
                self.sets_refused += 1
                raise self._busy(len(key), waited=True) from None
            try:
                if self.predictor.cached_head(key) is not None:  # encoded while this one waited
                    return self.predictor.cached_head(key)
                t0 = time.perf_counter()
                await self._encode_prompts(key)
                head = await self.batcher.call(self.predictor.head_for, list(key))  # its prompts are cached now
                rate = (time.perf_counter() - t0) / max(1, len(key))
                self.seconds_per_label = rate if not self.sets_encoded else 0.8 * self.seconds_per_label + 0.2 * rate
                self.sets_encoded += 1
                return head
            finally:
                self._slots.release()
        finally:
            self.queued_labels -= len(key)
            if self._pending.get(key) is asyncio.current_task():
                del self._pending[key]

    def _fits(self, n: int) -> bool:
        """Whether n more labels fit a non-empty queue: in labels, and in the seconds the queue would take at the
        measured rate (a loaded machine encodes slower: a request admitted must still finish before its deadline)."""
        labels = self.queued_labels + n
        return labels <= self.max_queued_labels and labels * self.seconds_per_label <= self.max_wait_s

    async def _encode_prompts(self, labels: tuple[str, ...]) -> None:
        """The label set's prompts into the extractor's text cache, TEXT_CHUNK at a time, each chunk after the
        images queued meanwhile: image work waits for at most one chunk (not a whole pass of 100 labels x the
        templates). Prompts that don't fit the model's text context are refused first, before any model work."""
        from toolkit.heads.prompts import check_prompts_fit, expand

        extractor, templates = self.predictor.extractor, self.predictor.head.templates
        tokenizer = getattr(extractor, "tokenizer", None)
        await asyncio.to_thread(check_prompts_fit, tokenizer, labels, templates)
        encode = getattr(extractor, "encode_texts", None)
        prompts = expand(labels, templates) if encode is not None else []
        for i in range(0, len(prompts), TEXT_CHUNK):
            await self._after_queued_images()
            await self.batcher.call(encode, prompts[i:i + TEXT_CHUNK])
        await self._after_queued_images()

    async def _after_queued_images(self) -> None:
        """Let images already queued for the model go first (the batcher hands them to the model thread one batch
        at a time, so a text pass queued now would run before them): wait until none is left in the batcher's
        queue, for at most YIELD_S, so that a steady image load can't starve text work."""
        deadline = time.monotonic() + YIELD_S
        while self.batcher.depth > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.002)

    def _busy(self, n: int, waited: bool = False) -> ApiError:
        wait = max(self.retry_after_s, math.ceil(self.queued_labels * self.seconds_per_label))
        why = (f"waited serve.text_queue_s = {self.max_wait_s:g}s behind other requests' label sets" if waited else
               f"is encoding {self.queued_labels} labels of other requests' label sets and can't queue {n} more "
               f"(serve.text_queue_labels = {self.max_queued_labels}, serve.text_queue_s = {self.max_wait_s:g}s "
               "of text work)")
        return ApiError(503, "text_busy", f"the server {why}; retry after {wait}s, or send a label set already in "
                        "use (those never wait)", {"Retry-After": str(wait)})
