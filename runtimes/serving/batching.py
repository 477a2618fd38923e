"""Request batching: concurrent action requests for one version become one action call.

One ``Batcher`` per version takes requests from both sides of the server: coroutines
on the event loop (REST and gRPC: ``await batcher(full, batch)``) and threads
(``ServingCore.run_blocking``: ``batcher.run_blocking(full, batch)``), so one merged
call holds rows of either.
Requests queue up under a lock; one leader at a time gathers a batch (waiting
``window`` seconds for more after the first request, when set), stacks the inputs
along the batch dim, runs the action and hands each request its rows back. The
leader is the first request's own thread when a thread asks (it waits anyway: no
hand-off to the event loop and back), or else a task on the event loop
that runs the merged call in the inference thread. After its batch the leader hands
over to a waiting thread's request, else to the loop: while one batch runs the next
one gathers, so under load batches grow by themselves even with a window of 0.
onnxruntime releases the GIL while it computes, so the event loop (and any calling
threads) keep reading requests meanwhile.
"""

from __future__ import annotations

import _thread
import asyncio
import collections
import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

import numpy as np

__all__ = ["Batcher"]


class _Item:
    """One request's rows, and how its answer reaches it: a thread waits on ``wake``
    (a lock it holds until the answer, or its turn to lead, is there), a coroutine
    on ``future`` (set on ``loop``)."""

    __slots__ = ("batch", "error", "full", "future", "lead", "loop", "output", "wake")

    def __init__(self, full: dict[str, np.ndarray], batch: int):
        self.full = full
        self.batch = batch
        self.output: dict[str, np.ndarray] | None = None
        self.error: BaseException | None = None
        self.lead = False
        self.wake: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.future: asyncio.Future | None = None


class Batcher:
    """Merges the action requests of one served version.

    Args:
      run: ``full inputs -> outputs`` for one (merged) batch; every output has the batch dim.
      window: seconds to wait for more requests after the first one (0: take what is
        there). A thread leader's wait ends early once ``max_batch`` rows are there.
      max_batch: the most rows one call takes.
      executor: where a batch led from the event loop runs (calls of one batcher never
        overlap, whoever leads).
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
        self._lock = threading.Lock()
        self._full = threading.Condition(self._lock)  # max_batch rows are pending
        self._pending: collections.deque[_Item] = collections.deque()
        self._rows = 0  # pending rows
        self._leading = False  # a leader gathers or runs a batch, or has been called
        self._tasks: set[asyncio.Task] = set()  # the loop's leaders (kept from the GC)
        # the loop leader's window, while it waits: set early when max_batch rows are in
        self._window_open: asyncio.Future | None = None

    # --- the two ways in -----------------------------------------------------------------

    async def __call__(self, full: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
        """A request from a coroutine on the event loop: its rows of a merged call."""
        loop = asyncio.get_running_loop()
        item = _Item(full, batch)
        item.loop = loop
        item.future = future = loop.create_future()
        if self._join(item):
            self._lead_on_loop(loop)
        return await future

    def run_blocking(self, full: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
        """A request from a thread (not the event loop's): its rows of a merged call.

        The thread leads the batch when no one else does, or when handed the lead.
        """
        item = _Item(full, batch)
        item.wake = wake = _thread.allocate_lock()  # threading's Event costs more
        wake.acquire()
        lead = self._join(item)
        while True:
            if lead:
                self._run_batch(wait=True)
            wake.acquire()  # released once: with the answer, or with the lead
            lead = item.lead
            if not lead:
                break
            item.lead = False
        if item.error is not None:
            raise item.error
        return item.output

    # --- leading -----------------------------------------------------------------------------

    def _join(self, item: _Item) -> bool:
        """Queues a request; True when its caller must lead (no one leads yet)."""
        with self._lock:
            self._pending.append(item)
            self._rows += item.batch
            if self._rows >= self._max_batch:
                self._full.notify()
                window = self._window_open
                if window is not None:  # the loop's leader waits: end its window now
                    self._window_open = None
                    window.get_loop().call_soon_threadsafe(_close_window, window)
            if self._leading:
                return False
            self._leading = True
            return True

    def _lead_on_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Starts a leader task on the event loop (called in the loop's thread)."""
        task = loop.create_task(self._lead_async())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _lead_async(self) -> None:
        """The loop's leader: waits the window on the loop's timer (no thread held),
        then runs the batch in the inference thread; again while only coroutines wait."""
        loop = asyncio.get_running_loop()
        again = True
        while again:
            done = None
            try:
                if self._rows < self._max_batch:
                    # Lets requests already on the wire join this batch (window 0 too);
                    # max_batch rows end the window early, as a thread leader's does.
                    await self._wait_window(loop)
                done = self._start(loop)
                again, answers = await asyncio.shield(done)
            except asyncio.CancelledError:
                # The loop is shutting down: the batch still runs and is answered.
                (done or self._start(loop)).add_done_callback(self._finish)
                raise
            _settle(answers)  # here on the loop: no second wake-up of it

    async def _wait_window(self, loop: asyncio.AbstractEventLoop) -> None:
        """The window on the loop's timer, or until max_batch rows are pending."""
        if self._window <= 0:
            await asyncio.sleep(0)
            return
        window = loop.create_future()
        timer = loop.call_later(self._window, _close_window, window)
        with self._lock:
            if self._rows >= self._max_batch:
                window.set_result(None)
            else:
                self._window_open = window
        try:
            await window
        finally:
            timer.cancel()
            with self._lock:
                if self._window_open is window:
                    self._window_open = None

    def _start(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future:
        """The loop leader's batch, started in the inference thread."""
        try:
            return loop.run_in_executor(self._executor, self._run_batch, False, loop)
        except RuntimeError as e:  # the inference thread is shut (the server closed)
            self._fail_pending(e)
            raise

    def _finish(self, done: asyncio.Future) -> None:
        """What a cancelled loop leader leaves: its batch's answers, and the lead."""
        if done.cancelled() or done.exception() is not None:
            return  # a failed batch answered its requests and handed the lead over
        again, answers = done.result()
        _settle(answers)
        if again:
            self._lead_on_loop(done.get_loop())

    def _run_batch(
        self, wait: bool, loop: asyncio.AbstractEventLoop | None = None
    ) -> tuple[bool, list]:
        """The leader's batch: (waits the window,) takes, runs, answers, hands over.

        Returns, for the leader of the event loop ``loop``: whether it is to lead
        again, and the answers of that loop's coroutines, which it sets itself."""
        with self._lock:
            if wait and self._window > 0 and self._rows < self._max_batch:
                self._full.wait_for(self._is_full, self._window)
            items = self._take()
        try:
            outputs = self._merged(items)
        except BaseException as e:  # every request of the batch learns of it
            self._answer(items, [e] * len(items))
            self._hand_over(False)
            raise
        answers = self._answer(items, outputs, loop)
        return self._hand_over(loop is not None), answers

    def _is_full(self) -> bool:
        return self._rows >= self._max_batch

    def _take(self) -> list[_Item]:
        """The next batch, first come first (under the lock): at least one request,
        and no more than max_batch rows."""
        pending = self._pending
        taken = [pending.popleft()]
        rows = taken[0].batch
        while pending and rows + pending[0].batch <= self._max_batch:
            item = pending.popleft()
            taken.append(item)
            rows += item.batch
        self._rows -= rows
        return taken

    def _hand_over(self, keep: bool) -> bool:
        """The lead goes to the first waiting thread's request, else to the event loop
        (only coroutines wait; True: ``keep``, the loop's leader leads again), else no
        one leads until the next request."""
        with self._lock:
            if not self._pending:
                self._leading = False
                return False
            heir = next((item for item in self._pending if item.wake is not None), None)
            if heir is not None:
                heir.lead = True
            elif keep:
                return True
            else:
                loop = self._pending[0].loop
        if heir is not None:
            heir.wake.release()
            return False
        try:
            loop.call_soon_threadsafe(self._lead_on_loop, loop)
        except RuntimeError as e:  # the loop is closed: nobody can lead there
            self._fail_pending(e)
        return False

    def _fail_pending(self, error: BaseException) -> None:
        with self._lock:
            items = list(self._pending)
            self._pending.clear()
            self._rows = 0
            self._leading = False
        self._answer(items, [error] * len(items))

    def _answer(
        self, items: list[_Item], outputs: list[Any], here: asyncio.AbstractEventLoop | None = None
    ) -> list:
        """Hands each request its outputs or error: threads directly, coroutines on
        their loop (one call per loop); those of loop ``here`` are returned instead."""
        settle: dict[asyncio.AbstractEventLoop, list] = {}
        for item, output in zip(items, outputs, strict=True):
            if item.wake is not None:
                if isinstance(output, BaseException):
                    item.error = output
                else:
                    item.output = output
                item.wake.release()
            else:
                settle.setdefault(item.loop, []).append((item.future, output))
        mine = settle.pop(here, []) if here is not None else []
        for loop, answers in settle.items():
            # A closed loop: nobody waits there any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, answers)
        return mine

    # --- the merged call ---------------------------------------------------------------------

    def _merged(self, items: list[_Item]) -> list[dict[str, np.ndarray] | Exception]:
        """Each item's outputs, or the error its own rows raise."""
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


def _close_window(window: asyncio.Future) -> None:
    if not window.done():
        window.set_result(None)


def _settle(answers: list[tuple[asyncio.Future, Any]]) -> None:
    """Sets each waiting coroutine's future (on its loop); one whose request was
    cancelled meanwhile is skipped."""
    for future, output in answers:
        if future.done():
            continue
        if isinstance(output, BaseException):
            future.set_exception(output)
        else:
            future.set_result(output)
