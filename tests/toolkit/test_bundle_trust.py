"""Bundles as untrusted input: containment, bounded regular reads, the manifest schema,
ONNX external data, and crash-safe replacement (kill points made deterministic)."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.toolkit.manifests import minimal_manifest
from toolkit import bundle, onnx_proto
from toolkit.bundle import _manifest_check
from toolkit.bundle import manifest as manifest_lib
from toolkit.bundle import schema as schema_lib
from toolkit.errors import BundleError

ROOT = Path(__file__).resolve().parents[2]
FILES = {"policy.onnx": b"onnx-bytes", "saved_model/saved_model.pb": b"pb-bytes"}


def _build(files=FILES, **changes):
    def build(tmp):
        for name, data in files.items():
            path = tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return minimal_manifest(**changes)

    return build


@pytest.fixture
def written(tmp_path):
    return bundle.write_bundle(tmp_path / "b", _build())


def _manifest(path):
    return json.loads((path / "manifest.json").read_text())


def _save(path, manifest):
    (path / "manifest.json").write_text(json.dumps(manifest))


# --- containment --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rel",
    ["../outside.onnx", "/etc/passwd", "a/../../x", "./policy.onnx", "a//b", "a\\..\\b", ""],
)
def test_manifest_paths_that_leave_or_blur_the_bundle_are_refused(written, rel):
    manifest = _manifest(written)
    manifest["onnx"]["file"] = rel
    _save(written, manifest)
    with pytest.raises(BundleError, match=r"manifest.json: onnx.file: expected"):
        bundle.read_manifest(written, check_files=False)


def test_a_symlink_leaving_the_bundle_is_refused_without_telling_its_target(written, tmp_path):
    outside = tmp_path / "secret.bin"
    outside.write_bytes(b"x" * 12345)
    target = written / "policy.onnx"
    target.unlink()
    target.symlink_to(outside)
    with pytest.raises(BundleError) as error:
        bundle.read_manifest(written)
    message = str(error.value)
    assert "policy.onnx is reached through a symbolic link" in message
    assert "12345" not in message and "secret" not in message
    with pytest.raises(BundleError, match="symbolic link"):
        bundle.read_member(written, "policy.onnx", key="onnx.file")


def test_a_folder_symlinked_elsewhere_is_refused(written, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    (written / "saved_model").rename(elsewhere)
    (written / "saved_model").symlink_to(elsewhere)
    with pytest.raises(
        BundleError, match="saved_model/saved_model.pb is reached through a symbolic"
    ):
        bundle.read_manifest(written)


def test_a_fifo_is_refused_without_blocking(written):
    os.unlink(written / "policy.onnx")
    os.mkfifo(written / "policy.onnx")
    with pytest.raises(BundleError, match=r"policy.onnx: expected a regular file, got a FIFO"):
        bundle.read_manifest(written)
    os.unlink(written / "manifest.json")
    os.mkfifo(written / "manifest.json")
    with pytest.raises(BundleError, match=r"manifest.json: expected a regular file, got a FIFO"):
        bundle.read_manifest(written)


def test_dev_zero_and_folders_are_refused(written):
    manifest = written / "manifest.json"
    manifest.unlink()
    manifest.symlink_to("/dev/zero")
    with pytest.raises(BundleError, match="symbolic link"):
        bundle.read_manifest(written)
    manifest.unlink()
    manifest.mkdir()
    with pytest.raises(BundleError, match="manifest.json: expected a regular file, got a folder"):
        bundle.read_manifest(written)


def test_an_oversized_manifest_is_refused_before_it_is_read(written, monkeypatch):
    monkeypatch.setattr(bundle.files, "MAX_MANIFEST_BYTES", 100)
    with pytest.raises(BundleError, match=r"manifest.json: expected at most 100 bytes, got \d+"):
        bundle.read_manifest(written)


def test_reads_stop_at_the_declared_size(written):
    (written / "policy.onnx").write_bytes(b"onnx-bytes" + b"\0" * 10**6)
    with pytest.raises(BundleError, match=r"policy.onnx: expected 10 bytes, got 1000010"):
        bundle.read_member(
            written, "policy.onnx", key="onnx.file", files=_manifest(written)["files"]
        )


def test_unlisted_files_and_links_in_the_saved_model_folder_are_refused(written, tmp_path):
    files = _manifest(written)["files"]
    bundle.check_tree(written, "saved_model", files, "saved_model.dir")
    (written / "saved_model" / "extra.pb").write_bytes(b"?")
    with pytest.raises(BundleError, match="saved_model/extra.pb is in the bundle but not listed"):
        bundle.check_tree(written, "saved_model", files, "saved_model.dir")
    (written / "saved_model" / "extra.pb").unlink()
    (written / "saved_model" / "link").symlink_to(tmp_path)
    with pytest.raises(BundleError, match="saved_model/link is reached through a symbolic link"):
        bundle.check_tree(written, "saved_model", files, "saved_model.dir")


# --- the manifest schema --------------------------------------------------------------------


def test_the_published_schema_is_the_one_readers_use():
    # One copy: the file the package ships (and docs/bundle-format.md links to).
    published = ROOT / "toolkit" / "schemas" / "manifest.schema.json"
    assert json.loads(published.read_text()) == manifest_lib.schema()
    assert not (ROOT / "docs" / "manifest.schema.json").exists()


def test_violations_name_the_json_path(written):
    manifest = _manifest(written)
    manifest["signatures"]["distribution"]["inputs"][0]["shape"] = [None, "x"]
    manifest["train_step"] = "soon"
    manifest["policy"]["action"]["kind"] = "telepathy"
    _save(written, manifest)
    with pytest.raises(BundleError) as error:
        bundle.read_manifest(written)
    lines = str(error.value).splitlines()
    expected = 'signatures.distribution.inputs[0].shape[1]: expected an int or null, got "x"'
    assert f"manifest.json: {expected}" in lines
    assert 'manifest.json: train_step: expected an int or null, got "soon"' in lines
    assert any(
        line.startswith("manifest.json: policy.action.kind: expected one of") for line in lines
    )


def test_huge_shapes_are_refused_up_front(written):
    manifest = _manifest(written)
    manifest["specs"]["policy_state"] = {"kind": "array_spec", "shape": [10**9], "dtype": "float32"}
    _save(written, manifest)
    with pytest.raises(
        BundleError, match=r"specs.policy_state.shape\[0\]: expected a value <= 16777216"
    ):
        bundle.read_manifest(written)
    manifest["specs"]["policy_state"]["shape"] = [10**4, 10**4]
    _save(written, manifest)
    with pytest.raises(BundleError, match=r"specs.policy_state.shape: expected at most 16777216"):
        bundle.read_manifest(written)


def test_categories_outside_the_action_spec_are_refused(written):
    manifest = _manifest(written)
    manifest["specs"]["action"]["maximum"] = 0
    _save(written, manifest)
    with pytest.raises(BundleError, match=r"distribution: expected categories within the action"):
        bundle.read_manifest(written)


def test_signatures_must_agree_with_the_specs(written):
    manifest = _manifest(written)
    manifest["signatures"]["distribution"]["inputs"][3]["dtype"] = "float64"
    _save(written, manifest)
    with pytest.raises(
        BundleError,
        match=r"inputs\[3\]: expected float32 \[null, 2\] for 'observation' \(its spec\), got "
        r"float64",
    ):
        bundle.read_manifest(written)


def _schema_errors(manifest):
    # Imported here, not at collection: jsonschema takes about a second to import (its
    # format checkers build grammars), paid by every xdist worker that collects this file.
    import jsonschema

    validator = jsonschema.Draft202012Validator(manifest_lib.schema())
    return list(validator.iter_errors(manifest))


def _walk(manifest):
    """The schema interpreter's violations (without the generated check first)."""
    validator = schema_lib._Validator(schema_lib.schema())
    validator.check(manifest, schema_lib.schema(), "")
    return validator.errors


def test_jsonschema_agrees_on_exported_manifests():
    """A third party validating with jsonschema accepts what the exporters write."""
    from tests import exported_bundles

    for case_id in ("tf/greedy_q_rnn", "tf/mixture", "tf/ou_noise_rnn_greedy"):
        path, _ = exported_bundles.bundle_for(case_id)
        manifest = _manifest(path)
        assert _schema_errors(manifest) == []
        assert manifest_lib.violations(manifest) == []
        # the generated check passes them without the schema walk
        assert _manifest_check.valid(manifest)


hypothesis = pytest.importorskip("hypothesis")
st = pytest.importorskip("hypothesis.strategies")

_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, (*prefix, i))


def _with_files(manifest):
    manifest = copy.deepcopy(manifest)
    manifest["files"] = {
        "policy.onnx": {"sha256": "a" * 64, "size": 10},
        "saved_model/saved_model.pb": {"sha256": "b" * 64, "size": 8},
    }
    return manifest


_BASE = _with_files(minimal_manifest())
_ALL_PATHS = [p for p in _paths(_BASE) if p]


@hypothesis.settings(max_examples=300, deadline=None, derandomize=True)
@hypothesis.given(
    path=st.sampled_from(_ALL_PATHS),
    value=_JSON,
    delete=st.booleans(),
)
def test_fuzzed_manifest_fields_give_one_line_per_violation_and_agree_with_jsonschema(
    path, value, delete
):
    manifest = copy.deepcopy(_BASE)
    node = manifest
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    schema_errors = _schema_errors(manifest)
    ours = manifest_lib.schema_violations(manifest)
    if _manifest_check.valid(manifest):  # passes only what the schema walk passes
        assert _walk(manifest) == [], (path, value, delete)
    # The published schema and the readers' interpreter of it agree on every mutation,
    # but for one documented point: readers want ints written without a fraction (2, not
    # 2.0), which JSON Schema's "integer" allows.
    if schema_errors:
        assert ours, (path, value, delete, schema_errors[:1])
    elif ours:
        assert all(re.search(r"expected an int[^,]*, got -?\d+\.0$", e) for e in ours), ours
    try:
        manifest_lib.validate(manifest)
    except BundleError as e:
        lines = str(e).splitlines()
        assert 1 <= len(lines) <= manifest_lib.MAX_VIOLATIONS + 1
        for line in lines:
            assert re.match(r"manifest\.json: .+: \S", line), line


def test_the_validators_scalar_shortcut_reports_what_the_full_check_reports(monkeypatch):
    """Scalars against simple schemas skip the recursive check only where it finds nothing:
    every mutation of every field gives the same violations with the shortcut off."""
    values = [None, True, 0, -1, 1.5, float("inf"), 2**70, "", "x" * 2000, "float32", [], {}]
    cases = []
    for path in _ALL_PATHS:
        for value in values:
            manifest = copy.deepcopy(_BASE)
            node = manifest
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
            cases.append(manifest)
    fast = [manifest_lib.violations(m) for m in cases]
    monkeypatch.setattr(schema_lib, "_passes_simple", lambda value, facts: False)
    full = [manifest_lib.violations(m) for m in cases]
    assert fast == full
    assert sum(1 for v in full if v) > len(cases) // 2  # most mutations are violations


# --- ONNX external data ----------------------------------------------------------------------


def test_external_data_is_found_in_initializers_and_subgraphs(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    tensor = numpy_helper.from_array(np.ones(3, np.float32), "w")
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "w.bin"
    constant = helper.make_node("Constant", [], ["y"], value=tensor)
    branch = helper.make_graph(
        [constant], "b", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])]
    )
    node = helper.make_node("If", ["c"], ["z"], then_branch=branch, else_branch=branch)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [3])],
    )
    data = helper.make_model(graph).SerializeToString()
    with pytest.raises(BundleError, match=r"x.onnx: expected a self-contained ONNX model, got"):
        onnx_proto.check_self_contained(data, "x.onnx")
    plain = helper.make_model(
        helper.make_graph(
            [helper.make_node("Identity", ["a"], ["b"])],
            "g",
            [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1])],
            initializer=[numpy_helper.from_array(np.ones(1, np.float32), "i")],
        )
    )
    assert onnx.checker.check_model(plain) is None
    assert onnx_proto.check_self_contained(plain.SerializeToString(), "p").external_tensors == []


@hypothesis.settings(max_examples=200, deadline=None, derandomize=True)
@hypothesis.given(data=st.binary(max_size=200))
def test_the_onnx_scanner_refuses_garbage_with_a_bundle_error(data):
    try:
        onnx_proto.scan_model(data, "x.onnx")
    except BundleError as e:
        assert str(e).startswith("x.onnx: not a valid ONNX model")


# --- crash safety ------------------------------------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from toolkit import bundle
    from toolkit.bundle import writing
    from tests.toolkit.test_bundle_trust import _build

    point, exchange, target = sys.argv[1], sys.argv[2] == "1", Path(sys.argv[3])
    writing._use_exchange = exchange
    def hook(name):
        if name == point:
            os._exit(9)
    writing._crash_hook = hook
    new = {"policy.onnx": b"new-onnx", "saved_model/saved_model.pb": b"new-pb"}
    bundle.write_bundle(target, _build(new), overwrite=True)
    """
)

_POINTS = [
    ("written", True),
    ("synced", True),
    ("exchanged", True),
    ("exchange-synced", True),
    ("written", False),
    ("moved-old", False),
    ("moved-new", False),
    ("fallback-synced", False),
]


@pytest.mark.parametrize(("point", "exchange"), _POINTS)
def test_a_kill_at_every_point_of_a_replacement_leaves_a_complete_bundle(tmp_path, point, exchange):
    target = tmp_path / "b"
    bundle.write_bundle(target, _build())
    decoy = tmp_path / ".b.tmp-notours"
    decoy.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, point, "1" if exchange else "0", str(target)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 9, result.stderr.decode()[-2000:]
    # The next call on the path finds a complete bundle, old or new (restoring it first
    # where the swap was two renames).
    manifest = bundle.read_manifest(target)
    content = (target / "policy.onnx").read_bytes()
    assert content in (b"onnx-bytes", b"new-onnx")
    assert manifest["files"]["policy.onnx"]["size"] == len(content)
    # The next write removes the killed run's leftovers, and nothing that is not ours.
    bundle.write_bundle(target, _build(), overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".b.tmp-notours", "b"]


def test_the_exchange_swaps_atomically_on_linux(tmp_path):
    if not sys.platform.startswith("linux"):
        pytest.skip("renameat2 is Linux-only")
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    (b / "x").write_text("b")
    from toolkit.bundle import writing

    assert writing._exchange(a, b)
    assert (a / "x").read_text() == "b" and (b / "x").read_text() == "a"


def test_a_write_still_running_keeps_its_temporary_folder(tmp_path):
    """Only leftovers of killed runs are stale: a live writer holds its folder's lock."""
    target = tmp_path / "b"
    seen = []

    def build(tmp):
        # Another write to the same target, while this one is building.
        bundle.write_bundle(target, _build(), overwrite=True)
        seen.append(tmp.exists())
        return _build()(tmp)

    bundle.write_bundle(target, build, overwrite=True)
    assert seen == [True]
    bundle.read_manifest(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
