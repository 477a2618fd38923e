"""Request batching in process, on the event loop (where both transports run requests):
merged calls, each request's own rows, the window, max_batch, the leader leading again
while requests wait, and a leader cancelled by the loop's shutdown. Errors of one
request's rows: tests/runtimes/serving/test_core.py."""

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


def test_concurrent_requests_merge_into_one_call_in_the_inference_thread(policy):
    run = _Counted(policy)
    batches: list[int] = []
    requests = [(_inputs([1] * (i + 1), offset=i), i + 1) for i in range(6)]
    with ThreadPoolExecutor(1, thread_name_prefix="infer") as executor:
        batcher = Batcher(run, 0.3, 64, executor, on_batch=batches.append)

        async def together():
            return await asyncio.wait_for(asyncio.gather(*(batcher(*r) for r in requests)), 20)

        answers = asyncio.run(together())
    assert run.calls == [21] and batches == [21]  # one call for the 6 requests' rows
    assert {name.split("_")[0] for name in run.threads} == {"infer"}  # off the loop
    for (full, _), answer in zip(requests, answers, strict=True):
        np.testing.assert_array_equal(answer["action"], policy.action_flat(full)["action"])


def test_the_window_is_waited_and_ends_early_at_max_batch(policy):
    with ThreadPoolExecutor(1) as executor:
        run = _Counted(policy)
        batcher = Batcher(run, 0.2, 64, executor)
        started = time.monotonic()
        asyncio.run(asyncio.wait_for(batcher(_inputs([1]), 1), 20))
        assert time.monotonic() - started >= 0.2  # alone, it waited the whole window
        # A request after the window closed goes into a call of its own.
        asyncio.run(asyncio.wait_for(batcher(_inputs([1, 1]), 2), 20))
        assert run.calls == [1, 2]

        run = _Counted(policy)
        batcher = Batcher(run, 30.0, 4, executor)

        async def two_requests():
            return await asyncio.gather(*(batcher(_inputs([1, 1]), 2) for _ in range(2)))

        started = time.monotonic()
        answers = asyncio.run(asyncio.wait_for(two_requests(), 20))
        assert time.monotonic() - started < 10  # 4 rows: the 30 s window ended there
        assert run.calls == [4] and all(isinstance(a, dict) for a in answers)

        run = _Counted(policy)
        batcher = Batcher(run, 30.0, 4, executor)

        async def one_then_the_rest():
            first = asyncio.ensure_future(batcher(_inputs([1]), 1))
            await asyncio.sleep(0.2)  # its leader waits in its window
            return await asyncio.gather(first, batcher(_inputs([1, 1, 1]), 3))

        started = time.monotonic()
        answers = asyncio.run(asyncio.wait_for(one_then_the_rest(), 20))
        assert time.monotonic() - started < 10  # the late request filled the batch
        assert run.calls == [4] and all(isinstance(a, dict) for a in answers)


def test_batches_keep_to_max_batch_and_answer_every_row_under_load(policy):
    """Eight clients, each sending its next request when answered, over many rounds:
    every call within max_batch, every row run exactly once, every request answered
    with its own rows (the leader leads again while requests wait)."""
    run = _Counted(policy, delay=0.002)
    rng = np.random.default_rng(3)
    sizes = [int(s) for s in rng.integers(1, 6, size=48)]
    requests = [(_inputs([1] * n, offset=i), n) for i, n in enumerate(sizes)]
    with ThreadPoolExecutor(1) as executor:
        batcher = Batcher(run, 0.0, 8, executor)

        async def client(i: int) -> list:
            return [await batcher(*requests[j]) for j in range(i, 48, 8)]

        async def clients():
            return await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(8))), 20)

        per_client = asyncio.run(clients())
    assert all(rows <= 8 for rows in run.calls), run.calls
    assert sum(run.calls) == sum(sizes)
    assert len(run.calls) < len(sizes)  # some requests were merged
    answers = {}
    for i, client_answers in enumerate(per_client):
        answers.update(zip(range(i, 48, 8), client_answers, strict=True))
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
