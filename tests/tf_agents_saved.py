"""TF-Agents saved policies for the import tests: the reference recordings and look-alikes.

tests/data/tf_agents_0_19 holds real ``PolicySaver`` outputs (TF-Agents 0.19) with what
TF-Agents' own loader returned on recorded inputs (reward 0, discount 1), in two
archives (see its README.md): ``reference()`` is reference.tar.xz (six cases, four of
them from TF-Agents' policy classes directly) and ``saves()`` is saves.tar.xz (every
kind TF-Agents' own agents save). Each is unpacked once per test process, on first
use, into a temporary folder removed at exit; tests copy what they change.
``save_like_policy_saver`` writes policy kinds the archives lack, with PolicySaver's
layout, so the import can be tested on them without TF-Agents.
"""

from __future__ import annotations

import atexit
import collections
import functools
import json
import shutil
import tarfile
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import tensorflow as tf

from exporters.tf_agents.specs import POLICY_SPECS_PBTXT
from toolkit.specs.tensor_spec import BoundedTensorSpec
from toolkit.trajectories.policy_step import PolicyStep
from toolkit.trajectories.time_step import TimeStep

DATA = Path(__file__).resolve().parent / "data" / "tf_agents_0_19"
#: The reference cases made from TF-Agents' policy classes (the other two, sac_collect
#: and c51_greedy, come from its agents with a checkpoint each).
CASES = ("q_greedy", "actor_normal_stochastic", "nested_obs", "q_rnn")


@functools.cache
def _unpacked(archive: str) -> Path:
    root = Path(tempfile.mkdtemp(prefix=f"policy-{archive.split('.')[0]}-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    with tarfile.open(DATA / archive) as tar:
        tar.extractall(root, filter="data")
    return root


def reference() -> Path:
    """The reference cases (reference.tar.xz), unpacked once per test process."""
    return _unpacked("reference.tar.xz")


def saves() -> Path:
    """The saves of TF-Agents' own agents (saves.tar.xz), unpacked once per test process."""
    return _unpacked("saves.tar.xz")


def saved_policy(case: str) -> Path:
    return reference() / case / "saved_policy"


@functools.cache
def recording(case: str) -> dict[str, np.ndarray]:
    with np.load(reference() / case / "expected.npz") as data:
        return {k: data[k] for k in data.files}


def case_info(case: str) -> dict[str, Any]:
    return json.loads((reference() / case / "case.json").read_text())


def time_step_feeds(rec: dict[str, np.ndarray], prefix: str = "") -> dict[str, np.ndarray]:
    """The recorded inputs under graph input names: reward 0 and discount 1, as recorded."""
    step_type = rec[prefix + "step_type"]
    feeds = {
        "step_type": step_type.astype(np.int32),
        "reward": np.zeros(step_type.shape, np.float32),
        "discount": np.ones(step_type.shape, np.float32),
    }
    for key, value in rec.items():
        if key.startswith(prefix + "observation"):
            feeds[key.removeprefix(prefix)] = value
    return feeds


def onnx_session(
    bundle: Path, initializers: dict[str, np.ndarray] | None = None
) -> ort.InferenceSession:
    """A session over a bundle's policy.onnx, with initializers overridden by name."""
    options = ort.SessionOptions()
    values = []  # onnxruntime keeps pointers into these arrays: keep them alive
    for name, value in (initializers or {}).items():
        values.append(ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value)))
        options.add_initializer(name, values[-1])
    session = ort.InferenceSession(
        str(bundle / "policy.onnx"), options, providers=["CPUExecutionProvider"]
    )
    session._kept_initializers = values  # the overrides live as long as the session
    return session


def run_session(session: ort.InferenceSession, feeds: dict[str, np.ndarray]):
    names = [o.name for o in session.get_outputs()]
    inputs = {i.name: feeds[i.name] for i in session.get_inputs()}
    return dict(zip(names, session.run(names, inputs), strict=True))


# --- policy kinds the reference folder lacks, saved the way PolicySaver saves ---------

Trajectory = collections.namedtuple(
    "Trajectory",
    ["step_type", "observation", "action", "policy_info", "next_step_type", "reward", "discount"],
)
PolicyInfo = collections.namedtuple("PolicyInfo", ["log_probability", "value"])
W_MOVE = np.arange(6, dtype=np.float32).reshape(3, 2) / 10
W_TURN = np.arange(9, dtype=np.float32).reshape(3, 3) / 10 - 0.3
OBSERVATION = np.random.default_rng(0).standard_normal((6, 3)).astype(np.float32)


def save_like_policy_saver(
    path: Path,
    kind: str,
    batch_size: int | None = None,
    info: bool = False,
    initial_count: float | None = None,
) -> Path:
    """A SavedModel with PolicySaver's layout: action, distribution, get_initial_state,
    get_train_step (3), get_metadata ({"version": 2}), and policy_specs.pbtxt beside it.

    The action is a dict {"move": (2,) float in [-1, 1], "turn": () int32 in [0, 2]}:
      stochastic: Normal(obs @ W_MOVE, 0.5) and Categorical(obs @ W_TURN); action samples.
      independent: the same with the Normal wrapped in Independent (as TF-Agents' normal
        projections may do).
      uniform: the same with Uniform(obs @ W_MOVE - 1, obs @ W_MOVE + 1) for "move".
      deterministic: Deterministic(obs @ W_MOVE) and Deterministic(argmax(obs @ W_TURN)).
      unserializable: the distribution function only raises (PolicySaver's fallback when
        policy.distribution() cannot be saved); the action samples.
      gamma: a Gamma for "move" (no family of ours); the action is deterministic.
    With ``info``, the functions also return TF-Agents' ``PolicyInfo(log_probability,
    value)``: log-probabilities (zeros from ``distribution``, as TF-Agents gives) and
    ``value = sum(obs)``. With ``initial_count``, the policy is stateful: its state is
    ``[count]`` ((1,) float32 in a list, as TF-Agents keeps states), starting (and reset
    on FIRST) at ``initial_count`` and incremented each step.
    """
    import tensorflow_probability as tfp

    tfd = tfp.distributions
    module = tf.Module()
    module.w_move = tf.Variable(W_MOVE)
    module.w_turn = tf.Variable(W_TURN)
    module.model_variables = [module.w_move, module.w_turn]
    module.train_step = tf.Variable(3, dtype=tf.int64)
    module.metadata = {"version": tf.Variable(2)}

    def distributions(observation):
        move, turn = observation @ module.w_move, observation @ module.w_turn
        if kind == "deterministic":
            return {
                "move": tfd.Deterministic(move),
                "turn": tfd.Deterministic(tf.argmax(turn, -1, output_type=tf.int32)),
            }
        if kind == "gamma":
            first = tfd.Gamma(tf.exp(move), 1.0)
        elif kind == "uniform":
            first = tfd.Uniform(move - 1.0, move + 1.0)
        elif kind == "independent":
            first = tfd.Independent(tfd.Normal(move, 0.5), reinterpreted_batch_ndims=1)
        else:
            first = tfd.Normal(move, 0.5)
        return {"move": first, "turn": tfd.Categorical(logits=turn, dtype=tf.int32)}

    def policy_info(observation, log_probability):
        if not info:
            return ()
        return PolicyInfo(log_probability, tf.reduce_sum(observation, -1))

    def next_state(time_step, policy_state):
        if initial_count is None:
            return ()
        first = tf.equal(time_step.step_type, 0)[:, None]
        count = tf.where(first, tf.fill(tf.shape(policy_state[0]), initial_count), policy_state[0])
        return [count + 1.0]

    @tf.function
    def distribution(time_step, policy_state=()):
        if kind == "unserializable":
            tf.debugging.Assert(False, ["could not serialize"])
            return ()
        dists = distributions(time_step.observation)
        zeros = tf.zeros(tf.shape(time_step.step_type), tf.float32)
        return PolicyStep(
            tf.nest.map_structure(tfp.experimental.as_composite, dists),
            next_state(time_step, policy_state),
            policy_info(time_step.observation, {"move": zeros, "turn": zeros}),
        )

    @tf.function
    def action(time_step, policy_state=()):
        dists = distributions(time_step.observation)
        if kind in ("deterministic", "gamma"):
            move = time_step.observation @ module.w_move
            turn = tf.argmax(time_step.observation @ module.w_turn, -1, output_type=tf.int32)
            actions = {"move": tf.clip_by_value(move, -1.0, 1.0), "turn": turn}
        else:
            actions = {k: d.sample(seed=1) for k, d in dists.items()}
        log_probs = {"move": tf.reduce_sum(dists["move"].log_prob(actions["move"]), -1)}
        log_probs["turn"] = dists["turn"].log_prob(actions["turn"])
        if kind in ("deterministic", "gamma"):
            log_probs = tf.nest.map_structure(tf.zeros_like, log_probs)
        return PolicyStep(
            actions,
            next_state(time_step, policy_state),
            policy_info(time_step.observation, log_probs),
        )

    outer = [batch_size]
    batched = TimeStep(
        tf.TensorSpec(outer, tf.int32, "step_type"),
        tf.TensorSpec(outer, tf.float32, "reward"),
        tf.TensorSpec(outer, tf.float32, "discount"),
        tf.TensorSpec([*outer, 3], tf.float32, "observation"),
    )
    state_spec = [] if initial_count is None else [tf.TensorSpec((1,), tf.float32, "count")]
    batched_state = [tf.TensorSpec([*outer, 1], tf.float32, "count") for _ in state_spec] or ()
    action.get_concrete_function(batched, batched_state)
    distribution.get_concrete_function(batched, batched_state)
    module.action, module.distribution = action, distribution
    module.get_initial_state = tf.function(
        lambda batch_size: [tf.fill([batch_size, 1], initial_count)] if state_spec else ()
    )
    module.get_initial_state.get_concrete_function(tf.TensorSpec((), tf.int32))
    module.get_train_step = tf.function(lambda: module.train_step.read_value())
    module.get_train_step.get_concrete_function()
    module.get_metadata = tf.function(lambda: {"version": module.metadata["version"] + 0})
    module.get_metadata.get_concrete_function()
    with warnings.catch_warnings():
        # TF warns that loading needs TFP's TypeSpecs registered: the import does that.
        warnings.filterwarnings("ignore", "Encoding a StructuredValue")
        tf.saved_model.save(module, str(path))

    from google.protobuf import text_format
    from tensorflow.python.saved_model import nested_structure_coder

    step_type = tf.TensorSpec((), tf.int32, "step_type")
    scalar = tf.TensorSpec((), tf.float32, "log_probability")
    collect = Trajectory(
        step_type=step_type,
        observation=tf.TensorSpec((3,), tf.float32, "observation"),
        action={
            "move": BoundedTensorSpec((2,), tf.float32, -1.0, 1.0, "move"),
            "turn": BoundedTensorSpec((), tf.int32, 0, 2, "turn"),
        },
        policy_info=(
            PolicyInfo({"move": scalar, "turn": scalar}, tf.TensorSpec((), tf.float32, "value"))
            if info
            else ()
        ),
        next_step_type=step_type,
        reward=tf.TensorSpec((), tf.float32, "reward"),
        discount=BoundedTensorSpec((), tf.float32, 0.0, 1.0, "discount"),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TF warns that namedtuples load as generic ones
        proto = nested_structure_coder.encode_structure(
            {"collect_data_spec": collect, "policy_state_spec": state_spec or ()}
        )
    (path / POLICY_SPECS_PBTXT).write_text(text_format.MessageToString(proto))
    return path


def fake_feeds(batch: int = 6) -> dict[str, np.ndarray]:
    return {
        "step_type": np.ones(batch, np.int32),
        "reward": np.zeros(batch, np.float32),
        "discount": np.ones(batch, np.float32),
        "observation": OBSERVATION[:batch],
    }


# --- hostile look-alikes: a SavedModel is a program -------------------------------------

#: What ``save_hostile`` can make a look-alike do, besides acting.
HOSTILE_KINDS = ("write_file", "read_file", "py_function")


def save_hostile(path: Path, kind: str, target: Path) -> Path:
    """A deterministic look-alike (``save_like_policy_saver(path, "deterministic")``)
    whose SavedModel also does ``kind`` when loaded or called:

      write_file: writes ``target/<where>`` from a resource initialiser (at load), the
        action, the distribution, get_train_step and get_metadata (what an import of it
        did before imports were screened: exit 0 and four files);
      read_file: get_metadata returns the contents of the file ``target`` (which the
        import would copy into the manifest, and ``serve`` hand out);
      py_function: the distribution calls Python (``tf.py_function``).
    """
    import tensorflow_probability as tfp

    tfd = tfp.distributions
    save_like_policy_saver(path, "deterministic")  # policy_specs.pbtxt and the layout

    def touch(where: str) -> None:
        if kind == "write_file":
            tf.io.write_file(str(target / where), where)

    class AtLoad(tf.saved_model.experimental.TrackableResource):
        def _create_resource(self):
            return tf.raw_ops.VarHandleOp(dtype=tf.float32, shape=[], shared_name="")

        def _initialize(self):
            touch("at_load")

    module = tf.Module()
    module.w_move = tf.Variable(W_MOVE)
    module.w_turn = tf.Variable(W_TURN)
    module.model_variables = [module.w_move, module.w_turn]
    module.train_step = tf.Variable(3, dtype=tf.int64)
    module.metadata = {"version": tf.Variable(2)}
    module.at_load = AtLoad()

    def actions(observation):
        if kind == "py_function":
            (observation,) = tf.py_function(lambda x: x, [observation], [tf.float32])
            observation.set_shape([None, 3])
        move = tf.clip_by_value(observation @ module.w_move, -1.0, 1.0)
        turn = tf.argmax(observation @ module.w_turn, -1, output_type=tf.int32)
        return {"move": move, "turn": turn}

    @tf.function
    def action(time_step, policy_state=()):
        touch("action")
        return PolicyStep(actions(time_step.observation), (), ())

    @tf.function
    def distribution(time_step, policy_state=()):
        touch("distribution")
        dists = {k: tfd.Deterministic(v) for k, v in actions(time_step.observation).items()}
        return PolicyStep(tf.nest.map_structure(tfp.experimental.as_composite, dists), (), ())

    @tf.function
    def get_train_step():
        touch("get_train_step")
        return module.train_step.read_value()

    @tf.function
    def get_metadata():
        touch("get_metadata")
        out = {"version": module.metadata["version"] + 0}
        if kind == "read_file":
            out["host"] = tf.io.read_file(str(target))
        return out

    spec = TimeStep(
        tf.TensorSpec([None], tf.int32, "step_type"),
        tf.TensorSpec([None], tf.float32, "reward"),
        tf.TensorSpec([None], tf.float32, "discount"),
        tf.TensorSpec([None, 3], tf.float32, "observation"),
    )
    action.get_concrete_function(spec, ())
    distribution.get_concrete_function(spec, ())
    module.action, module.distribution = action, distribution
    module.get_initial_state = tf.function(lambda batch_size: ())
    module.get_initial_state.get_concrete_function(tf.TensorSpec((), tf.int32))
    module.get_train_step, module.get_metadata = get_train_step, get_metadata
    get_train_step.get_concrete_function()
    get_metadata.get_concrete_function()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Encoding a StructuredValue")
        tf.saved_model.save(module, str(path))
    return path
