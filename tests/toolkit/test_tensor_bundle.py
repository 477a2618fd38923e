"""toolkit.tensor_bundle: TF checkpoints read without TensorFlow, checked against TF's reader."""

from __future__ import annotations

import contextlib
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tests import checkpoint_checks as cc
from tests.tf_agents_saved import REFERENCE
from toolkit import tensor_bundle
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
        REFERENCE / case / "checkpoint" / "variables" / "variables",
        REFERENCE / case / "saved_policy" / "variables" / "variables",
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
