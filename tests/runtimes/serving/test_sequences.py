"""The server-held sequence store in-process: start, carry, end, evict idle, refuse past max.

A stand-in "policy" whose next state is its state plus the observation (so the state a
step saw is visible in its output) drives ``Sequences`` directly; the real server
with real clients is tests/runtimes/serving/test_protocols.py.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from runtimes.serving.sequences import Sequences, parse_flags
from runtimes.serving.signatures import Signature, TensorInfo
from toolkit.errors import ErrorKind, ServingError

F32 = np.dtype(np.float32)
SIGNATURE = Signature(
    "serving_default",
    [
        TensorInfo("observation", F32, (None, 2)),
        TensorInfo("step_type", np.dtype(np.int32), (None,), required=False),
        TensorInfo("policy_state/h", F32, (None, 2), required=False),
    ],
    [TensorInfo("action", F32, (None, 2)), TensorInfo("next_state/h", F32, (None, 2))],
    True,
    run=None,
)


def _initial():
    return {"policy_state/h": np.full((1, 2), 10.0, np.float32)}


async def _run(arrays):
    state = arrays["policy_state/h"] + arrays["observation"]
    return {"action": state.copy(), "next_state/h": state}


def _step(store, sid, value, start=False, end=False, model="m"):
    flags = parse_flags({"sequence_id": sid, "sequence_start": start, "sequence_end": end})
    arrays = {"observation": np.full((1, 2), value, np.float32)}
    out = asyncio.run(store.run(model, flags, SIGNATURE, arrays, _initial, _run))
    return float(out["action"][0, 0])


def test_state_carries_resets_on_start_and_drops_on_end():
    store = Sequences()
    assert _step(store, 1, 1.0, start=True) == 11.0
    assert _step(store, 1, 2.0) == 13.0
    assert _step(store, "other", 5.0, start=True) == 15.0  # string ids are their own
    assert _step(store, 1, 0.0, start=True) == 10.0  # start again: initial state
    assert _step(store, 1, 1.0, end=True) == 11.0
    assert len(store) == 1
    with pytest.raises(ServingError, match="sequence 1 of model m: unknown sequence") as e:
        _step(store, 1, 1.0)
    assert e.value.kind == ErrorKind.NOT_FOUND
    # Ids are per model.
    with pytest.raises(ServingError, match="unknown sequence"):
        _step(store, "other", 1.0, model="n")


def test_idle_sequences_are_evicted_and_new_ones_past_max_refused():
    store = Sequences(idle_seconds=0.2, max_sequences=2)
    _step(store, 1, 0.0, start=True)
    _step(store, 2, 0.0, start=True)
    with pytest.raises(ServingError, match=r"holds 2 sequences, its --max-sequences") as e:
        _step(store, 3, 0.0, start=True)
    assert e.value.kind == ErrorKind.UNAVAILABLE
    time.sleep(0.3)
    assert _step(store, 3, 0.0, start=True) == 10.0  # 1 and 2 were evicted
    with pytest.raises(ServingError, match="unknown sequence"):
        _step(store, 1, 0.0)


def test_state_inputs_and_batches_are_refused_with_a_sequence():
    store = Sequences()
    flags = parse_flags({"sequence_id": 4, "sequence_start": True})
    arrays = {"observation": np.zeros((1, 2), np.float32), "policy_state/h": np.zeros((1, 2))}
    with pytest.raises(ServingError, match="the server holds the state, got policy_state/h"):
        asyncio.run(store.run("m", flags, SIGNATURE, arrays, _initial, _run))
    arrays = {"observation": np.zeros((3, 2), np.float32)}
    with pytest.raises(ServingError, match="observation: expected a batch of 1"):
        asyncio.run(store.run("m", flags, SIGNATURE, arrays, _initial, _run))
    assert len(store) == 0


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"sequence_id": 1.5}, "sequence_id: expected an integer or a string"),
        ({"sequence_id": True}, "sequence_id: expected an integer or a string"),
        ({"sequence_id": 3, "sequence_start": "yes"}, "sequence_start: expected true or false"),
        ({"sequence_end": True}, "sequence_end: given without a sequence_id"),
    ],
)
def test_bad_flags_are_named(parameters, message):
    with pytest.raises(ServingError, match=message):
        parse_flags(parameters)


def test_no_sequence_without_an_id_or_with_id_zero():
    assert parse_flags({}) is None
    assert parse_flags({"sequence_id": 0}) is None
