"""serve --follow: the served version takes a learner's checkpoints in place, TF-free."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tensorflow as tf

from exporters.export import export_policy
from runtimes.serving.publish import publish
from tests.contract import cases_runtime as cr
from tests.runtimes.serving import bundles
from tests.runtimes.serving.server_process import ServerProcess, wait_until
from toolkit.cli.serve import follow_folders
from toolkit.errors import SpecMismatchError
from toolkit.trajectories.time_step import TimeStep

OBSERVATIONS = np.random.default_rng(11).normal(size=(16, 4)).astype(np.float32)


def _tf_actions(policy) -> list:
    """The live TF policy's greedy actions: the figures the server must give."""
    n = len(OBSERVATIONS)
    time_step = TimeStep(tf.ones(n, tf.int32), tf.zeros(n), tf.ones(n), tf.constant(OBSERVATIONS))
    return policy.action(time_step).action.numpy().tolist()


def _predict(url: str) -> list:
    answer = httpx.post(
        f"{url}/v1/models/m:predict", json={"instances": OBSERVATIONS.tolist()}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["predictions"]


def _train_step(url: str) -> int:
    body = {"signature_name": "get_train_step"}
    answer = httpx.post(f"{url}/v1/models/m:predict", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()["outputs"]


def _metric_step(url: str, version: int) -> float | None:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    match = re.search(
        rf'policy_serving_model_train_step{{model="m",version="{version}"}} (\S+)', text
    )
    return None if match is None else float(match.group(1))


@pytest.mark.slow
def test_follow_applies_a_training_runs_checkpoints_and_moves_with_the_version(tmp_path):
    live = cr.live("greedy_q")  # train step 7 in its bundle
    base, run = tmp_path / "base", tmp_path / "run"
    publish(cr.bundle("greedy_q"), base, 1)
    step = tf.Variable(0, dtype=tf.int64)
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(policy=live, train_step=step),
        str(run / "policy_checkpoints"),
        max_to_keep=5,
    )

    def save(seed: int, train_step: int) -> list:
        cr.set_weights(live, seed)
        step.assign(train_step)
        manager.save(checkpoint_number=train_step)
        return _tf_actions(live)

    # Older than the version's own train step: following never goes back to it.
    older = save(21, 5)
    original = _tf_actions(cr.live("greedy_q"))
    assert older != original  # the checks below could fail
    with ServerProcess(
        str(base),
        "--name",
        "m",
        "--follow",
        str(run),
        "--follow-seconds",
        "0.05",
        "--poll-seconds",
        "0.1",
    ) as server:
        server.wait_for_log(r"model m: version 1 \(train step 7\) follows .*run every 0.05 s")
        assert _train_step(server.url) == 7
        assert _predict(server.url) == original
        assert _metric_step(server.url, 1) == 7

        newer = save(22, 100)
        assert newer != original
        wait_until(lambda: _train_step(server.url) == 100)
        assert _predict(server.url) == newer
        assert _metric_step(server.url, 1) == 100
        server.wait_for_log(r"model m: version 1 took checkpoint .*ckpt-100 \(train step 100\)")

        # A new version takes over the following, and takes the newer checkpoint at once.
        publish(bundles.greedy_q_v2(), base, 2)  # train step 8
        server.wait_for_log(r"model m: version 1 no longer follows")
        wait_until(lambda: _train_step(server.url) == 100)
        assert _predict(server.url) == newer
        assert _metric_step(server.url, 2) == 100
        latest = save(23, 200)
        wait_until(lambda: _train_step(server.url) == 200)
        assert _predict(server.url) == latest

        # A version published beyond the run's newest checkpoint keeps its own weights.
        ahead = cr.set_weights(cr.live("greedy_q"), 24)
        publish(export_policy(ahead, tmp_path / "ahead", train_step=1000, formats=("onnx",)), base)
        server.wait_for_log(r"model m: version 1000 \(train step 1000\) follows")
        assert _train_step(server.url) == 1000
        assert _predict(server.url) == _tf_actions(ahead)
        assert "version 1000 took checkpoint" not in server.log
    assert server.process.returncode == 0


@pytest.mark.slow
def test_follow_waits_out_an_unreadable_folder(tmp_path):
    """DIR unreadable at start: the server follows it once it can be read; unreadable
    again while running: one line per change, no traceback, and it follows on."""
    live = cr.live("greedy_q")  # train step 7 in its bundle
    base, run = tmp_path / "base", tmp_path / "run"
    publish(cr.bundle("greedy_q"), base, 1)
    run.mkdir()
    run.chmod(0)
    step = tf.Variable(0, dtype=tf.int64)
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(policy=live, train_step=step),
        str(run / "policy_checkpoints"),
        max_to_keep=5,
    )

    def save(seed: int, train_step: int) -> list:
        cr.set_weights(live, seed)
        step.assign(train_step)
        manager.save(checkpoint_number=train_step)
        return _tf_actions(live)

    args = ["--name", "m", "--follow", str(run), "--follow-seconds", "0.05"]
    args += ["--poll-seconds", "0"]
    try:
        with ServerProcess(str(base), *args, permissions=True) as server:
            server.wait_for_log(r"cannot read .*run \(Permission denied\); checking again")
            newer = save(31, 100)  # the tests' process may write there
            time.sleep(0.5)
            assert _train_step(server.url) == 7
            run.chmod(0o755)
            wait_until(lambda: _train_step(server.url) == 100)
            assert _predict(server.url) == newer
            run.chmod(0)
            wait_until(lambda: server.log.count("cannot read") == 2)
            latest = save(32, 200)
            time.sleep(0.5)  # ten checks of the unreadable folder
            run.chmod(0o755)
            wait_until(lambda: _train_step(server.url) == 200)
            assert _predict(server.url) == latest
    finally:
        run.chmod(0o755)
    log = server.log
    assert log.count("cannot read") == 2, log
    assert log.count("can be read again") == 2, log
    assert "Traceback" not in log, log


def test_follow_folders_name_their_model():
    assert follow_folders(["runs/a"], ["m"]) == {"m": Path("runs/a")}
    folders = follow_folders(["a=runs/x", "b=runs/y"], ["a", "b"])
    assert {k: str(v) for k, v in folders.items()} == {"a": "runs/x", "b": "runs/y"}
    # "=" in a folder's name is not a model name when no model is called that.
    assert str(follow_folders(["lr=0.1/run"], ["m"])["m"]) == "lr=0.1/run"
    with pytest.raises(SpecMismatchError, match=r"--follow: expected NAME=DIR with NAME one of"):
        follow_folders(["runs/x"], ["a", "b"])
    with pytest.raises(SpecMismatchError, match=r"--follow: expected one folder for model 'a'"):
        follow_folders(["a=x", "a=y"], ["a", "b"])
