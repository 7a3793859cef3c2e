"""Micro-batching: texts from concurrent requests share one model call.

A request's texts wait at most ``max_wait_s`` after the oldest queued request arrived, or until
``max_batch`` texts are queued, then everything queued (up to ``max_batch``) runs as one batch
on a single worker thread. While a batch runs, new requests queue up and form the next one, so
under load batches fill without any waiting and an idle server adds at most ``max_wait_s``.
"""

from __future__ import annotations

import asyncio
import collections
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np


class QueueFullError(Exception):
    """More texts are waiting than ``max_queue`` allows; the caller should retry later."""


@dataclass
class _Job:
    texts: Sequence[str]
    future: asyncio.Future
    arrived: float


@dataclass
class BatcherStats:
    """Counters since start: ``model_calls < requests`` means requests were batched together."""

    requests: int = 0
    texts: int = 0
    model_calls: int = 0
    largest_batch: int = 0
    errors: int = 0
    model_seconds: float = 0.0

    def as_dict(self, queued: int) -> dict:
        return {"requests": self.requests, "texts": self.texts, "model_calls": self.model_calls,
                "largest_batch": self.largest_batch, "errors": self.errors, "queued_texts": queued,
                "model_seconds": round(self.model_seconds, 3),
                "mean_batch": round(self.texts / self.model_calls, 2) if self.model_calls else 0.0}


class MicroBatcher:
    """Collects texts from concurrent callers into batches for ``predict``.

    Args:
        predict: texts -> probabilities ``[N, K]``; runs on one worker thread (never concurrently).
        max_batch: most texts in one model call (a single larger request still runs, alone).
        max_wait_s: how long the oldest queued request may wait for company.
        max_queue: most texts waiting; beyond it :meth:`submit` raises :class:`QueueFullError`.
    """

    def __init__(self, predict: Callable[[list[str]], np.ndarray], max_batch: int = 32,
                 max_wait_s: float = 0.005, max_queue: int = 4096):
        self.predict = predict
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.stats = BatcherStats()
        self._jobs: collections.deque[_Job] = collections.deque()
        self._queued_texts = 0
        self._wakeup: Optional[asyncio.Event] = None
        self._task: Optional[asyncio.Task] = None
        # One thread: the model is never called concurrently, and torch uses its own threads inside.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="textlora-model")

    def stats_dict(self) -> dict:
        return self.stats.as_dict(self._queued_texts)

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="textlora-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)
        for job in self._jobs:
            if not job.future.done():
                job.future.set_exception(RuntimeError("server shutting down"))

    async def submit(self, texts: Sequence[str]) -> np.ndarray:
        """Probabilities ``[len(texts), K]`` for ``texts``, computed in a batch with other callers' texts."""
        if self._queued_texts + len(texts) > self.max_queue:
            raise QueueFullError(f"{self._queued_texts} texts are already waiting (limit {self.max_queue})")
        future = asyncio.get_running_loop().create_future()
        self._jobs.append(_Job(list(texts), future, time.monotonic()))
        self._queued_texts += len(texts)
        self.stats.requests += 1
        self._wakeup.set()
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if not self._jobs:
                continue
            # Wait for company only while the oldest job is inside its window and the batch is not full.
            while self._queued_texts < self.max_batch:
                remaining = self._jobs[0].arrived + self.max_wait_s - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except asyncio.TimeoutError:
                    break
                self._wakeup.clear()
            jobs = self._take_batch()
            texts = [text for job in jobs for text in job.texts]
            started = time.perf_counter()
            try:
                probs = await loop.run_in_executor(self._executor, self.predict, texts)
            except Exception as exc:  # a failing batch fails its requests, never the server
                self.stats.errors += 1
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
            else:
                self._record(len(texts), time.perf_counter() - started)
                start = 0
                for job in jobs:
                    if not job.future.done():  # the client may have gone away meanwhile
                        job.future.set_result(probs[start:start + len(job.texts)])
                    start += len(job.texts)
            if self._jobs:
                self._wakeup.set()

    def _take_batch(self) -> list[_Job]:
        """Oldest jobs first, up to ``max_batch`` texts; a job is never split across batches."""
        jobs, count = [], 0
        while self._jobs and (not jobs or count + len(self._jobs[0].texts) <= self.max_batch):
            job = self._jobs.popleft()
            jobs.append(job)
            count += len(job.texts)
        self._queued_texts -= count
        return jobs

    def _record(self, size: int, seconds: float) -> None:
        self.stats.model_calls += 1
        self.stats.texts += size
        self.stats.largest_batch = max(self.stats.largest_batch, size)
        self.stats.model_seconds += seconds
