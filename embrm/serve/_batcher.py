"""Dynamic micro-batching: the pairs of concurrent requests gathered into one embedder batch.

An RL trainer sends many small requests at once (OpenRLHF: one rollout per request); an embedder is fast only on
full batches. Requests wait in a bounded queue; one loop takes up to `max_batch` pairs (waiting at most `max_wait`
seconds for more once the first arrives), embeds them in one call on a worker thread (the event loop keeps
accepting requests meanwhile), scores each request with its own settings and answers it. A request that would
overfill the queue is refused at once (the server answers 503 with Retry-After), not queued without bound.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from embrm.core import EmbrmError
from embrm.serve._requests import BadRequest, Scoring
from embrm.serve._reward import RewardModel, Rewards

__all__ = ["MicroBatcher", "Overloaded"]


class Overloaded(EmbrmError):
    """The queue is full: retry after a moment."""


@dataclass
class _Waiting:
    scoring: Scoring
    future: asyncio.Future
    queued: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    def __init__(self, model: RewardModel, *, max_batch: int = 64, max_wait: float = 0.005, max_queue: int = 4096):
        if max_batch < 1 or max_queue < 1 or not max_wait >= 0:
            raise EmbrmError(f"max_batch {max_batch}, max_queue {max_queue}: give positive sizes; max_wait "
                             f"{max_wait}: 0 or more seconds")
        self.model, self.max_batch, self.max_wait, self.max_queue = model, max_batch, max_wait, max_queue
        self._queue: collections.deque[_Waiting] = collections.deque()
        self._queued_pairs = 0
        self._arrived = asyncio.Event()
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="embrm-score")
        self._task: asyncio.Task | None = None
        self.in_flight = 0  # requests submitted and not yet answered
        self.stats = {"requests": 0, "pairs": 0, "batches": 0}

    @property
    def queued(self) -> int:
        return self._queued_pairs

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """After the server has finished its in-flight requests: end the loop and the worker thread."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._worker.shutdown(wait=True)

    async def submit(self, scoring: Scoring) -> Rewards:
        n = len(scoring.prompts)
        if n > self.max_queue:  # would never fit: refused for good, not "retry later"
            raise BadRequest(f"{n} pairs in one request: this server queues at most {self.max_queue}: send fewer "
                             f"per request", 413)
        if self._queued_pairs + n > self.max_queue:
            raise Overloaded(f"{self._queued_pairs} pairs are waiting (at most {self.max_queue}): retry shortly")
        waiting = _Waiting(scoring, asyncio.get_running_loop().create_future())
        self._queue.append(waiting)
        self._queued_pairs += n
        self._arrived.set()
        self.in_flight += 1
        try:
            return await waiting.future
        finally:
            self.in_flight -= 1

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._arrived.wait()
            deadline = self._queue[0].queued + self.max_wait
            while self._queued_pairs < self.max_batch and (left := deadline - time.perf_counter()) > 0:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except asyncio.TimeoutError:
                    break
            batch = self._take()
            if not self._queue:
                self._arrived.clear()
            await loop.run_in_executor(self._worker, self._score, batch)

    def _take(self) -> list[_Waiting]:
        """Whole requests up to max_batch pairs (at least one request, however large)."""
        batch, n = [], 0
        while self._queue and (not batch or n + len(self._queue[0].scoring.prompts) <= self.max_batch):
            w = self._queue.popleft()
            batch.append(w)
            n += len(w.scoring.prompts)
        self._queued_pairs -= n
        return batch

    def _score(self, batch: list[_Waiting]) -> None:
        """One embedder call for every pair of the batch, then one scoring call per distinct settings (a trainer's
        requests share theirs), each request answered with its rows."""
        live = [w for w in batch if not w.future.cancelled()]
        prompts = [p for w in live for p in w.scoring.prompts]
        responses = [r for w in live for r in w.scoring.responses]
        try:
            X, n_new = self.model.vectors.vectors(prompts, responses) if live else (None, 0)
        except Exception as e:  # the embedder failed (e.g. an endpoint down): every request of the batch hears it
            for w in live:
                self._answer(w, exception=e)
            return
        bounds = np.cumsum([0] + [len(w.scoring.prompts) for w in live])
        groups: dict[tuple, list[int]] = {}
        for i, w in enumerate(live):
            key = (json.dumps(w.scoring.overrides, sort_keys=True, default=str), w.scoring.aggregations)
            groups.setdefault(key, []).append(i)
        for members in groups.values():
            rows = np.concatenate([np.arange(bounds[i], bounds[i + 1]) for i in members])
            first = live[members[0]].scoring
            try:
                result = self.model.rewards_of(X[rows], [responses[r] for r in rows],
                                               self.model.settings.updated(first.overrides), first.aggregations, n_new)
            except Exception as e:
                for i in members:
                    self._answer(live[i], exception=e)
                continue
            offsets = np.cumsum([0] + [bounds[i + 1] - bounds[i] for i in members])
            for i, lo, hi in zip(members, offsets[:-1], offsets[1:]):
                self._answer(live[i], result.rows(lo, hi))
        self.stats["requests"] += len(live)
        self.stats["pairs"] += len(prompts)
        self.stats["batches"] += 1

    def _answer(self, w: _Waiting, result=None, exception: BaseException | None = None) -> None:
        def settle():
            if w.future.done():
                return
            if exception is not None:
                w.future.set_exception(exception)
            else:
                w.future.set_result(result)
        w.future.get_loop().call_soon_threadsafe(settle)
