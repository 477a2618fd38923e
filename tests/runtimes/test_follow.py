"""follow(): a running policy takes each new checkpoint a learner writes, atomically."""

from __future__ import annotations

import logging
import shutil
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

import runtimes
from exporters import export_policy
from runtimes.follow import follow
from tests.checkpoint_checks import assert_reader_matches_tf, declare_shape
from tests.exported_bundles import tf_policy_for
from tests.subprocess_utils import run_python
from toolkit import bundle as bundle_lib
from toolkit import distribution_families as families
from toolkit import nest
from toolkit.specs import tensor_spec
from toolkit.trajectories.time_step import TimeStep

CASE = "tf/actor/action_network"  # deterministic continuous actions: each weight set differs


def _wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


def _time_step(policy, batch=3, seed=0):
    spec = tensor_spec.to_array_spec(policy.time_step_spec)
    rng = np.random.default_rng(seed)
    observation = nest.map_structure(lambda s: s.sample(rng, outer_dims=(batch,)), spec.observation)
    return TimeStep(
        np.ones(batch, np.int32),
        np.zeros(batch, np.float32),
        np.ones(batch, np.float32),
        observation,
    )


def _live_loc(policy, time_step):
    params, _, _ = policy.distribution_params(
        nest.map_structure(tf.constant, time_step), policy.get_initial_state(3)
    )
    return np.concatenate(
        [np.asarray(v).ravel() for _, v in families.flatten_params(params, "distribution")]
    )


def _runtime_loc(policy, time_step):
    return np.concatenate(
        [
            np.asarray(v).ravel()
            for d in nest.flatten(policy.distribution_params(time_step).action)
            for v in d.parameters().values()
        ]
    )


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """A bundle exported from fresh weights (zero biases) and the live policy."""
    policy = tf_policy_for(CASE)
    for variable in policy.variables():
        if len(variable.shape) == 1:
            variable.assign(tf.zeros_like(variable))
    path = tmp_path_factory.mktemp("follow") / "bundle"
    export_policy(policy, path, train_step=0)
    return path, policy


def _weight_sets(policy, count):
    rng = np.random.default_rng(7)
    return [
        [rng.normal(0, 0.5, v.shape).astype(v.dtype.as_numpy_dtype) for v in policy.variables()]
        for _ in range(count)
    ]


@pytest.mark.slow
def test_four_threads_act_while_checkpoints_land(fresh, tmp_path):
    """Every answer given while checkpoints land equals the answer of exactly one
    checkpoint's weights (or the export's): no call sees a mix."""
    bundle, live = fresh
    policy = runtimes.load_policy(bundle, "onnx")
    time_step = _time_step(live)
    weight_sets = _weight_sets(live, 8)
    original = [v.numpy() for v in live.variables()]
    expected = [_live_loc(live, time_step)]
    for values in weight_sets:
        for variable, value in zip(live.variables(), values, strict=True):
            variable.assign(value)
        expected.append(_live_loc(live, time_step))
    for variable, value in zip(live.variables(), original, strict=True):
        variable.assign(value)
    step = tf.Variable(0, dtype=tf.int64)
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(policy=live, train_step=step), str(tmp_path / "run"), max_to_keep=3
    )
    answers: list[np.ndarray] = []
    stop = threading.Event()

    def act():
        mine = []
        while not stop.is_set():
            mine.append(_runtime_loc(policy, time_step))
        answers.extend(mine)

    threads = [threading.Thread(target=act) for _ in range(4)]
    for thread in threads:
        thread.start()
    with follow(policy, tmp_path / "run", interval=0.02) as follower:
        for i, values in enumerate(weight_sets, start=1):
            for variable, value in zip(live.variables(), values, strict=True):
                variable.assign(value)
            step.assign(i * 100)
            prefix = manager.save(checkpoint_number=i * 100)
            assert_reader_matches_tf(prefix)
            assert _wait_for(lambda i=i: policy.train_step == i * 100, 20), follower
        stop.set()
        for thread in threads:
            thread.join()
    assert not follower.running
    assert follower.applied == len(weight_sets)
    matched = set()
    for answer in answers:
        hits = [k for k, want in enumerate(expected) if np.allclose(answer, want, atol=1e-5)]
        assert len(hits) == 1, "an answer matched no single checkpoint's weights"
        matched.add(hits[0])
    assert len(answers) > 100 and len(matched) >= 3, (len(answers), matched)
    np.testing.assert_allclose(_runtime_loc(policy, time_step), expected[-1], atol=1e-5)


@pytest.mark.slow
def test_tf_backend_follows_and_a_corrupt_checkpoint_is_logged_once(fresh, tmp_path, caplog):
    bundle, live = fresh
    policy = runtimes.load_policy(bundle, "tf")
    time_step = _time_step(live)
    (values,) = _weight_sets(live, 1)
    original = [v.numpy() for v in live.variables()]
    for variable, value in zip(live.variables(), values, strict=True):
        variable.assign(value)
    want = _live_loc(live, time_step)
    step = tf.Variable(250, dtype=tf.int64)
    run = tmp_path / "policies" / "checkpoints"
    prefix = tf.train.Checkpoint(policy=live, train_step=step).write(
        str(run / "policy_checkpoint_0000000250" / "variables" / "variables")
    )
    for variable, value in zip(live.variables(), original, strict=True):
        variable.assign(value)
    # A newer checkpoint whose data is corrupt: logged once, skipped; 250 is applied.
    bad = run / "policy_checkpoint_0000000500" / "variables"
    shutil.copytree(run / "policy_checkpoint_0000000250" / "variables", bad)
    data = next(bad.glob("variables.data-*"))
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    assert prefix
    with caplog.at_level(logging.WARNING, logger="runtimes.follow"):
        follower = follow(policy, tmp_path, interval=0.05)
        try:
            assert _wait_for(lambda: policy.train_step == 250, 30), follower
            time.sleep(0.3)  # several more polls: still one warning
        finally:
            follower.stop()
    np.testing.assert_allclose(_runtime_loc(policy, time_step), want, atol=1e-5)
    warnings = [r for r in caplog.records if "skipping checkpoint" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    assert "policy_checkpoint_0000000500" in warnings[0].getMessage()
    assert "crc32c mismatch" in warnings[0].getMessage()


def test_follow_waits_for_an_empty_folder_and_stops(fresh, tmp_path):
    bundle, _ = fresh
    policy = runtimes.load_policy(bundle, "onnx")
    with follow(policy, tmp_path / "not-yet", interval=0.05) as follower:
        time.sleep(0.15)
        assert follower.running and follower.applied == 0
    assert not follower.running
    assert policy.train_step == 0
    with pytest.raises(ValueError, match="interval: expected a positive number"):
        follow(policy, tmp_path, interval=0)


def test_a_huge_declared_variable_costs_a_follower_nothing(fresh, tmp_path):
    """A checkpoint whose index declares 1.5 GB for a mapped variable (a sparse data file)
    took a following server to 1.5 GB RSS; it is now refused from its index alone. The
    follower runs TF-free in its own process, whose peak RSS is measured (Linux's
    /proc/self/status)."""
    bundle, live = fresh
    run = tmp_path / "policies" / "checkpoints"
    prefix = tf.train.Checkpoint(policy=live, train_step=tf.Variable(300, dtype=tf.int64)).write(
        str(run / "policy_checkpoint_0000000300" / "variables" / "variables")
    )
    variable = bundle_lib.read_manifest(bundle)["onnx"]["weights"]["variables"][0]
    key = "/".join(["policy", *variable["paths"][0], ".ATTRIBUTES", "VARIABLE_VALUE"])
    declared = (1536 << 20) // 4 // variable["shape"][-1]
    assert declare_shape(prefix, key, (declared, variable["shape"][-1])) >= 1500 << 20
    result = run_python(
        f"""
        import logging
        import runtimes
        from runtimes.follow import follow
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        policy = runtimes.load_policy({str(bundle)!r}, "onnx")
        follower = follow(policy, {str(tmp_path)!r}, interval=60)
        follower.poll()  # a second try: the checkpoint is unchanged, so it is logged
        follower.stop()
        # VmHWM: this process's peak RSS (ru_maxrss would count the forking parent's).
        status = open("/proc/self/status").read()
        peak_kib = int(status.split("VmHWM:")[1].split()[0])
        print(policy.train_step, peak_kib >> 10)
        """,
        without_tensorflow=True,
    )
    assert result.returncode == 0, result.stderr
    step, peak_mib = map(int, result.stdout.split())
    assert step == 0  # kept the export's weights
    assert peak_mib < 400, f"peak RSS {peak_mib} MiB"
    assert f"variable {variable['name']}: expected float32 {variable['shape']}, got" in (
        result.stderr
    )
