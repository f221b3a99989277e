"""MicroBatcher: gathering, the bounded queue, cancellation, errors. Real asyncio, a plain numpy encoder."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from toolkit.serve.batcher import MicroBatcher, QueueFull


def encode(xs: list) -> np.ndarray:
    """Each input number x -> the row [x, 2x]: results can be traced back to their inputs."""
    return np.array([[x, 2 * x] for x in xs], np.float32)


def run(coro):
    return asyncio.run(coro)


async def _with_batcher(fn, **kw):
    batches: list[int] = []
    b = MicroBatcher(encode, on_batch=lambda n, s: batches.append(n), **kw)
    b.start()
    try:
        return await fn(b), batches
    finally:
        await b.stop()


def test_concurrent_requests_share_one_model_call_and_get_their_own_rows():
    async def go(b):
        return await asyncio.gather(*(b.submit([10 * i, 10 * i + 1]) for i in range(4)))

    results, batches = run(_with_batcher(go, max_batch_size=8, max_wait_ms=2000))
    assert batches == [8]  # full batch: no waiting for max_wait
    for i, r in enumerate(results):
        np.testing.assert_array_equal(r, encode([10 * i, 10 * i + 1]))


def test_without_micro_batching_each_request_is_its_own_model_call():
    async def go(b):
        return await asyncio.gather(*(b.submit([i, i]) for i in range(4)))

    results, batches = run(_with_batcher(go, max_batch_size=8, max_wait_ms=2000, enabled=False))
    assert batches == [2, 2, 2, 2]
    assert [r[0, 0] for r in results] == [0, 1, 2, 3]


def test_a_partial_batch_runs_after_max_wait():
    async def go(b):
        return await b.submit([1, 2, 3])

    result, batches = run(_with_batcher(go, max_batch_size=64, max_wait_ms=20))
    assert batches == [3]
    np.testing.assert_array_equal(result, encode([1, 2, 3]))


@pytest.mark.parametrize("in_flight, expected", [(1, [1, 1]), (2, [2])])
def test_it_waits_only_while_a_request_in_flight_could_join(in_flight, expected):
    """in_flight=1: the lone request runs at once (no max_wait), so a later one gets its own batch;
    in_flight=2: the batch waits (max_wait is long) for the second request and they share one model call."""
    async def go(b):
        first = asyncio.ensure_future(b.submit([1]))
        await asyncio.sleep(0.05)
        return await asyncio.gather(first, b.submit([2]))

    results, batches = run(_with_batcher(go, max_batch_size=8, max_wait_ms=60_000, in_flight=lambda: in_flight))
    assert batches == expected
    assert [r[0, 0] for r in results] == [1, 2]


def test_a_job_that_does_not_fit_starts_the_next_batch():
    async def go(b):
        return await asyncio.gather(b.submit([1, 2, 3]), b.submit([4, 5, 6]))

    results, batches = run(_with_batcher(go, max_batch_size=4, max_wait_ms=50))
    assert batches == [3, 3]
    np.testing.assert_array_equal(results[1], encode([4, 5, 6]))


def test_a_request_larger_than_the_batch_is_encoded_in_chunks():
    async def go(b):
        return await b.submit(list(range(10)))

    result, batches = run(_with_batcher(go, max_batch_size=4, max_wait_ms=0, queue_size=16))
    assert batches == [4, 4, 2]
    np.testing.assert_array_equal(result, encode(list(range(10))))


def test_full_queue_refuses_at_once_and_recovers():
    async def go(b):
        first = asyncio.create_task(b.submit([1, 2]))  # held back by the long max_wait
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert b.depth == 2
        with pytest.raises(QueueFull) as e:
            await b.submit([3, 4])
        assert (e.value.depth, e.value.capacity, e.value.n) == (2, 3, 2)
        ok = await b.submit([5])  # fits: 2 + 1 <= 3, and completes the batch of 3
        return await first, ok, b.depth

    (first, ok, depth), batches = run(_with_batcher(go, max_batch_size=3, max_wait_ms=10_000, queue_size=3))
    np.testing.assert_array_equal(first, encode([1, 2]))
    np.testing.assert_array_equal(ok, encode([5]))
    assert depth == 0 and batches == [3]


def test_a_cancelled_job_is_not_encoded_and_frees_its_place():
    async def go(b):
        job = asyncio.create_task(b.submit([1, 2, 3]))
        await asyncio.sleep(0.01)
        job.cancel()
        await asyncio.gather(job, return_exceptions=True)
        assert b.depth == 0
        return await b.submit([7, 8, 9, 10])  # a full batch: runs at once despite the long max_wait

    result, batches = run(_with_batcher(go, max_batch_size=4, max_wait_ms=10_000, queue_size=4))
    assert batches == [4]  # only the live job went through the model
    np.testing.assert_array_equal(result, encode([7, 8, 9, 10]))


def test_a_model_error_reaches_every_job_of_the_batch_and_the_next_batch_works():
    calls = []

    def flaky(xs):
        calls.append(list(xs))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return encode(xs)

    async def go():
        b = MicroBatcher(flaky, max_batch_size=4, max_wait_ms=1000)
        b.start()
        try:
            bad = await asyncio.gather(b.submit([1, 2]), b.submit([3, 4]), return_exceptions=True)
            good = await b.submit([5, 6, 7, 8])
        finally:
            await b.stop()
        return bad, good

    bad, good = run(go())
    assert all(isinstance(e, RuntimeError) and str(e) == "boom" for e in bad)
    np.testing.assert_array_equal(good, encode([5, 6, 7, 8]))


def test_call_runs_in_the_model_thread():
    import threading

    async def go(b):
        return await b.call(lambda: threading.current_thread().name)

    name, _ = run(_with_batcher(go))
    assert name.startswith("clipkit-model")
