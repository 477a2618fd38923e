"""toolkit.tensor_bundle: TF checkpoints read without TensorFlow, checked against TF's reader."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import tracemalloc
import uuid
from pathlib import Path

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest
import tensorflow as tf

from tests import checkpoint_checks as cc
from tests.tf_agents_saved import reference
from toolkit import checkpoint_weights, tensor_bundle
from toolkit.bundle.layout import FormatEntry, Layout
from toolkit.errors import CheckpointError, ToolkitError


def _all_dtypes_checkpoint(directory: Path) -> str:
    rng = np.random.default_rng(0)
    values = {
        "f32": rng.standard_normal((3, 4)).astype(np.float32),
        "f64": rng.standard_normal(2),
        "f16": rng.standard_normal(3).astype(np.float16),
        "i8": np.arange(-3, 3, dtype=np.int8),
        "i16": np.arange(4, dtype=np.int16),
        "i32": np.arange(5, dtype=np.int32),
        "i64_scalar": np.int64(-(2**40)),
        "u8": np.arange(4, dtype=np.uint8),
        "u16": np.arange(3, dtype=np.uint16),
        "u32": np.arange(3, dtype=np.uint32),
        "u64": np.arange(3, dtype=np.uint64),
        "bool": np.array([True, False, True]),
        "c64": np.array([1 + 2j], np.complex64),
        "empty": np.zeros((0, 3), np.float32),
        "strings": np.array([b"", b"ab", b"x" * 300]),
        "string_scalar": np.array(b"\x00\xff"),
    }
    variables = {k: tf.Variable(v) for k, v in values.items()}
    # Many small variables: the index spans several 4 KiB blocks with restart points.
    variables["many"] = [tf.Variable(np.float32(i)) for i in range(400)]
    return tf.train.Checkpoint(**variables).write(str(directory / "all"))


def test_every_dtype_and_multi_block_index_match_tf_bit_for_bit(tmp_path):
    prefix = _all_dtypes_checkpoint(tmp_path)
    assert cc.assert_reader_matches_tf(prefix) > 400
    reader = tensor_bundle.TensorBundle(prefix)
    assert reader.dtypes()["i64_scalar/.ATTRIBUTES/VARIABLE_VALUE"] == "int64"
    assert reader.get("i64_scalar/.ATTRIBUTES/VARIABLE_VALUE").shape == ()
    nodes = reader.object_graph()
    node = tensor_bundle.resolve(nodes, ["many", "399"])
    assert nodes[node].attributes[tensor_bundle.VARIABLE_VALUE] == (
        "many/399/.ATTRIBUTES/VARIABLE_VALUE"
    )
    assert tensor_bundle.resolve(nodes, ["many", "400"]) is None


@pytest.mark.parametrize("case", ["sac_collect", "c51_greedy"])
def test_tf_agents_0_19_checkpoints_match_tf(case):
    for prefix in (
        reference() / case / "checkpoint" / "variables" / "variables",
        reference() / case / "saved_policy" / "variables" / "variables",
    ):
        assert cc.assert_reader_matches_tf(prefix) >= 3


def test_checkpoint_state_names_the_latest(tmp_path):
    v = tf.Variable(1.0)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=v), str(tmp_path), max_to_keep=2)
    for step in (5, 10, 15):
        manager.save(checkpoint_number=step)
    latest, every = tensor_bundle.checkpoint_state(tmp_path)
    assert latest == tmp_path / "ckpt-15"
    assert every == [tmp_path / "ckpt-10", tmp_path / "ckpt-15"]
    assert tensor_bundle.checkpoint_state(tmp_path / "none") == (None, [])


def _synthetic(tmp_path: Path, entry: bytes, data: bytes = b"\x00" * 16, shards: int = 1) -> Path:
    prefix = tmp_path / "synthetic"
    cc.write_index(f"{prefix}.index", {b"t": entry}, num_shards=shards)
    Path(f"{prefix}.data-00000-of-{shards:05d}").write_bytes(data)
    return prefix


def test_sliced_variables_are_refused(tmp_path):
    data = np.zeros(4, np.float32).tobytes()
    crc = tensor_bundle.masked_crc32c(data)
    prefix = _synthetic(tmp_path, cc.entry_proto(1, [4], size=16, crc=crc, sliced=True), data)
    with pytest.raises(CheckpointError, match=r"t: a sliced \(partitioned\) variable"):
        tensor_bundle.TensorBundle(prefix).get("t")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (cc.entry_proto(20, [], size=8), r"dtype resource is not supported"),
        (cc.entry_proto(21, [], size=8), r"dtype variant is not supported"),
        (cc.entry_proto(14, [2], size=4), r"dtype bfloat16 is not supported"),
        (cc.entry_proto(1, [1 << 40, 1 << 40], size=16), r"needs \d+ bytes, the entry has 16"),
        (cc.entry_proto(1, [4], offset=1 << 62, size=16), r"expected bytes within its data"),
        (cc.entry_proto(1, [4], size=1 << 62), r"expected bytes within its data"),
        (cc.entry_proto(1, [4], offset=-5, size=16), r"expected bytes within its data"),
        (cc.entry_proto(1, [4], size=16, crc=123), r"crc32c mismatch"),
        (cc.entry_proto(7, [1 << 50], size=16), r"strings cannot fit in 16 bytes"),
        (cc.entry_proto(1, [-1], size=16), r"expected a known shape"),
    ],
)
def test_declared_sizes_and_dtypes_are_checked_before_reading(tmp_path, entry, message):
    prefix = _synthetic(tmp_path, entry)
    with pytest.raises(CheckpointError, match=message):
        tensor_bundle.TensorBundle(prefix).get("t")


def test_missing_shards_and_bad_shard_ids_are_named(tmp_path):
    prefix = _synthetic(tmp_path, cc.entry_proto(1, [4], shard=3, size=16))
    with pytest.raises(CheckpointError, match=r"names shard 3, the bundle has 1"):
        tensor_bundle.TensorBundle(prefix)
    prefix = _synthetic(tmp_path, cc.entry_proto(1, [4], shard=1, size=16), shards=2)
    with pytest.raises(CheckpointError, match=r"synthetic.data-00001-of-00002: checkpoint data"):
        tensor_bundle.TensorBundle(prefix)


def _fuzz_targets(tmp_path: Path) -> list[Path]:
    variables = {
        "w": tf.Variable(np.random.default_rng(1).standard_normal((6, 5)).astype(np.float32)),
        "step": tf.Variable(np.int64(7)),
        "s": tf.Variable([b"abc", b"de"]),
    }
    prefix = tf.train.Checkpoint(**variables).write(str(tmp_path / "src" / "ckpt"))
    return [Path(prefix)]


def _read_all(prefix: Path) -> None:
    reader = tensor_bundle.TensorBundle(prefix)
    for key in reader.tensor_names():
        reader.get(key)
    reader.object_graph()


def test_fuzz_only_toolkit_errors_and_no_reads_outside_the_checkpoint(tmp_path):
    """Truncations and byte flips of the index and data: a ToolkitError or a good read,
    never another exception, a MemoryError, or a file opened outside the checkpoint."""
    (source,) = _fuzz_targets(tmp_path)
    files = sorted(source.parent.glob(source.name + ".*"))
    work = tmp_path / "work"
    opened: list[str] = []
    watching = [False]

    def hook(event, args):
        if watching[0] and event == "open" and isinstance(args[0], (str, Path)):
            opened.append(str(args[0]))

    sys.addaudithook(hook)
    rng = np.random.default_rng(12)
    outcomes = {"error": 0, "read": 0}
    cases = 0
    for target in files:
        original = target.read_bytes()
        mutations = [original[:n] for n in range(0, len(original), max(1, len(original) // 60))]
        for _ in range(250):
            flipped = bytearray(original)
            for _ in range(int(rng.integers(1, 4))):
                flipped[int(rng.integers(len(flipped)))] ^= 1 << int(rng.integers(8))
            mutations.append(bytes(flipped))
        for mutated in mutations:
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir()
            for f in files:
                (work / f.name).write_bytes(mutated if f == target else f.read_bytes())
            watching[0] = True
            try:
                _read_all(work / source.name)
                outcomes["read"] += 1
            except ToolkitError:
                outcomes["error"] += 1
            finally:
                watching[0] = False
            cases += 1
    outside = [p for p in opened if not p.startswith(str(work))]
    assert not outside, outside[:5]
    assert outcomes["error"] > cases // 2
    print(f"fuzz: {cases} mutated checkpoints, {outcomes}")


def test_fuzz_synthetic_tables_with_huge_declared_sizes(tmp_path):
    """Valid tables (good crcs) declaring absurd sizes, shapes, offsets and restart counts."""
    rng = np.random.default_rng(5)
    cases = 0
    for _ in range(300):
        dtype = int(rng.choice([1, 2, 3, 7, 9, 10, 20, 99]))
        shape = [int(x) for x in rng.choice([0, 1, 3, 1 << 31, 1 << 62], size=rng.integers(0, 4))]
        entry = cc.entry_proto(
            dtype,
            shape,
            shard=int(rng.choice([0, 0, 1, 1 << 40])),
            offset=int(rng.choice([0, 4, 1 << 62, (1 << 64) - 1])),
            size=int(rng.choice([0, 4, 16, 1 << 62, (1 << 64) - 1])),
            crc=int(rng.integers(1 << 32)),
        )
        prefix = _synthetic(tmp_path, entry)
        with contextlib.suppress(ToolkitError):
            _read_all(prefix)
        cases += 1
    assert cases == 300


# --- bounds: what a checkpoint declares is checked before anything is read ---------------

W = np.arange(128, dtype=np.float32).reshape(4, 32)
B = np.linspace(-1, 1, 32, dtype=np.float32)
#: A bundle manifest's weights map for a policy of two variables (w [4, 32], b [32]).
_MANIFEST = {
    "onnx": {
        "initializers": [],
        "weights": {
            "version": checkpoint_weights.WEIGHTS_MAP_VERSION,
            "variables": [
                {"name": "w", "dtype": "float32", "shape": [4, 32], "paths": [["w"]]},
                {"name": "b", "dtype": "float32", "shape": [32], "paths": [["b"]]},
            ],
            "initializers": [],
        },
    }
}
# The readers use only the layout's ONNX section (its weights map): a Layout of just that.
LAYOUT = Layout(
    _MANIFEST,
    formats={"onnx": FormatEntry("onnx", _MANIFEST["onnx"], "policy.onnx", False)},
    quantization=None,
)
KEY_W = "policy/w/.ATTRIBUTES/VARIABLE_VALUE"
MiB = 1 << 20


def _policy_checkpoint(directory: Path) -> str:
    return cc.write_policy_checkpoint(directory / "ckpt-7", {"w": W, "b": B}, train_step=7)


def _peak_bytes(fn) -> tuple[Exception | None, int]:
    """What ``fn()`` raised (or None) and the peak of memory it allocated (tracemalloc
    counts numpy's arrays and every bytes object read)."""
    tracemalloc.start()
    try:
        fn()
        raised = None
    except Exception as e:
        raised = e
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return raised, peak


def test_a_checkpoint_written_by_hand_is_what_tf_reads_and_gives_the_mapped_values(tmp_path):
    prefix = _policy_checkpoint(tmp_path)
    assert cc.assert_reader_matches_tf(prefix) == 4  # object graph, w, b, train_step
    reader = tf.train.load_checkpoint(prefix)
    np.testing.assert_array_equal(reader.get_tensor(KEY_W), W)
    values, step = checkpoint_weights.read_tf_checkpoint(LAYOUT, prefix)
    np.testing.assert_array_equal(values[0], W)
    np.testing.assert_array_equal(values[1], B)
    assert step == 7


def test_a_tensor_declared_larger_than_the_weights_map_says_is_refused_unread(tmp_path):
    """An index declaring 640 MB for the [4, 32] variable (a sparse data file: nothing on
    disk) cost 612 MB before; the entry is now checked against the map first."""
    prefix = _policy_checkpoint(tmp_path)
    assert cc.declare_shape(prefix, KEY_W, (40_000_000, 4)) == 640_000_000
    raised, peak = _peak_bytes(lambda: checkpoint_weights.read_tf_checkpoint(LAYOUT, prefix))
    assert isinstance(raised, CheckpointError)
    assert re.search(
        r"ckpt-7: variable w: expected float32 \[4, 32\], got float32 \[40000000, 4\]: a "
        r"checkpoint of another policy structure",
        str(raised),
    ), raised
    assert peak < 4 * MiB, peak
    # The reader itself bounds a read when told how much to expect.
    reader = tensor_bundle.TensorBundle(prefix)
    with pytest.raises(CheckpointError, match=r"w/.ATTRIBUTES/VARIABLE_VALUE: expected at most "):
        reader.get(KEY_W, max_bytes=512)


def test_an_oversized_or_special_index_is_refused_before_reading(tmp_path):
    prefix = _policy_checkpoint(tmp_path)
    index = Path(f"{prefix}.index")
    os.truncate(index, 640 * MiB)  # sparse: 640 MB declared, nothing on disk
    raised, peak = _peak_bytes(lambda: checkpoint_weights.read_tf_checkpoint(LAYOUT, prefix))
    assert isinstance(raised, CheckpointError)
    assert str(raised) == (
        f"{index}: expected a checkpoint index of at most {tensor_bundle.MAX_INDEX_BYTES} bytes "
        f"({tensor_bundle.MAX_TENSORS} tensors at most, ~100 bytes each), got {640 * MiB} bytes"
    )
    assert peak < 4 * MiB, peak
    index.unlink()
    os.mkfifo(index)  # would block a plain open() for ever
    with pytest.raises(CheckpointError, match=r"expected the checkpoint index as a regular file"):
        tensor_bundle.TensorBundle(prefix)


def test_tables_that_spell_out_too_many_or_too_long_names_are_refused(tmp_path):
    prefix = tmp_path / "t"
    entry = cc.entry_proto(1, [0], size=0)
    Path(f"{prefix}.data-00000-of-00001").write_bytes(b"")
    cc.write_index(f"{prefix}.index", {b"k" * (tensor_bundle.MAX_KEY_BYTES + 1): entry})
    with pytest.raises(CheckpointError, match=r"expected keys of at most 4096 bytes"):
        tensor_bundle.TensorBundle(prefix)
    many = {f"{i:06d}".encode(): entry for i in range(tensor_bundle.MAX_TENSORS + 1)}
    cc.write_index(f"{prefix}.index", many)
    with pytest.raises(CheckpointError, match=r"expected at most 65536 tensors"):
        tensor_bundle.TensorBundle(prefix)


def test_an_oversized_state_file_is_refused_before_reading(tmp_path):
    """A 320 MB ``checkpoint`` state file (sparse) cost 612 MB before."""
    _policy_checkpoint(tmp_path)
    state = tmp_path / tensor_bundle.STATE_FILE
    state.write_text('model_checkpoint_path: "ckpt-7"\n')
    os.truncate(state, 320 * MiB)
    raised, peak = _peak_bytes(lambda: checkpoint_weights.find_checkpoints(tmp_path))
    assert isinstance(raised, CheckpointError)
    assert re.fullmatch(
        rf"{re.escape(str(state))}: expected a checkpoint state file of at most 1048576 bytes "
        rf"\(about 10,000 checkpoints kept; set the CheckpointManager's max_to_keep\), got "
        rf"{320 * MiB} bytes",
        str(raised),
    ), raised
    assert peak < 4 * MiB, peak


def _state_file(directory: Path, steps: list[int]) -> None:
    lines = [f'model_checkpoint_path: "ckpt-{steps[-1]}"']
    lines += [f'all_model_checkpoint_paths: "ckpt-{s}"' for s in steps]
    lines += [f"all_model_checkpoint_timestamps: 1700000000.{s}" for s in steps]
    (directory / tensor_bundle.STATE_FILE).write_text("\n".join(lines) + "\n")


def test_a_state_file_of_many_prefixes_costs_only_its_newest(tmp_path):
    """100k prefixes (TF's own format) cost 3.6 s of CPU on every check before: now the
    file is over the cap, and within it only the newest MAX_STATE_CHECKPOINTS count."""
    _state_file(tmp_path, list(range(100_000)))
    with pytest.raises(CheckpointError, match=r"state file of at most 1048576 bytes"):
        tensor_bundle.checkpoint_state(tmp_path)
    steps = list(range(10_000))
    _state_file(tmp_path, steps)
    assert (tmp_path / tensor_bundle.STATE_FILE).stat().st_size < tensor_bundle.MAX_STATE_BYTES
    latest, every = tensor_bundle.checkpoint_state(tmp_path)
    assert latest == tmp_path / "ckpt-9999"
    assert every == [tmp_path / f"ckpt-{s}" for s in steps[-tensor_bundle.MAX_STATE_CHECKPOINTS :]]
    # An old checkpoint still on disk but past the newest 1000 is not looked at.
    for step in (5, 9998, 9999):
        cc.write_policy_checkpoint(tmp_path / f"ckpt-{step}", {"w": W, "b": B}, train_step=step)
    found = checkpoint_weights.find_checkpoints(tmp_path)
    assert [c.step for c in found] == [9998, 9999]


def _mutations():
    """A mutation of one file of a policy checkpoint (or its state file)."""
    files = st.sampled_from(["index", "data", "state"])
    flips = st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(1, 255)), max_size=4)
    cut = st.one_of(st.none(), st.integers(0, 1 << 16))
    insert = st.one_of(st.none(), st.tuples(st.integers(0, 1 << 16), st.binary(max_size=16)))
    return st.tuples(files, flips, cut, insert)


@hypothesis.settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],
)
@hypothesis.given(mutation=_mutations())
def test_fuzz_mutated_policy_checkpoints_give_only_checkpoint_errors(tmp_path, mutation):
    """Byte flips, truncations and insertions anywhere in the index, the data or the
    state file: the values come out, or a CheckpointError; never another exception."""
    run = tmp_path / f"run-{uuid.uuid4().hex}"
    prefix = _policy_checkpoint(run)
    _state_file(run, [7])
    which, flips, cut, insert = mutation
    target = {
        "index": Path(f"{prefix}.index"),
        "data": Path(f"{prefix}.data-00000-of-00001"),
        "state": run / tensor_bundle.STATE_FILE,
    }[which]
    data = bytearray(target.read_bytes())
    for position, xor in flips:
        data[position % len(data)] ^= xor
    if insert is not None:
        data[insert[0] % (len(data) + 1) : insert[0] % (len(data) + 1)] = insert[1]
    if cut is not None:
        del data[cut % (len(data) + 1) :]
    target.write_bytes(bytes(data))
    try:
        checkpoint = checkpoint_weights.select(run)
        values, _ = checkpoint_weights.read_tf_checkpoint(LAYOUT, checkpoint.path)
    except CheckpointError:
        return
    assert [v.shape for v in values] == [(4, 32), (32,)]
