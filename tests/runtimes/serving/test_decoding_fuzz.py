"""The request reader against random JSON: it answers or names the problem, never crashes.

Runs in-process (no HTTP): random bodies go through TF Serving's REST codec's
``decode`` (in both of its JSON parsers: inline, and in slices for large bodies) and,
when accepted, the core's ``run`` and the codec's ``encode``; anything but a
ServingError or another ToolkitError would be a 500 from the server.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from runtimes.serving import tfserving_rest
from runtimes.serving.core import CoreOptions, Limits, build_core
from runtimes.serving.models import ModelConfig
from tests.contract import cases_runtime as cr
from toolkit.errors import ServingError, ToolkitError

NAMES = ["observation", "step_type", "reward", "discount", "policy_state/0/0", "x", "batch_size"]


def _value(rng: np.random.Generator, depth: int = 0):
    kind = rng.integers(0, 9 if depth < 4 else 5)
    if kind == 0:
        return float(rng.normal() * 10.0 ** int(rng.integers(-3, 40)))
    if kind == 1:
        return int(rng.integers(-(2**40), 2**40))
    if kind == 2:
        return [None, True, "a", float("nan"), float("inf")][rng.integers(0, 5)]
    if kind in (3, 4):
        return 2**70 if kind == 3 else -1
    if kind in (5, 6, 7):
        size = int(rng.integers(0, 6))
        if rng.random() < 0.5:  # rectangular numbers, the usual case
            shape = tuple(int(s) for s in rng.integers(0, 6, size=rng.integers(0, 4)))
            return rng.normal(size=shape).tolist()
        return [_value(rng, depth + 1) for _ in range(size)]
    return {NAMES[rng.integers(0, len(NAMES))]: _value(rng, depth + 1) for _ in range(3)}


def _near_valid(rng: np.random.Generator, signature: str) -> dict:
    """A well-formed request with one thing perhaps changed."""
    batch = int(rng.integers(1, 20))
    inputs = {"observation": rng.normal(size=(batch, 4)).tolist()}
    if rng.random() < 0.5:
        inputs["step_type"] = rng.integers(0, 3, size=batch).tolist()
    if rng.random() < 0.5:
        inputs["policy_state/0/0"] = rng.normal(size=(batch, 5)).tolist()
        inputs["policy_state/0/1"] = rng.normal(size=(batch, 5)).tolist()
    if rng.random() < 0.3:
        inputs[NAMES[rng.integers(0, len(NAMES))]] = _value(rng)
    if rng.random() < 0.5:
        return {"signature_name": signature, "inputs": inputs}
    rows = [
        {k: v[i] if isinstance(v, list) and i < len(v) else v for k, v in inputs.items()}
        for i in range(batch)
    ]
    return {"signature_name": signature, "instances": rows}


def _body(rng: np.random.Generator, signature: str):
    if rng.random() < 0.4:
        return json.loads(json.dumps(_near_valid(rng, signature)))
    body: dict = {}
    if rng.random() < 0.8:
        body["signature_name"] = signature
    key = ["instances", "inputs", "both", "none"][rng.integers(0, 4)]
    if key in ("instances", "both"):
        body["instances"] = [_value(rng) for _ in range(int(rng.integers(0, 4)))]
        if rng.random() < 0.5:
            body["instances"] = [
                {NAMES[rng.integers(0, len(NAMES))]: _value(rng) for _ in range(2)}
                for _ in range(int(rng.integers(1, 4)))
            ]
    if key in ("inputs", "both"):
        body["inputs"] = (
            _value(rng)
            if rng.random() < 0.3
            else {
                NAMES[rng.integers(0, len(NAMES))]: _value(rng)
                for _ in range(int(rng.integers(0, 4)))
            }
        )
    return json.loads(json.dumps(body))


@pytest.mark.parametrize("kind", ["greedy_q", "rnn/actor_distribution"])
def test_random_bodies_are_answered_or_named(kind):
    options = CoreOptions([ModelConfig("m", cr.bundle(kind))], seed=0, limits=Limits(max_batch=16))
    core = build_core(options)
    loop = asyncio.new_event_loop()
    try:
        core.registry.poll()
        loaded = core.resolve("m", None, None)
        codec = tfserving_rest.make(core)
        rng = np.random.default_rng(0)
        accepted = refused = 0
        for i in range(3000):
            name = list(loaded.signatures)[i % len(loaded.signatures)]
            raw = json.dumps(_body(rng, name)).encode()
            try:
                signature, arrays, rows = codec.decode(raw, loaded, sliced=i % 2 == 1)
                outputs = loop.run_until_complete(core.run(signature, arrays))
                tfserving_rest.encode(outputs, rows)
                accepted += 1
            except ServingError:
                refused += 1
            except ToolkitError as e:  # the policy's own check (answered with 400)
                assert str(e), raw
                refused += 1
    finally:
        loop.close()
        core.close()
    assert refused > 300 and accepted > 300, (accepted, refused)
