"""Bundle files on disk: atomic writes, manifest validation, tamper detection."""

from __future__ import annotations

import json

import pytest

from tests.toolkit.manifests import minimal_manifest
from toolkit import bundle
from toolkit.errors import BundleError, ExportError


def _build(files: dict[str, bytes], fail_after: int | None = None):
    def build(tmp):
        for i, (name, data) in enumerate(files.items()):
            if fail_after is not None and i == fail_after:
                raise RuntimeError("disk on fire")
            path = tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return minimal_manifest()

    return build


FILES = {"policy.onnx": b"onnx-bytes", "saved_model/saved_model.pb": b"pb-bytes"}


def _siblings(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir())


def test_write_and_read_back(tmp_path):
    out = bundle.write_bundle(tmp_path / "b", _build(FILES))
    manifest = bundle.read_manifest(out)
    assert set(manifest["files"]) == set(FILES)
    import hashlib

    assert manifest["files"]["policy.onnx"]["sha256"] == hashlib.sha256(b"onnx-bytes").hexdigest()
    assert manifest["files"]["policy.onnx"]["size"] == len(b"onnx-bytes")
    assert _siblings(tmp_path) == ["b"]  # no temp folders left


def test_failure_mid_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="disk on fire"):
        bundle.write_bundle(tmp_path / "b", _build(FILES, fail_after=1))
    assert _siblings(tmp_path) == []


def test_existing_output_is_refused_unless_overwrite(tmp_path):
    bundle.write_bundle(tmp_path / "b", _build(FILES))
    with pytest.raises(ExportError, match=r"/b: already exists; pass overwrite=True to replace it"):
        bundle.write_bundle(tmp_path / "b", _build({"x": b"1"}))
    other = {**FILES, "x": b"1"}
    bundle.write_bundle(tmp_path / "b", _build(other), overwrite=True)
    assert set(bundle.read_manifest(tmp_path / "b")["files"]) == set(other)
    assert _siblings(tmp_path) == ["b"]


def test_failed_overwrite_keeps_the_old_bundle(tmp_path):
    bundle.write_bundle(tmp_path / "b", _build(FILES))
    with pytest.raises(RuntimeError):
        bundle.write_bundle(tmp_path / "b", _build(FILES, fail_after=0), overwrite=True)
    assert set(bundle.read_manifest(tmp_path / "b")["files"]) == set(FILES)
    assert _siblings(tmp_path) == ["b"]


def test_unwritable_location(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ExportError, match="cannot create the output folder"):
        bundle.write_bundle(blocker / "sub" / "b", _build(FILES))


@pytest.fixture
def written(tmp_path):
    return bundle.write_bundle(tmp_path / "b", _build(FILES))


def test_missing_bundle(tmp_path):
    with pytest.raises(BundleError, match=r"/nope: no such bundle"):
        bundle.read_manifest(tmp_path / "nope")


def test_folder_without_manifest(tmp_path):
    with pytest.raises(BundleError, match="no manifest.json; not a policy-toolkit bundle"):
        bundle.read_manifest(tmp_path)


def test_tampered_file(written):
    (written / "policy.onnx").write_bytes(b"ONNX-bytes")  # same size, other bytes
    with pytest.raises(BundleError, match=r"policy.onnx: expected sha256 [0-9a-f]{12}\.\.\., got"):
        bundle.read_manifest(written)


def test_truncated_file(written):
    (written / "policy.onnx").write_bytes(b"onnx")
    with pytest.raises(BundleError, match="policy.onnx: expected 10 bytes, got 4 .*truncated"):
        bundle.read_manifest(written)


def test_missing_file(written):
    (written / "saved_model" / "saved_model.pb").unlink()
    with pytest.raises(
        BundleError, match="file saved_model/saved_model.pb listed in manifest.json is missing"
    ):
        bundle.read_manifest(written)


def _edit_manifest(written, **changes):
    path = written / "manifest.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_newer_format_version(written):
    _edit_manifest(written, format_version=bundle.FORMAT_VERSION + 1)
    with pytest.raises(
        BundleError, match="bundle format version 2 is newer than this policy-toolkit reads"
    ):
        bundle.read_manifest(written)


def test_not_a_bundle_manifest(written):
    _edit_manifest(written, format="something-else")
    with pytest.raises(
        BundleError, match="expected format 'policy-toolkit-bundle', got 'something-else'"
    ):
        bundle.read_manifest(written)
    (written / "manifest.json").write_text("{ not json")
    with pytest.raises(BundleError, match="manifest.json: not valid JSON"):
        bundle.read_manifest(written)


def test_paths_leaving_the_bundle_are_refused(written):
    _edit_manifest(written, files={"../outside": {"sha256": "0" * 64, "size": 0}})
    with pytest.raises(
        BundleError,
        match=r'manifest.json: files\["../outside"\]: expected a relative path inside the bundle',
    ):
        bundle.read_manifest(written)
