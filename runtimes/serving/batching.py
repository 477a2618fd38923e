"""Request batching: concurrent action requests for one version become one action call.

Requests queue up; one drain task per version takes what has queued (after waiting
``window`` seconds for more, when set), stacks the inputs along the batch dim, runs
the action in the inference thread and hands each request its rows back. While one
batch runs, the next one gathers, so under load batches grow by themselves even with
a window of 0. The event loop meanwhile keeps reading requests: onnxruntime releases
the GIL while it computes.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np

__all__ = ["Batcher"]


@dataclasses.dataclass
class _Item:
    full: dict[str, np.ndarray]
    batch: int
    future: asyncio.Future


class Batcher:
    """Merges the action requests of one served version.

    Args:
      run: ``full inputs -> outputs`` for one (merged) batch; every output has the batch dim.
      window: seconds to wait for more requests after the first one (0: take what is
        there). The event loop's timers have a resolution of about a millisecond.
      max_batch: the most rows one call takes.
      executor: where ``run`` runs (one thread: calls never overlap).
      on_batch: called with each merged batch's row count (for metrics).
    """

    def __init__(
        self,
        run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
        window: float,
        max_batch: int,
        executor: Executor,
        on_batch: Callable[[int], None] | None = None,
    ):
        self._run = run
        self._window = float(window)
        self._max_batch = int(max_batch)
        self._executor = executor
        self._on_batch = on_batch
        self._pending: list[_Item] = []
        self._worker: asyncio.Task | None = None

    async def __call__(self, full: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
        loop = asyncio.get_running_loop()
        item = _Item(full, batch, loop.create_future())
        self._pending.append(item)
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())
        return await item.future

    def _take(self) -> list[_Item]:
        taken, rows = [], 0
        while self._pending and (not taken or rows + self._pending[0].batch <= self._max_batch):
            item = self._pending.pop(0)
            taken.append(item)
            rows += item.batch
        return taken

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            rows = sum(item.batch for item in self._pending)
            if rows < self._max_batch:
                # Lets requests already on the wire join this batch.
                await asyncio.sleep(self._window)
            items = self._take()
            try:
                outputs = await loop.run_in_executor(self._executor, self._merged, items)
            except BaseException as e:  # every waiting request learns of it
                for item in items:
                    if not item.future.done():
                        item.future.set_exception(e)
                if isinstance(e, asyncio.CancelledError):
                    raise
                continue
            for item, output in zip(items, outputs, strict=True):
                if item.future.done():
                    continue
                if isinstance(output, Exception):
                    item.future.set_exception(output)
                else:
                    item.future.set_result(output)

    def _merged(self, items: list[_Item]) -> list[dict[str, np.ndarray] | Exception]:
        """Each item's outputs, or the error its own rows raise."""
        if self._on_batch is not None:
            self._on_batch(sum(item.batch for item in items))
        if len(items) == 1:
            return [self._run(items[0].full)]
        keys = items[0].full.keys()
        full = {k: np.concatenate([item.full[k] for item in items]) for k in keys}
        try:
            outputs = self._run(full)
        except Exception:
            # One request's rows (a step type of 3) must not fail the others', nor be
            # named at their row of the merged batch: each runs alone, to its own answer.
            return [self._alone(item) for item in items]
        split = []
        start = 0
        for item in items:
            stop = start + item.batch
            split.append({k: v[start:stop] for k, v in outputs.items()})
            start = stop
        return split

    def _alone(self, item: _Item) -> dict[str, np.ndarray] | Exception:
        try:
            return self._run(item.full)
        except Exception as e:
            return e
