"""The micro-batcher on its own: concurrent callers share model calls, results go back to the right caller."""

import asyncio
import time

import numpy as np
import pytest

from textlora.serve.batcher import MicroBatcher, QueueFullError


class FakeModel:
    """Probability row i is one-hot on len(text) % 3, so each caller can check it got its own rows."""

    def __init__(self, delay=0.0, fail_on=None):
        self.calls: list[list[str]] = []
        self.delay = delay
        self.fail_on = fail_on

    def __call__(self, texts):
        self.calls.append(list(texts))
        time.sleep(self.delay)
        if self.fail_on and self.fail_on in texts:
            raise ValueError("boom")
        out = np.zeros((len(texts), 3), dtype=np.float32)
        out[np.arange(len(texts)), [len(t) % 3 for t in texts]] = 1
        return out


def _run(coro):
    return asyncio.run(coro)


async def _with_batcher(model, body, **kwargs):
    batcher = MicroBatcher(model, **kwargs)
    await batcher.start()
    try:
        return await body(batcher)
    finally:
        await batcher.stop()


def test_concurrent_requests_share_model_calls_and_get_their_own_rows():
    model = FakeModel()
    requests = [["a" * (i + j) for j in range(1 + i % 3)] for i in range(20)]  # 39 texts in 20 requests

    async def body(batcher):
        return await asyncio.gather(*(batcher.submit(texts) for texts in requests)), batcher.stats_dict()

    results, stats = _run(_with_batcher(model, body, max_batch=16, max_wait_s=0.05))
    for texts, probs in zip(requests, results):
        assert probs.shape == (len(texts), 3)
        assert list(probs.argmax(axis=1)) == [len(t) % 3 for t in texts]
    assert stats["requests"] == 20 and stats["texts"] == 39
    assert stats["model_calls"] == len(model.calls) < 20
    assert all(len(call) <= 16 for call in model.calls) and stats["largest_batch"] <= 16
    # Requests are never split, and arrive in order.
    assert [t for call in model.calls for t in call] == [t for texts in requests for t in texts]


def test_a_lone_request_waits_at_most_the_window():
    model = FakeModel()

    async def body(batcher):
        started = time.perf_counter()
        await batcher.submit(["only"])
        return time.perf_counter() - started

    assert _run(_with_batcher(model, body, max_batch=8, max_wait_s=0.02)) < 0.5
    assert model.calls == [["only"]]


def test_a_failing_batch_fails_its_callers_and_the_batcher_keeps_going():
    model = FakeModel(fail_on="bad")

    async def body(batcher):
        with pytest.raises(ValueError, match="boom"):
            await batcher.submit(["bad"])
        ok = await batcher.submit(["fine"])
        return ok, batcher.stats_dict()

    ok, stats = _run(_with_batcher(model, body, max_batch=8, max_wait_s=0.0))
    assert ok.shape == (1, 3) and stats["errors"] == 1 and stats["model_calls"] == 1


def test_a_full_queue_refuses_more_texts():
    model = FakeModel(delay=0.2)

    async def body(batcher):
        first = asyncio.create_task(batcher.submit(["x"] * 4))
        await asyncio.sleep(0.05)  # the first batch is in the model; the next 4 texts fill the queue
        second = asyncio.create_task(batcher.submit(["y"] * 4))
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError, match="limit 4"):
            await batcher.submit(["z"])
        return await first, await second

    first, second = _run(_with_batcher(model, body, max_batch=4, max_wait_s=0.0, max_queue=4))
    assert first.shape == second.shape == (4, 3)
