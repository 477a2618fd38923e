"""Request batching: concurrent action requests for one version become one action call.

Both transports (REST and gRPC) run requests on the event loop, so one ``Batcher`` per
version takes coroutines only: ``await batcher(full, batch)``. Requests queue up; one
leader task at a time gathers a batch (waiting ``window`` seconds for more after the
first request, when set; ``max_batch`` rows end the wait early), stacks the inputs
along the batch dim, runs the action in the inference thread and sets each request's
future with its rows. The leader leads again while requests wait: while one batch
runs the next one gathers, so under load batches grow by themselves even with a
window of 0. onnxruntime releases the GIL while it computes, so the event loop keeps
reading requests meanwhile.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

import numpy as np

__all__ = ["Batcher"]


class _Item:
    """One request's rows, and the future its answer is set on."""

    __slots__ = ("batch", "full", "future")

    def __init__(self, full: dict[str, np.ndarray], batch: int, future: asyncio.Future):
        self.full = full
        self.batch = batch
        self.future = future


class Batcher:
    """Merges the action requests of one served version (on one event loop).

    Args:
      run: ``full inputs -> outputs`` for one (merged) batch; every output has the batch dim.
      window: seconds to wait for more requests after the first one (0: take what is
        there); the wait ends early once ``max_batch`` rows are in.
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
        self._pending: collections.deque[_Item] = collections.deque()
        self._rows = 0  # pending rows
        self._leader: asyncio.Task | None = None
        # the leader's window, while it waits: set early when max_batch rows are in
        self._window_open: asyncio.Future | None = None

    async def __call__(self, full: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
        """A request: its rows of a merged call."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append(_Item(full, batch, future))
        self._rows += batch
        if self._rows >= self._max_batch:
            _close_window(self._window_open)
        if self._leader is None:
            self._lead(loop)
        return await future

    # --- leading -----------------------------------------------------------------------------

    def _lead(self, loop: asyncio.AbstractEventLoop) -> None:
        self._leader = loop.create_task(self._leading())

    async def _leading(self) -> None:
        """The leader: waits the window on the loop's timer, runs the batch in the
        inference thread, answers it; again while requests wait."""
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                done = None
                try:
                    if self._rows < self._max_batch:
                        # Lets requests already on the wire join this batch (window 0 too).
                        await self._wait_window(loop)
                    done = self._start(loop)
                    if done is None:
                        return
                    answers = await asyncio.shield(done)
                except asyncio.CancelledError:
                    # The loop is shutting down: the batch still runs and is answered,
                    # and whoever waits after it is led by a new leader.
                    if done is None:
                        done = self._start(loop)
                    if done is not None:
                        done.add_done_callback(self._finish)
                    raise
                _settle(answers)
        finally:
            self._leader = None

    async def _wait_window(self, loop: asyncio.AbstractEventLoop) -> None:
        """The window on the loop's timer, or until max_batch rows are pending."""
        if self._window <= 0:
            await asyncio.sleep(0)
            return
        self._window_open = window = loop.create_future()
        timer = loop.call_later(self._window, _close_window, window)
        try:
            await window
        finally:
            timer.cancel()
            if self._window_open is window:
                self._window_open = None

    def _start(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future | None:
        """The next batch, started in the inference thread; None (and every waiting
        request failed) when that thread is shut (the server closed)."""
        items = self._take()
        try:
            return loop.run_in_executor(self._executor, self._answers, items)
        except RuntimeError as e:
            items += self._pending
            self._pending.clear()
            self._rows = 0
            _settle([(item.future, e) for item in items])
            return None

    def _finish(self, done: asyncio.Future) -> None:
        """What a cancelled leader leaves: its batch's answers, and the lead."""
        if done.cancelled() or done.exception() is not None:
            return
        _settle(done.result())
        if self._pending and self._leader is None:
            try:
                self._lead(done.get_loop())
            except RuntimeError as e:  # the loop is closed: nobody can lead there
                items = list(self._pending)
                self._pending.clear()
                self._rows = 0
                _settle([(item.future, e) for item in items])

    def _take(self) -> list[_Item]:
        """The next batch, first come first: at least one request, and no more than
        max_batch rows."""
        pending = self._pending
        taken = [pending.popleft()]
        rows = taken[0].batch
        while pending and rows + pending[0].batch <= self._max_batch:
            item = pending.popleft()
            taken.append(item)
            rows += item.batch
        self._rows -= rows
        return taken

    # --- the merged call (in the inference thread) --------------------------------------------

    def _answers(self, items: list[_Item]) -> list[tuple[asyncio.Future, Any]]:
        """Each request's future with its outputs, or the error its own rows raise."""
        try:
            outputs = self._merged(items)
        except BaseException as e:  # every request of the batch learns of it
            outputs = [e] * len(items)
        return [(item.future, output) for item, output in zip(items, outputs, strict=True)]

    def _merged(self, items: list[_Item]) -> list[dict[str, np.ndarray] | Exception]:
        if self._on_batch is not None:
            self._on_batch(sum(item.batch for item in items))
        if len(items) == 1:
            return [self._alone(items[0])]
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


def _close_window(window: asyncio.Future | None) -> None:
    if window is not None and not window.done():
        window.set_result(None)


def _settle(answers: list[tuple[asyncio.Future, Any]]) -> None:
    """Sets each waiting request's future; one whose request was cancelled meanwhile
    is skipped."""
    for future, output in answers:
        if future.done():
            continue
        if isinstance(output, BaseException):
            future.set_exception(output)
        else:
            future.set_result(output)
