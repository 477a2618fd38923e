"""Runtimes in use: loading, bad inputs and their messages, checkpoints, copies, threads.

Bundles come from tests.contract.cases_runtime (exported once per process).
"""

from __future__ import annotations

import json
import re
import shutil
import threading

import numpy as np
import pytest

import runtimes
from tests.contract import cases_runtime as cr
from tests.contract.case import first_time_step, sample_time_step
from tests.toolkit.manifests import rewrite_manifest
from toolkit import distribution_families as families
from toolkit import nest
from toolkit.errors import BundleError, PolicyError, SpecMismatchError, StructureError
from toolkit.trajectories import time_step as ts

BACKENDS = ("onnx", "tf")


def _time_step(policy, outer=(3,), seed=0, first=False):
    step = sample_time_step(policy.time_step_spec, outer, np.random.default_rng(seed))
    return first_time_step(step) if first else step


def _copy_bundle(kind, tmp_path):
    return shutil.copytree(cr.bundle(kind), tmp_path / "bundle")


def _edit_manifest(path, edit):
    manifest_path = path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    edit(manifest)
    manifest_path.write_text(json.dumps(manifest))


def _live_params(policy, time_step, state=()):
    params, next_state, info = policy.distribution_params(time_step, state)
    return [v.numpy() for _, v in families.flatten_params(params)], next_state, info


def _runtime_params(policy, time_step, state=()):
    step = policy.distribution_params(time_step, state)
    return [v for d in nest.flatten(step.action) for v in d.parameters().values()]


# --- loading ---------------------------------------------------------------------------


def test_auto_picks_onnx_and_reads_manifest_facts():
    policy = runtimes.load_policy(cr.bundle("greedy_q"))
    assert policy.backend == "onnx"
    assert policy.train_step == 7
    assert policy.metadata == {"kind": "greedy_q", "source": "tests"}
    policy.metadata["kind"] = "changed"  # a copy: the policy's own stays
    assert policy.metadata["kind"] == "greedy_q"
    assert "GreedyPolicy" in repr(policy)
    # The onnx file or the manifest path name the same bundle.
    by_file = runtimes.load_policy(cr.bundle("greedy_q") / "policy.onnx")
    assert by_file.bundle_dir == policy.bundle_dir


@pytest.mark.parametrize("backend", BACKENDS)
def test_unbatched_batched_and_nested_outer_dims_agree(backend):
    policy = cr.load("greedy_q", backend)
    batch = _time_step(policy, (2, 3), seed=1)
    nested = policy.action(batch).action
    assert nested.shape == (2, 3, 1) and nested.dtype == np.int32
    flat = policy.action(nest.map_structure(lambda a: a.reshape((6,) + a.shape[2:]), batch))
    np.testing.assert_array_equal(flat.action.reshape(2, 3, 1), nested)
    single = ts.TimeStep(*(np.asarray(a)[1, 2] for a in batch))
    np.testing.assert_array_equal(policy.action(single).action, nested[1, 2])
    assert policy.action(single).action.shape == (1,)


def test_float64_and_list_observations_are_converted_safely():
    policy = cr.load("actor/action_network", "onnx")
    time_step = _time_step(policy, (4,), seed=2)
    want = policy.action(time_step).action
    as_float64 = time_step._replace(observation=time_step.observation.astype(np.float64))
    np.testing.assert_array_equal(policy.action(as_float64).action, want)
    as_lists = time_step._replace(observation=time_step.observation.tolist())
    np.testing.assert_array_equal(policy.action(as_lists).action, want)


def test_validate_args_off_gives_the_same_actions():
    checked = cr.load("rnn/greedy_q", "onnx")
    trusted = runtimes.load_policy(cr.bundle("rnn/greedy_q"), validate_args=False)
    state_a, state_b = checked.get_initial_state(3), trusted.get_initial_state(3)
    for seed in range(3):
        time_step = _time_step(checked, (3,), seed=seed)
        a, b = checked.action(time_step, state_a), trusted.action(time_step, state_b)
        np.testing.assert_array_equal(a.action, b.action)
        state_a, state_b = a.state, b.state
    nest.map_structure(np.testing.assert_array_equal, state_a, state_b)


def test_an_edge_copy_with_only_manifest_and_onnx_loads(tmp_path):
    source = cr.bundle("greedy_q")
    edge = tmp_path / "edge"
    edge.mkdir()
    for name in ("manifest.json", "policy.onnx"):
        shutil.copy(source / name, edge / name)
    policy = runtimes.load_policy(edge)
    time_step = _time_step(policy)
    np.testing.assert_array_equal(
        policy.action(time_step).action, cr.load("greedy_q", "onnx").action(time_step).action
    )
    with pytest.raises(
        BundleError, match=r"file saved_model/.* listed in manifest.json is missing"
    ):
        runtimes.load_policy(edge, "tf")


# --- bad bundles -------------------------------------------------------------------------


def test_missing_bundle(tmp_path):
    with pytest.raises(BundleError, match=r"nope: no such bundle"):
        runtimes.load_policy(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match=r"empty: no manifest.json; not a policy-toolkit bundle"):
        runtimes.load_policy(tmp_path / "empty")


def test_corrupted_manifest(tmp_path):
    path = _copy_bundle("greedy_q", tmp_path)
    (path / "manifest.json").write_text('{"format": "policy-toolkit-bundle", ')
    with pytest.raises(BundleError, match=r"manifest.json: not valid JSON"):
        runtimes.load_policy(path)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            "flip",
            r"policy.onnx: expected sha256 [0-9a-f]{12}\.\.\., got [0-9a-f]{12}\.\.\. "
            r"\(the file was changed\)",
        ),
        (
            "truncate",
            r"policy.onnx: expected \d+ bytes, got \d+ \(the file was changed or "
            r"truncated\)",
        ),
        ("delete", r"file policy.onnx listed in manifest.json is missing"),
    ],
)
def test_tampered_onnx_file_is_refused(tmp_path, damage, message):
    path = _copy_bundle("greedy_q", tmp_path)
    model = path / "policy.onnx"
    data = bytearray(model.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
        model.write_bytes(bytes(data))
    elif damage == "truncate":
        model.write_bytes(bytes(data[:-10]))
    else:
        model.unlink()
    with pytest.raises(BundleError, match=message):
        runtimes.load_policy(path, "onnx")


def test_tampered_saved_model_is_refused_by_the_tf_backend(tmp_path):
    path = _copy_bundle("greedy_q", tmp_path)
    variables = next((path / "saved_model" / "variables").glob("variables.data-*"))
    data = bytearray(variables.read_bytes())
    data[-1] ^= 0x01
    variables.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"variables.data-.*: expected sha256 .*changed"):
        runtimes.load_policy(path, "tf")


def test_newer_format_version_is_refused(tmp_path):
    path = _copy_bundle("greedy_q", tmp_path)
    _edit_manifest(path, lambda m: m.update(format_version=2))
    with pytest.raises(
        BundleError,
        match=r"bundle format version 2 is newer than this policy-toolkit reads \(up to 1\); "
        r"upgrade policy-toolkit",
    ):
        runtimes.load_policy(path)


def test_missing_format_and_bad_backend(tmp_path):
    path = _copy_bundle("greedy_q", tmp_path)

    def drop_onnx(manifest):
        manifest["formats"] = ["saved_model"]
        del manifest["onnx"]
        # Sections of formats not listed are refused too (the golden vectors' among them).
        manifest.pop("litert", None)
        manifest.pop("golden", None)

    rewrite_manifest(path, drop_onnx)
    with pytest.raises(BundleError, match=r"exported without ONNX \(formats \['saved_model'\]\)"):
        runtimes.load_policy(path, "onnx")
    assert runtimes.load_policy(path).backend == "tf"  # auto falls back
    with pytest.raises(
        SpecMismatchError,
        match=r"backend: expected one of \['auto', 'onnx', 'litert', 'micro', 'c', 'tf'\], "
        r"got 'torch'",
    ):
        runtimes.load_policy(path, "torch")


def test_manifest_that_disagrees_with_the_graph_is_refused(tmp_path):
    path = _copy_bundle("greedy_q", tmp_path)

    def rename_input(manifest):
        for entry in manifest["signatures"]["distribution"]["inputs"]:
            if entry["name"] == "observation":
                entry["name"] = "obs"

    _edit_manifest(path, rename_input)
    with pytest.raises(
        BundleError,
        match=r"signatures.distribution.inputs: expected the inputs .* of the specs, got .*'obs'",
    ):
        runtimes.load_policy(path)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_consistently_edited_manifest_is_refused_by_the_graph(tmp_path, backend):
    """Manifest, its copies and hashes all edited alike: the graph's own I/O tells."""
    path = _copy_bundle("greedy_q", tmp_path)

    def widen_observation(manifest):
        items = manifest["specs"]["time_step"]["items"]
        items[3]["shape"] = [items[3]["shape"][0] + 1]
        for entry in manifest["signatures"]["distribution"]["inputs"]:
            if entry["name"] == "observation":
                entry["shape"] = [None, items[3]["shape"][0]]

    rewrite_manifest(path, widen_observation)
    with pytest.raises(
        BundleError, match=r"'observation' is float32 \[None, 4\], but the manifest"
    ):
        runtimes.load_policy(path, backend)


def test_an_edited_manifest_differs_from_its_copies(tmp_path):
    path = _copy_bundle("greedy_q", tmp_path)
    _edit_manifest(path, lambda m: m.update(train_step=123456))
    for backend, copy in (("onnx", "policy.onnx"), ("tf", "saved_model/assets.extra")):
        with pytest.raises(
            BundleError, match=rf"manifest.json: differs from the copy in {copy}.* at train_step"
        ):
            runtimes.load_policy(path, backend)


# --- bad inputs --------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_wrong_observation_shape(backend):
    policy = cr.load("greedy_q", backend)
    time_step = _time_step(policy, ())
    bad = time_step._replace(observation=np.zeros(5, np.float32))
    with pytest.raises(
        SpecMismatchError, match=r"^observation: expected shape \(4,\), got \(5,\)$"
    ):
        policy.action(bad)
    batched = _time_step(policy, (3,))
    bad = batched._replace(observation=np.zeros((3, 5), np.float32))
    with pytest.raises(
        SpecMismatchError, match=r"^observation: expected shape \(3, 4\), got \(3, 5\)"
    ):
        policy.action(bad)
    bad = batched._replace(reward=np.zeros(2, np.float32))
    with pytest.raises(SpecMismatchError, match=r"^reward: expected shape \(3,\) .*got \(2,\)"):
        policy.action(bad)
    policy.action(batched)  # still works


def test_wrong_nested_observation():
    policy = cr.load("q/dict_obs", "onnx")
    time_step = _time_step(policy, (2,))
    observation = dict(time_step.observation)
    del observation["velocity"]
    with pytest.raises(
        StructureError,
        match=r"observation: expected keys \['position', 'velocity'\], got missing \['velocity'\]",
    ):
        policy.action(time_step._replace(observation=observation))


def test_unsafe_dtype_is_refused_by_name():
    policy = cr.load("greedy_q", "onnx")
    time_step = _time_step(policy, (3,))
    bad = time_step._replace(step_type=time_step.step_type.astype(np.float64))
    with pytest.raises(
        SpecMismatchError,
        match=r"^step_type: expected dtype int32, got float64 \(unsafe conversion refused\)$",
    ):
        policy.action(bad)
    big = time_step._replace(step_type=np.full(3, 2**40, np.int64))
    with pytest.raises(SpecMismatchError, match=r"^step_type: expected dtype int32, got int64 "):
        policy.action(big)


@pytest.mark.parametrize("backend", BACKENDS)
def test_missing_state_for_a_stateful_policy(backend):
    policy = cr.load("rnn/greedy_q", backend)
    time_step = _time_step(policy, (2,))
    with pytest.raises(
        StructureError,
        match=r"^policy_state: expected a state like .* \(from get_initial_state\(\)\), got no "
        r"state$",
    ):
        policy.action(time_step)
    state = policy.get_initial_state(2)
    bad = nest.map_structure(lambda s: s[:, :3], state)
    with pytest.raises(SpecMismatchError, match=r"^policy_state/0/0: expected shape"):
        policy.action(time_step, bad)


def test_bad_seed():
    policy = cr.load("q", "onnx")
    with pytest.raises(
        SpecMismatchError,
        match=r"^seed: expected None, a non-negative int or a numpy Generator, got 'x'$",
    ):
        policy.action(_time_step(policy), seed="x")


# --- checkpoints, copies, update -----------------------------------------------------------


def _reweighted(kind, seed=999):
    """The live policy of ``kind`` with other weights (a wrapper's inner policy reweighted)."""
    policy = cr.live(kind)
    cr.set_weights(getattr(policy, "wrapped_policy", policy), seed)
    return policy


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from exporters.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("checkpoints")
    out = {}
    for kind in ("rnn/greedy_q", "actor/categorical_normal"):
        policy = _reweighted(kind)
        out[kind] = (save_checkpoint(policy, root / kind.replace("/", "-"), 42), policy)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["rnn/greedy_q", "actor/categorical_normal"])
def test_update_from_checkpoint_takes_the_new_weights(checkpoints, kind, backend):
    path, updated = checkpoints[kind]
    policy = cr.load(kind, backend)
    before = policy.copy()
    time_step = _time_step(policy, (4,), seed=5)
    state = nest.map_structure(
        lambda s: np.random.default_rng(1).normal(size=s.shape).astype(s.dtype),
        policy.get_initial_state(4),
    )
    old = _runtime_params(policy, time_step, state)
    policy.update_from_checkpoint(path)
    assert policy.train_step == 42 and before.train_step == 7
    want, want_state, _ = _live_params(updated, time_step, state)
    got = _runtime_params(policy, time_step, state)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5)
    got_state = policy.distribution_params(time_step, state).state
    for g, w in zip(nest.flatten(got_state), nest.flatten(want_state), strict=True):
        np.testing.assert_allclose(g, w.numpy(), atol=1e-5)
    assert any(not np.allclose(g, o) for g, o in zip(got, old, strict=True))
    # The copy made before still has the exported weights.
    for g, o in zip(_runtime_params(before, time_step, state), old, strict=True):
        np.testing.assert_array_equal(g, o)
    # update() hands the new weights to another policy of the bundle.
    before.update(policy)
    assert before.train_step == 42
    for g, w in zip(_runtime_params(before, time_step, state), want, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_checkpoint_of_another_graph_is_refused(checkpoints, backend):
    path, _ = checkpoints["actor/categorical_normal"]
    policy = cr.load("rnn/greedy_q", backend)
    time_step = _time_step(policy, (2,))
    state = policy.get_initial_state(2)
    want = policy.action(time_step, state).action
    with pytest.raises(
        BundleError,
        match=r"expected a checkpoint of this bundle's graph \(fingerprint [0-9a-f]{12}\.\.\.\), "
        r"got one of another graph \([0-9a-f]{12}\.\.\.\)",
    ):
        policy.update_from_checkpoint(path)
    np.testing.assert_array_equal(policy.action(time_step, state).action, want)
    assert policy.train_step == 7


@pytest.mark.slow
def test_tampered_checkpoint_is_refused(checkpoints, tmp_path):
    path, _ = checkpoints["rnn/greedy_q"]
    copy = shutil.copytree(path, tmp_path / "ckpt")
    weights = copy / "weights.npz"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    policy = cr.load("rnn/greedy_q", "onnx")
    with pytest.raises(
        BundleError, match=r"weights.npz: expected sha256 .*\(the file was changed\)"
    ):
        policy.update_from_checkpoint(copy)
    # A folder of weights-only checkpoints gives its latest: the same tampered one.
    with pytest.raises(BundleError, match=r"weights.npz: expected sha256"):
        policy.update_from_checkpoint(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match=r"empty: expected checkpoints: a weights-only"):
        policy.update_from_checkpoint(tmp_path / "empty")


def test_update_needs_the_same_graph():
    policy = cr.load("greedy_q", "onnx")
    with pytest.raises(
        PolicyError, match=r"update\(\): expected an onnx-backend policy of the same"
    ):
        policy.update(cr.load("q", "onnx"))
    with pytest.raises(SpecMismatchError, match=r"time_step_spec: expected"):
        policy.update(cr.load("q/dict_obs", "onnx"))


# --- threads -------------------------------------------------------------------------------


def _run_threads(work, count=8):
    barrier = threading.Barrier(count)
    errors = []

    def target(index):
        try:
            barrier.wait()
            work(index)
        except BaseException as e:  # reported below, with the thread's index
            errors.append((index, e))

    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors


@pytest.mark.parametrize("backend", BACKENDS)
def test_threads_share_one_policy(backend):
    """Threads with different batch sizes, seeds and episode states get exact results."""
    policy = cr.load("rnn/actor_distribution", backend)
    rounds = 30 if backend == "onnx" else 5
    batches = [(), (1,), (2,), (3,), (), (5,), (2,), (7,)]
    steps = {
        i: [_time_step(policy, batches[i], seed=100 * i + r) for r in range(rounds)]
        for i in range(8)
    }

    def episode(index, target):
        batch = batches[index]
        state = target.get_initial_state(batch[0] if batch else None)
        out = []
        for r, time_step in enumerate(steps[index]):
            step = target.action(time_step, state, seed=1000 * index + r)
            out.append(step.action)
            state = step.state
        return out

    expected = {i: episode(i, policy.copy()) for i in range(8)}
    results = {}
    _run_threads(lambda i: results.__setitem__(i, episode(i, policy)))
    for i in range(8):
        for got, want in zip(results[i], expected[i], strict=True):
            np.testing.assert_array_equal(got, want)


def test_threads_drawing_from_the_policy_generator():
    policy = cr.load("q", "onnx", seed=3)
    time_step = _time_step(policy, (4,))
    actions = [[] for _ in range(4)]
    _run_threads(
        lambda i: actions[i].extend(policy.action(time_step).action for _ in range(50)), count=4
    )
    drawn = np.stack([a for per_thread in actions for a in per_thread])
    assert drawn.shape == (200, 4, 1) and set(np.unique(drawn)) <= {-1, 0, 1}
    assert len({a.tobytes() for a in drawn}) > 1


@pytest.mark.slow
def test_threads_see_a_weight_swap_whole(checkpoints):
    """Acting while another thread swaps weights gives the old or the new result, never a mix."""
    path, _ = checkpoints["rnn/greedy_q"]
    policy = cr.load("rnn/greedy_q", "onnx")
    time_step = _time_step(policy, (6,), seed=8)
    state = policy.get_initial_state(6)
    old = policy.action(time_step, state).state
    new_policy = cr.load("rnn/greedy_q", "onnx")
    new_policy.update_from_checkpoint(path)
    new = new_policy.action(time_step, state).state
    seen = []

    def work(index):
        if index == 0:
            policy.update_from_checkpoint(path)
            return
        for _ in range(40):
            seen.append(policy.action(time_step, state).state)

    _run_threads(work, count=4)
    for state_seen in seen:
        leaves = nest.flatten(state_seen)
        is_old = all(np.array_equal(a, b) for a, b in zip(leaves, nest.flatten(old), strict=True))
        is_new = all(
            np.allclose(a, b, atol=1e-6) for a, b in zip(leaves, nest.flatten(new), strict=True)
        )
        assert is_old or is_new


def test_error_messages_have_no_stray_reprs():
    # Messages name paths and shapes, not numpy reprs of whole arrays.
    policy = cr.load("greedy_q", "onnx")
    time_step = _time_step(policy, ())
    with pytest.raises(SpecMismatchError) as error:
        policy.action(time_step._replace(observation=np.zeros((2, 2), np.float32)))
    assert not re.search(r"array\(", str(error.value))


@pytest.mark.slow
def test_tf_backend_without_a_fingerprint_refuses_other_variables(checkpoints, tmp_path):
    """A SavedModel-only bundle has no graph fingerprint: TF's restore check refuses."""
    path = _copy_bundle("rnn/greedy_q", tmp_path)

    def drop_onnx(manifest):
        manifest["formats"] = ["saved_model"]
        del manifest["onnx"]
        # Sections of formats not listed are refused too (the golden vectors' among them).
        manifest.pop("litert", None)
        manifest.pop("golden", None)

    rewrite_manifest(path, drop_onnx)
    policy = runtimes.load_policy(path, "tf")
    time_step = _time_step(policy, (2,))
    state = policy.get_initial_state(2)
    want = policy.action(time_step, state).state
    with pytest.raises(BundleError, match=r"the TF checkpoint does not fit this bundle's policy"):
        policy.update_from_checkpoint(checkpoints["actor/categorical_normal"][0])
    nest.map_structure(np.testing.assert_array_equal, policy.action(time_step, state).state, want)
    policy.update_from_checkpoint(checkpoints["rnn/greedy_q"][0])
    assert policy.train_step == 42
