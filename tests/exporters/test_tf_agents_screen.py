"""A TF-Agents save is checked (files, sizes, ops) before TensorFlow loads or runs any of it.

The hostile look-alikes (tests/tf_agents_saved.py ``save_hostile``) imported with exit
0 before the screen: the write_file one wrote four files (at load, and from the
distribution, get_train_step and get_metadata), the read_file one put the file into the
manifest, the py_function one failed inside tf2onnx. Each is now refused naming the op
and the function holding it, and nothing is written.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from typer.testing import CliRunner

from exporters import tf_agents
from exporters.tf_agents import ops, screen
from tests.tf_agents_saved import save_hostile, save_like_policy_saver
from toolkit.cli import app
from toolkit.errors import BundleError

DATA = Path(__file__).resolve().parent.parent / "data"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """``kind -> (saved policy, the folder or file it targets)``, saved once."""
    root = tmp_path_factory.mktemp("hostile")
    out = {}
    for kind in ("write_file", "read_file", "py_function"):
        target = root / f"{kind}_target"
        if kind == "read_file":
            target.write_text("secret of this machine\n")
        else:
            target.mkdir()
        out[kind] = (save_hostile(root / kind, kind, target), target)
    return out


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """A harmless deterministic look-alike (copy it before changing it)."""
    return save_like_policy_saver(tmp_path_factory.mktemp("plain") / "saved", "deterministic")


def copy_of(plain: Path, tmp_path: Path) -> Path:
    target = tmp_path / "saved"
    shutil.copytree(plain, target)
    return target


def assert_nothing_written(target: Path, tmp_path: Path) -> None:
    if target.is_dir():
        assert sorted(target.iterdir()) == []
    assert not (tmp_path / "bundle").exists()


# --- ops ---------------------------------------------------------------------------------


def test_a_save_that_writes_files_is_refused_before_loading(hostile, tmp_path):
    saved, target = hostile["write_file"]
    with pytest.raises(BundleError) as info:
        tf_agents.import_tf_agents(saved, tmp_path / "bundle")
    message = str(info.value)
    # The resource initialiser runs at load: it is named first (functions sorted).
    assert message.startswith(f"{saved / 'saved_model.pb'}: function __inference__initializer_"), (
        message
    )
    assert ": op WriteFile (file access) is not allowed (nor function __inference_action_" in (
        message
    )
    assert message.endswith(
        "and 1 more); a TF-Agents policy only computes (no files, Python or network), and "
        "nothing of this save was loaded or run"
    )
    assert_nothing_written(target, tmp_path)
    # Every way in loads through the screen.
    with pytest.raises(BundleError, match="op WriteFile"):
        tf_agents.load_saved_policy(saved)
    with pytest.raises(BundleError, match="op WriteFile"):
        tf_agents.import_tf_agents_checkpoint(saved, saved, tmp_path / "bundle")
    with pytest.raises(BundleError, match="op WriteFile"):
        tf_agents.TFAgentsPolicy(saved)
    assert_nothing_written(target, tmp_path)


def test_a_save_that_reads_a_file_into_its_metadata_is_refused(hostile, tmp_path):
    saved, _ = hostile["read_file"]
    with pytest.raises(BundleError) as info:
        tf_agents.import_tf_agents(saved, tmp_path / "bundle")
    assert str(info.value).startswith(
        f"{saved / 'saved_model.pb'}: function __inference_get_metadata_"
    )
    assert ": op ReadFile (file access) is not allowed; a TF-Agents policy" in str(info.value)
    assert not (tmp_path / "bundle").exists()


def test_a_save_that_calls_python_is_refused(hostile, tmp_path):
    saved, _ = hostile["py_function"]
    with pytest.raises(BundleError) as info:
        tf_agents.import_tf_agents(saved, tmp_path / "bundle")
    assert ": op EagerPyFunc (runs Python) is not allowed" in str(info.value)
    assert "__inference_action_" in str(info.value)
    assert "__inference_distribution_" in str(info.value)
    assert not (tmp_path / "bundle").exists()


@pytest.mark.parametrize("kind", ["write_file", "read_file", "py_function"])
def test_the_cli_refuses_each_hostile_save_in_one_line(kind, hostile, tmp_path):
    saved, target = hostile[kind]
    before = sorted(tmp_path.iterdir())
    result = CliRunner().invoke(app, ["import-tf-agents", str(saved), str(tmp_path / "bundle")])
    assert result.exit_code == 2, result.output
    # Progress lines, then the error in one line.
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [result.stderr.splitlines()[-1]]
    assert errors[0].startswith(f"error: {saved / 'saved_model.pb'}: function ")
    assert "is not allowed" in errors[0] and "Traceback" not in result.output
    assert sorted(tmp_path.iterdir()) == before  # no bundle, no staging folder
    if target.is_dir():
        assert sorted(target.iterdir()) == []


def test_the_allow_list_names_registered_ops_and_refusals_say_why():
    from tensorflow.python.framework import op_def_registry

    assert sorted(o for o in ops.ALLOWED if op_def_registry.get(o) is None) == []
    assert not {"ReadFile", "WriteFile", "EagerPyFunc", "PyFunc", "PrintV2"} & ops.ALLOWED
    assert ops.category("PyFuncStateless") == "runs Python"
    assert ops.category("MatchingFiles") == "file access"
    assert ops.category("TFRecordDatasetV2") == "file access"
    assert ops.category("RemoteCall") == "network or another device"
    assert ops.category("CollectiveReduceV2") == "network or another device"
    assert ops.category("PrintV2") == "writes to an output stream or a file"
    assert ops.category("Abort") == "ends the process"
    assert ops.category("XlaCallModule") == "not on the import's allow-list"


def _real_saves(tmp_path: Path) -> list[Path]:
    with tarfile.open(DATA / "tf_agents_0_19" / "saves.tar.xz") as archive:
        archive.extractall(tmp_path, filter="data")
    saves = sorted(tmp_path.glob("*/saved_policy"))
    saves += sorted((DATA / "tf_agents_trigger").glob("*/policies/*policy"))
    assert len(saves) == 17 + 12
    return saves


def test_every_save_tf_agents_made_passes_and_its_saver_is_never_reached(tmp_path):
    """TF-Agents' saves hold the TF1 saver (SaveV2, RestoreV2) in functions that
    tf.saved_model.load never runs: reachability, not the whole library, is checked."""
    from tensorflow.core.protobuf import saved_model_pb2

    for saved in _real_saves(tmp_path):
        screen.check_saved_model(saved)
        proto = saved_model_pb2.SavedModel.FromString((saved / "saved_model.pb").read_bytes())
        meta_graph = proto.meta_graphs[0]
        library = {node.op for f in meta_graph.graph_def.library.function for node in f.node_def}
        assert {"SaveV2", "RestoreV2"} <= library, saved
        reached = screen.reachable_functions(meta_graph)
        assert reached, saved
        assert not any("SaveV2" in op_types for op_types in reached.values())
        assert set().union(*reached.values()) <= ops.ALLOWED


# --- files and sizes ---------------------------------------------------------------------


def test_an_oversized_saved_model_is_refused_unread(plain, tmp_path):
    saved = copy_of(plain, tmp_path)
    pb = saved / "saved_model.pb"
    with open(pb, "r+b") as f:
        f.truncate(128 << 20)  # sparse: 128 MB declared, nothing more on disk
    with pytest.raises(BundleError) as info:
        tf_agents.import_tf_agents(saved, tmp_path / "bundle")
    assert str(info.value) == (
        f"{pb}: expected a SavedModel of at most {16 << 20} bytes, got {128 << 20} bytes"
    )
    assert not (tmp_path / "bundle").exists()


def test_an_oversized_specs_file_is_refused_unread(plain, tmp_path):
    saved = copy_of(plain, tmp_path)
    specs = saved / "policy_specs.pbtxt"
    with open(specs, "r+b") as f:
        f.truncate(2 << 20)
    with pytest.raises(BundleError) as info:
        tf_agents.read_policy_specs(saved)
    assert str(info.value) == (
        f"{specs}: expected a specs file of at most {1 << 20} bytes, got {2 << 20} bytes"
    )


def test_a_fifo_in_place_of_the_saved_model_never_blocks(plain, tmp_path):
    saved = copy_of(plain, tmp_path)
    (saved / "saved_model.pb").unlink()
    os.mkfifo(saved / "saved_model.pb")
    with pytest.raises(BundleError, match="expected a SavedModel as a regular file"):
        screen.check_saved_model(saved)


@pytest.mark.parametrize("name", ["saved_model.pbtxt", "saved_model.cpb"])
def test_another_saved_model_format_beside_the_pb_is_refused(name, plain, tmp_path):
    saved = copy_of(plain, tmp_path)
    (saved / name).write_bytes(b"")
    with pytest.raises(BundleError) as info:
        screen.check_saved_model(saved)
    assert str(info.value) == (
        f"{saved / name}: expected only saved_model.pb (PolicySaver's format), got {name}, "
        "which TensorFlow would read instead"
    )


def test_a_tf1_saved_model_is_refused(plain, tmp_path):
    from tensorflow.core.protobuf import saved_model_pb2

    saved = copy_of(plain, tmp_path)
    pb = saved / "saved_model.pb"
    proto = saved_model_pb2.SavedModel.FromString(pb.read_bytes())
    proto.meta_graphs[0].ClearField("object_graph_def")
    pb.write_bytes(proto.SerializeToString())
    with pytest.raises(BundleError, match=r"expected a TensorFlow 2 SavedModel .* got a TF1 one"):
        tf_agents.import_tf_agents(saved, tmp_path / "bundle")


# --- the variables -----------------------------------------------------------------------


def _rewrite_variables(saved: Path, replace: dict[str, np.ndarray]) -> None:
    """Writes ``variables/variables`` again with some tensors replaced (the object graph
    and every other tensor kept), as a tampered save would be."""
    prefix = str(saved / "variables" / "variables")
    reader = tf.train.load_checkpoint(prefix)
    names = sorted(reader.get_variable_to_shape_map())
    values = [replace.get(n, reader.get_tensor(n)) for n in names]
    for path in (saved / "variables").iterdir():
        path.unlink()
    tf.raw_ops.SaveV2(
        prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names), tensors=values
    )


def test_a_variable_declared_larger_than_the_saved_models_is_refused(plain, tmp_path):
    saved = copy_of(plain, tmp_path)
    key = "w_move/.ATTRIBUTES/VARIABLE_VALUE"
    _rewrite_variables(saved, {key: np.zeros((300, 2000), np.float32)})
    with pytest.raises(BundleError) as info:
        tf_agents.import_tf_agents(saved, tmp_path / "bundle")
    assert str(info.value) == (
        f"{saved / 'variables' / 'variables.index'}: {key}: the index declares float32 "
        "[300, 2000], the SavedModel's variable is float32 [3, 2]"
    )


def test_weights_are_bounded_in_all_before_tensorflow_reads_them(plain, tmp_path, monkeypatch):
    saved = copy_of(plain, tmp_path)
    monkeypatch.setattr(screen, "MAX_VARIABLE_BYTES", 40)
    index = saved / "variables" / "variables.index"
    with pytest.raises(BundleError, match=rf"^{index}: expected at most 40 bytes of weights, got"):
        tf_agents.load_saved_policy(saved)
    # A TF-Agents checkpoint read with TensorFlow is bounded the same way.
    with pytest.raises(BundleError, match=r"expected at most 40 bytes of weights"):
        tf_agents.import_tf_agents_checkpoint(plain, plain, tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_a_tensor_past_the_end_of_its_data_file_is_refused(plain, tmp_path):
    saved = copy_of(plain, tmp_path)
    (data,) = (saved / "variables").glob("variables.data-*")
    with open(data, "r+b") as f:
        f.truncate(8)
    with pytest.raises(BundleError, match=r"expected its bytes within its data file \(8 bytes\)"):
        screen.check_saved_model(saved)
