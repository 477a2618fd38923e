"""Request batching in process: threads (gRPC's side) and coroutines (REST's) feed one
batcher; merged calls, each request's own rows and errors, the window, max_batch."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import runtimes
from runtimes.serving.batching import Batcher
from tests.contract import cases_runtime as cr
from toolkit.errors import SpecMismatchError


@pytest.fixture(scope="module")
def policy():
    return runtimes.load_policy(cr.bundle("greedy_q"), "onnx")


def _inputs(step_types: list[int], offset: float = 0.0) -> dict[str, np.ndarray]:
    n = len(step_types)
    observation = np.linspace(-1, 1, n * 4, dtype=np.float32).reshape(n, 4) + offset
    return {
        "step_type": np.array(step_types, np.int32),
        "reward": np.zeros(n, np.float32),
        "discount": np.ones(n, np.float32),
        "observation": observation,
    }


class _Counted:
    """The policy's action, counting calls and the rows of each (a real policy)."""

    def __init__(self, policy, delay: float = 0.0):
        self.policy = policy
        self.delay = delay
        self.calls: list[int] = []
        self.threads: set[str] = set()

    def __call__(self, full):
        self.calls.append(len(full["step_type"]))
        self.threads.add(threading.current_thread().name)
        if self.delay:
            time.sleep(self.delay)  # a slow call: the next requests gather meanwhile
        return self.policy.action_flat(full)


def _in_threads(fn, args: list) -> list:
    """``fn(*a)`` for each ``a`` in threads started together; results or errors, in order."""
    results: list = [None] * len(args)
    start = threading.Barrier(len(args))

    def call(i: int) -> None:
        start.wait()
        try:
            results[i] = fn(*args[i])
        except Exception as e:
            results[i] = e

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(args))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def test_requests_from_threads_merge_into_one_call_led_by_a_caller(policy):
    run = _Counted(policy)
    batches: list[int] = []
    requests = [(_inputs([1] * (i + 1), offset=i), i + 1) for i in range(6)]
    with ThreadPoolExecutor(1, thread_name_prefix="infer") as executor:
        batcher = Batcher(run, 0.3, 64, executor, on_batch=batches.append)
        answers = _in_threads(batcher.run_blocking, requests)
    assert run.calls == [21] and batches == [21]  # one call for the 6 requests' rows
    # Run in one of the callers' threads, not the inference thread (no hand-off).
    assert not any(name.startswith("infer") for name in run.threads)
    for (full, _), answer in zip(requests, answers, strict=True):
        np.testing.assert_array_equal(answer["action"], policy.action_flat(full)["action"])


@pytest.mark.parametrize("coroutine_first", [True, False])
def test_threads_and_coroutines_merge_into_one_call(policy, coroutine_first):
    """gRPC calls (threads) and REST requests (coroutines on the loop) of one version
    share a merged call, each answered with its own rows, whichever side leads."""
    run = _Counted(policy)
    threaded = [(_inputs([1, 1], offset=i), 2) for i in range(3)]
    awaited = [_inputs([1], offset=10 + i) for i in range(3)]
    with ThreadPoolExecutor(1) as executor:
        batcher = Batcher(run, 0.3, 64, executor)

        async def on_loop():
            if coroutine_first:
                tasks = [asyncio.ensure_future(batcher(a, 1)) for a in awaited]
                await asyncio.sleep(0.02)  # the loop's leader is waiting its window
                threads = await asyncio.to_thread(_in_threads, batcher.run_blocking, threaded)
                return threads, await asyncio.gather(*tasks)
            threads = asyncio.ensure_future(
                asyncio.to_thread(_in_threads, batcher.run_blocking, threaded)
            )
            await asyncio.sleep(0.05)  # a thread leads and waits its window
            answers = await asyncio.gather(*[batcher(a, 1) for a in awaited])
            return await threads, answers

        from_threads, from_loop = asyncio.run(on_loop())
    assert run.calls == [9]
    for (full, _), answer in zip(threaded, from_threads, strict=True):
        np.testing.assert_array_equal(answer["action"], policy.action_flat(full)["action"])
    for full, answer in zip(awaited, from_loop, strict=True):
        np.testing.assert_array_equal(answer["action"], policy.action_flat(full)["action"])


def test_one_threads_bad_rows_fail_only_its_own_request(policy):
    run = _Counted(policy)
    with ThreadPoolExecutor(1) as executor:
        batcher = Batcher(run, 0.3, 64, executor)
        requests = [(_inputs([1, 1]), 2), (_inputs([1, 3]), 2), (_inputs([0]), 1)]
        good, bad, first = _in_threads(batcher.run_blocking, requests)
    assert run.calls[0] == 5  # merged; then each request alone, to its own answer
    assert isinstance(bad, SpecMismatchError)
    expected = "step_type: expected a step type in {0: FIRST, 1: MID, 2: LAST}, got 3"
    assert f"{expected} at index (1,)" in str(bad)
    np.testing.assert_array_equal(good["action"], policy.action_flat(_inputs([1, 1]))["action"])
    np.testing.assert_array_equal(first["action"], policy.action_flat(_inputs([0]))["action"])


def test_the_window_is_waited_and_ends_early_at_max_batch(policy):
    with ThreadPoolExecutor(1) as executor:
        run = _Counted(policy)
        batcher = Batcher(run, 0.2, 64, executor)
        started = time.monotonic()
        batcher.run_blocking(_inputs([1]), 1)
        assert time.monotonic() - started >= 0.2  # alone, it waited the whole window
        # A request after the window closed goes into a call of its own.
        batcher.run_blocking(_inputs([1, 1]), 2)
        assert run.calls == [1, 2]

        run = _Counted(policy)
        batcher = Batcher(run, 30.0, 4, executor)
        started = time.monotonic()
        answers = _in_threads(batcher.run_blocking, [(_inputs([1, 1]), 2)] * 2)
        assert time.monotonic() - started < 10  # 4 rows: the 30 s window ended there
        assert run.calls == [4] and all(isinstance(a, dict) for a in answers)


def test_the_event_loops_window_ends_early_at_max_batch(policy):
    """A coroutine leader (REST's side) stops waiting its window once max_batch rows are
    in, whether coroutines or a thread brought them."""
    with ThreadPoolExecutor(1) as executor:
        run = _Counted(policy)
        batcher = Batcher(run, 30.0, 4, executor)

        async def two_coroutines():
            return await asyncio.gather(*(batcher(_inputs([1, 1]), 2) for _ in range(2)))

        started = time.monotonic()
        answers = asyncio.run(asyncio.wait_for(two_coroutines(), 20))
        assert time.monotonic() - started < 10  # 4 rows: the 30 s window ended there
        assert run.calls == [4] and all(isinstance(a, dict) for a in answers)

        run = _Counted(policy)
        batcher = Batcher(run, 30.0, 4, executor)

        async def a_coroutine_then_a_thread():
            first = asyncio.ensure_future(batcher(_inputs([1]), 1))
            await asyncio.sleep(0.2)  # the coroutine leads and waits its window
            thread = asyncio.to_thread(batcher.run_blocking, _inputs([1, 1, 1]), 3)
            return await asyncio.gather(first, thread)

        started = time.monotonic()
        answers = asyncio.run(asyncio.wait_for(a_coroutine_then_a_thread(), 20))
        assert time.monotonic() - started < 10
        assert run.calls == [4] and all(isinstance(a, dict) for a in answers)


def test_batches_keep_to_max_batch_and_answer_every_row_under_load(policy):
    """Threads and coroutines over many rounds: every call within max_batch, every row
    run exactly once, every request answered with its own rows (the lead handed over)."""
    run = _Counted(policy, delay=0.002)
    rng = np.random.default_rng(3)
    sizes = [int(s) for s in rng.integers(1, 6, size=48)]
    requests = [(_inputs([1] * n, offset=i), n) for i, n in enumerate(sizes)]
    with ThreadPoolExecutor(1) as executor:
        batcher = Batcher(run, 0.0, 8, executor)

        def thread_client(i: int) -> list:
            return [batcher.run_blocking(*requests[j]) for j in range(i, 24, 4)]

        async def on_loop():
            threads = asyncio.ensure_future(
                asyncio.to_thread(_in_threads, thread_client, [(i,) for i in range(4)])
            )
            answers = await asyncio.gather(*[batcher(*r) for r in requests[24:]])
            return await threads, answers

        from_threads, from_loop = asyncio.run(on_loop())
    assert all(rows <= 8 for rows in run.calls), run.calls
    assert sum(run.calls) == sum(sizes)
    assert len(run.calls) < len(sizes)  # some requests were merged
    answers = {}
    for i, client in enumerate(from_threads):
        answers.update(zip(range(i, 24, 4), client, strict=True))
    answers.update(zip(range(24, 48), from_loop, strict=True))
    for i, (full, _) in enumerate(requests):
        np.testing.assert_array_equal(answers[i]["action"], policy.action_flat(full)["action"])


def test_a_closed_inference_thread_fails_waiting_coroutines_instead_of_hanging(policy):
    executor = ThreadPoolExecutor(1)
    executor.shutdown()
    batcher = Batcher(_Counted(policy), 0.0, 8, executor)

    async def one():
        return await asyncio.wait_for(batcher(_inputs([1]), 1), 10)

    with pytest.raises(RuntimeError, match="after shutdown"):
        asyncio.run(one())


def test_a_cancelled_loop_leader_still_answers_every_waiting_request(policy):
    """The event loop's leader cancelled in its window (the loop shutting down): its
    batch still runs, and the requests left for later batches are led and answered."""
    run = _Counted(policy)
    with ThreadPoolExecutor(1) as executor:
        batcher = Batcher(run, 0.3, 2, executor)  # 3 requests of a row: two calls

        async def on_loop():
            requests = [asyncio.ensure_future(batcher(_inputs([1], 0), 1))]
            await asyncio.sleep(0.05)  # its leader waits in its window
            (leader,) = asyncio.all_tasks() - {asyncio.current_task(), *requests}
            requests += [asyncio.ensure_future(batcher(_inputs([1], i), 1)) for i in (1, 2)]
            await asyncio.sleep(0)  # they join
            leader.cancel()
            return await asyncio.wait_for(asyncio.gather(*requests), 20)

        answers = asyncio.run(on_loop())
    assert run.calls == [2, 1]
    for i, answer in enumerate(answers):
        want = policy.action_flat(_inputs([1], i))["action"]
        np.testing.assert_array_equal(answer["action"], want)
