"""The graph's own clip of its action, proven from the model (toolkit.onnx_proto.output_clips)
and used by OnnxPolicy to skip the per-call bounds comparison of batched actions.

The models here are built with the ``onnx`` package (tests only; the reader is onnx-free);
the policy-level tests run the real exported graphs with onnxruntime.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.contract import cases_runtime as cr
from tests.contract.case import sample_time_step
from toolkit import onnx_proto
from toolkit.errors import BundleError, SpecMismatchError

F, I64 = TensorProto.FLOAT, TensorProto.INT64


def _model(nodes, initializers=(), inputs=("x",), elem=F, extra_inputs=()):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, elem, [None, 2]) for n in (*inputs, *extra_inputs)],
        [helper.make_tensor_value_info("action", elem, [None, 2])],
        initializer=list(initializers),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _clips(model, outputs=("action",), overrides=None):
    return onnx_proto.output_clips(model.SerializeToString(), list(outputs), "m", overrides)


def _init(name, values, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(values, dtype), name)


def test_max_of_min_with_initializer_bounds_either_operand_order():
    for a, b in ((("x", "hi"), ("m", "lo")), (("hi", "x"), ("lo", "m"))):
        model = _model(
            [helper.make_node("Min", list(a), ["m"]), helper.make_node("Max", list(b), ["action"])],
            [_init("lo", -0.5), _init("hi", [0.25, 0.75])],
        )
        low, high = _clips(model)["action"]
        assert low.tolist() == [-0.5] and high.tolist() == [0.25, 0.75]
        assert low.dtype == np.float32


def test_min_of_max_and_clip_and_constant_nodes():
    model = _model(
        [
            helper.make_node("Max", ["x", "lo"], ["m"]),
            helper.make_node("Min", ["m", "hi"], ["action"]),
        ],
        [_init("lo", [-2, -3], np.int64), _init("hi", 4, np.int64)],
        elem=I64,
    )
    low, high = _clips(model)["action"]
    assert low.tolist() == [-2, -3] and high.tolist() == [4]  # negative int64s read right
    constants = [
        helper.make_node("Constant", [], ["lo"], value=_init("v", -1.5)),
        helper.make_node("Constant", [], ["hi"], value_float=2.5),
        helper.make_node("Clip", ["x", "lo", "hi"], ["action"]),
    ]
    low, high = _clips(_model(constants))["action"]
    assert low.tolist() == [-1.5] and high.tolist() == [2.5]
    ints = [
        helper.make_node("Constant", [], ["lo"], value_int=-7),
        helper.make_node("Constant", [], ["hi"], value=_init("v", [9], np.int64)),
        helper.make_node("Min", ["x", "hi"], ["m"]),
        helper.make_node("Max", ["m", "lo"], ["action"]),
    ]
    low, high = _clips(_model(ints, elem=I64))["action"]
    assert low.tolist() == [-7] and high.tolist() == [9]


def test_typed_fields_as_well_as_raw_data():
    typed_lo = helper.make_tensor("lo", I64, [2], [-5, 6])  # int64_data, not raw
    typed_hi = helper.make_tensor("hi", F, [], [0.5])  # float_data
    model = _model([helper.make_node("Clip", ["x", "lo", "hi"], ["action"])], [typed_lo, typed_hi])
    assert _clips(model) == {}  # int64 and float32 bounds: not one clip's
    model = _model(
        [helper.make_node("Clip", ["x", "lo", "hi"], ["action"])],
        [helper.make_tensor("lo", F, [2], [-1.0, -2.0]), typed_hi],
    )
    low, high = _clips(model)["action"]
    assert low.tolist() == [-1.0, -2.0] and high.tolist() == [0.5]


def _short(name):
    tensor = helper.make_tensor(name, F, [2], [0.0, 1.0])
    tensor.dims[0] = 3  # two values for three elements
    return tensor


def _min_max(lo="lo", hi="hi", x="x"):
    return [_node("Min", [x, hi], "m"), _node("Max", ["m", lo])]


def _node(op, inputs, output="action", **kwargs):
    return helper.make_node(op, inputs, [output], **kwargs)


_BOUNDS = (_init("lo", 0), _init("hi", 1))
_NOT_PROOFS = {
    "one side only": _model([_node("Max", ["x", "lo"])], _BOUNDS),
    "three operands": _model(
        [_node("Min", ["x", "hi"], "m"), _node("Max", ["m", "lo", "x"])], _BOUNDS
    ),
    "a bound fed as an input": _model(_min_max(), _BOUNDS, extra_inputs=("lo",)),
    "a bound computed": _model(_min_max(hi="x2"), _BOUNDS[:1], extra_inputs=("x2",)),
    "both operands constant": _model(_min_max(x="c"), [*_BOUNDS, _init("c", 3)]),
    "another domain": _model(
        [_node("Min", ["x", "hi"], "m"), _node("Max", ["m", "lo"], domain="com.example")], _BOUNDS
    ),
    "the same op twice": _model(
        [_node("Max", ["x", "hi"], "m"), _node("Max", ["m", "lo"])], _BOUNDS
    ),
    "a constant too large": _model(
        _min_max(), [_init("lo", np.zeros(onnx_proto.MAX_CLIP_CONSTANT + 1)), _BOUNDS[1]]
    ),
    "a string constant": _model(
        _min_max(), [helper.make_tensor("lo", TensorProto.STRING, [], [b"a"]), _BOUNDS[1]]
    ),
    "a size unlike the dims": _model(_min_max(), [_short("lo"), _BOUNDS[1]]),
}


@pytest.mark.parametrize("why", list(_NOT_PROOFS))
def test_what_is_not_a_proof(why):
    assert _clips(_NOT_PROOFS[why]) == {}, why


def test_external_data_is_not_read(tmp_path):
    model = _model(_min_max(), [_init("lo", np.zeros(8)), _init("hi", 1)])
    onnx.save_model(model, tmp_path / "m.onnx", save_as_external_data=True, size_threshold=0)
    assert onnx_proto.output_clips((tmp_path / "m.onnx").read_bytes(), ["action"], "m") == {}


def test_overrides_are_what_the_session_runs():
    model = _model(_min_max(), [_init("lo", 0), _init("hi", 1)])
    low, high = _clips(model, overrides={"hi": np.float32([3, 4])})["action"]
    assert low.tolist() == [0] and high.tolist() == [3, 4]
    # an override of a name no initializer has (a Constant node's output): not proven
    constants = [
        helper.make_node("Constant", [], ["lo"], value_float=0.0),
        helper.make_node("Constant", [], ["hi"], value_float=1.0),
        *_min_max(),
    ]
    assert "action" in _clips(_model(constants))
    assert _clips(_model(constants), overrides={"hi": np.float32(9)}) == {}


def test_malformed_bytes_raise_the_readers_error_and_mutations_nothing_else():
    data = bytearray(_model(_min_max(), [_init("lo", 0), _init("hi", 1)]).SerializeToString())
    with pytest.raises(BundleError, match=r"^m: not a valid ONNX model \("):
        onnx_proto.output_clips(bytes(data[: len(data) // 2]), ["action"], "m")
    rng = np.random.default_rng(0)
    for _ in range(300):
        mutated = bytearray(data)
        for i in rng.integers(0, len(data), 3):
            mutated[i] = rng.integers(0, 256)
        try:
            found = onnx_proto.output_clips(bytes(mutated), ["action"], "m")
        except BundleError:
            continue
        limit = onnx_proto.MAX_CLIP_CONSTANT
        assert all(lo.size <= limit and hi.size <= limit for lo, hi in found.values())


# --- the policy ---------------------------------------------------------------------------


def _clip_constants(policy):
    """The initializer names of the exported graph's action clip (Max of Min)."""
    model = onnx.load_from_string(policy._session.model)
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name for i in model.graph.initializer}
    outer = producers[policy._action_names[0]]
    inner = producers[next(i for i in outer.input if i not in inits)]
    assert {outer.op_type, inner.op_type} == {"Max", "Min"}
    low = next(i for i in outer.input if i in inits)
    high = next(i for i in inner.input if i in inits)
    return (low, high) if outer.op_type == "Max" else (high, low)


def test_an_exported_greedy_policy_proves_its_clip_and_batches_skip_the_comparison():
    policy = cr.load("greedy_q", "onnx")  # int32 actions of shape (1,) in [-1, 1]
    step = sample_time_step(policy.time_step_spec, (4,), np.random.default_rng(0))
    assert "_graph_clips" not in vars(policy)  # not made at load
    policy.action(sample_time_step(policy.time_step_spec, (), np.random.default_rng(0)))
    assert "_graph_clips" not in vars(policy)  # nor by an unbatched call
    result = policy.action(step)
    assert policy._graph_clips == [True]
    assert policy._checked is result  # its dtype and shape checked, known by identity


def test_a_session_whose_clip_constants_leave_the_bounds_keeps_the_comparison():
    """The real graph, run by onnxruntime, with its clip's bounds overridden to 7 (outside
    [-1, 1]): every action is 7; not proven, the full check names it. The proof is made
    before a new session can run and is what every session since proves: a later
    session within the bounds does not bring it back (a call may still be on the old one)."""
    policy = cr.load("greedy_q", "onnx")
    low, high = _clip_constants(policy)
    step = sample_time_step(policy.time_step_spec, (4,), np.random.default_rng(0))
    policy.action(step)
    assert policy._graph_clips == [True]
    dtype = policy.action_spec.dtype
    outside = policy._new_session({low: np.array(7, dtype), high: np.array(7, dtype)})
    assert policy._prove_clips(outside) == [None]
    policy._set_session(outside)
    assert policy._graph_clips == [None]  # before any call ran on it
    with pytest.raises(SpecMismatchError, match=r"action: expected values in \[-1, 1\], got 7"):
        policy.action(step)
    inside = policy._new_session({low: np.array(0, dtype), high: np.array(0, dtype)})
    assert policy._prove_clips(inside) == [True]
    policy._set_session(inside)
    assert policy.action(step).action.tolist() == [[0]] * 4  # checked in full, and passes
    assert policy._graph_clips == [None]


def test_a_swap_before_any_batched_call_proves_both_sessions():
    policy = cr.load("greedy_q", "onnx")
    assert "_graph_clips" not in vars(policy)
    low, high = _clip_constants(policy)
    dtype = policy.action_spec.dtype
    policy._set_session(policy._new_session({low: np.array(9, dtype), high: np.array(9, dtype)}))
    assert policy._graph_clips == [None]
    fresh = cr.load("greedy_q", "onnx")
    fresh._set_session(fresh._new_session({low: np.array(1, dtype), high: np.array(1, dtype)}))
    assert fresh._graph_clips == [True]  # the load's session and this one both proven
    step = sample_time_step(fresh.time_step_spec, (2,), np.random.default_rng(0))
    assert fresh.action(step).action.tolist() == [[1]] * 2


def test_a_recurrent_policy_proves_its_clip_and_update_keeps_what_both_prove():
    policy = cr.load("rnn/greedy_q", "onnx")
    step = sample_time_step(policy.time_step_spec, (3,), np.random.default_rng(2))
    result = policy.action(step, policy.get_initial_state(3))
    assert policy._graph_clips == [True] and policy._checked is result
    other = cr.load("rnn/greedy_q", "onnx")
    policy.update(other)
    assert policy._session is other._session and policy._graph_clips == [True]
    copy = policy.copy()
    assert copy._proof_lock is not policy._proof_lock and copy._graph_clips == [True]
