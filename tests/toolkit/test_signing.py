"""Signed bundles: OpenSSF model-signing interop both ways, and every trust-policy refusal.

One exported bundle (cases_runtime's greedy_q: SavedModel, ONNX and LiteRT) is signed once
per module; each test works on its own copy.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

import runtimes
from tests.contract import cases_runtime as cr
from tests.signing_keys import write_key_pair
from toolkit import bundle
from toolkit.errors import TrustError

BACKENDS = ("onnx", "litert", "tf")


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    return {"ours": write_key_pair(folder, "ours"), "other": write_key_pair(folder, "other")}


@pytest.fixture(scope="module")
def signed(tmp_path_factory, keys):
    path = shutil.copytree(cr.bundle("greedy_q"), tmp_path_factory.mktemp("s") / "bundle")
    bundle.sign_bundle(path, keys["ours"][0])
    return path


@pytest.fixture
def copy(signed, tmp_path):
    return Path(shutil.copytree(signed, tmp_path / "bundle"))


def _rehash(root: Path, rel: str) -> None:
    """Rewrites the manifest's hash of ``rel`` to match: what an attacker would do."""
    manifest = json.loads((root / bundle.MANIFEST).read_text())
    data = (root / rel).read_bytes()
    manifest["files"][rel] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    (root / bundle.MANIFEST).write_text(json.dumps(manifest))


def _model_signing_verify(path: Path, public: Path) -> None:
    from model_signing import verifying

    verifying.Config().use_elliptic_key_verifier(public_key=public).verify(
        path, path / bundle.SIGNATURE_FILE
    )


def test_our_signature_is_accepted_by_model_signing_and_refused_when_changed(copy, keys):
    _model_signing_verify(copy, keys["ours"][1])
    with pytest.raises(ValueError, match="Key mismatch"):
        _model_signing_verify(copy, keys["other"][1])
    (copy / bundle.ONNX_FILE).write_bytes((copy / bundle.ONNX_FILE).read_bytes() + b"\0")
    with pytest.raises(ValueError, match=r"Signature mismatch: .*Hash mismatch for .*policy.onnx"):
        _model_signing_verify(copy, keys["ours"][1])


def test_a_model_signing_signature_is_accepted_by_ours(tmp_path, keys):
    from model_signing import hashing, signing

    path = Path(shutil.copytree(cr.bundle("greedy_q"), tmp_path / "bundle"))
    signing.Config().use_elliptic_key_signer(private_key=keys["ours"][0]).set_hashing_config(
        hashing.Config().set_ignored_paths(paths=[bundle.SIGNATURE_FILE])
    ).sign(path, path / bundle.SIGNATURE_FILE)
    policy = runtimes.load_policy(path, "onnx", trust=keys["ours"][1])
    assert policy.train_step == 7
    signed = bundle.verify_bundle(path, bundle.TrustPolicy.from_files([keys["ours"][1]]))
    listed = json.loads((path / bundle.MANIFEST).read_text())["files"]
    assert set(signed) == {bundle.MANIFEST, *listed}
    with pytest.raises(TrustError, match="signed by a key the trust policy does not hold"):
        runtimes.load_policy(path, "onnx", trust=keys["other"][1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_signed_bundle_loads_on_every_backend_with_its_key(signed, keys, backend):
    policy = runtimes.load_policy(signed, backend, trust=[keys["other"][1], keys["ours"][1]])
    assert policy.backend == backend


def _unsigned(root: Path, keys) -> None:
    (root / bundle.SIGNATURE_FILE).unlink()


def _other_key(root: Path, keys) -> None:
    bundle.sign_bundle(root, keys["other"][0])


def _changed_and_rehashed(root: Path, keys) -> None:
    rel = "policy.tflite"
    data = bytearray((root / rel).read_bytes())
    data[-1] ^= 1
    (root / rel).write_bytes(bytes(data))
    _rehash(root, rel)


def _added(root: Path, keys) -> None:
    (root / "notes.txt").write_text("not signed")


def _removed(root: Path, keys) -> None:
    manifest = json.loads((root / bundle.MANIFEST).read_text())
    (root / bundle.LITERT_FILE).unlink()
    manifest["formats"].remove("litert")
    manifest.pop("litert")
    del manifest["files"][bundle.LITERT_FILE]
    (root / bundle.MANIFEST).write_text(json.dumps(manifest))


def _another_bundles_signature(root: Path, keys) -> None:
    from tests.toolkit.manifests import rewrite_manifest

    # Another bundle (other metadata, its copies and hashes consistent), signed by the
    # same key: its signature must not pass for this one.
    other = shutil.copytree(root, root.parent / "other")
    (other / bundle.SIGNATURE_FILE).unlink()
    rewrite_manifest(other, lambda m: m["metadata"].update(kind="another policy"))
    bundle.sign_bundle(other, keys["ours"][0])
    shutil.copy(other / bundle.SIGNATURE_FILE, root / bundle.SIGNATURE_FILE)


REFUSALS = {
    "unsigned": (_unsigned, r"not signed \(no model.sig\)"),
    "other_key": (_other_key, "signed by a key the trust policy does not hold"),
    "changed_rehashed": (_changed_and_rehashed, r"changed: manifest.json, policy.tflite\)"),
    "added": (_added, r"not signed: notes.txt\)"),
    "removed": (_removed, r"changed: manifest.json; missing: policy.tflite\)"),
    "other_bundle": (_another_bundles_signature, r"not the bundle that was signed \(changed: "),
}


@pytest.mark.parametrize("backend", ["onnx", "tf"] + ["litert"])
@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_the_trust_policy_refuses(copy, keys, backend, case):
    damage, message = REFUSALS[case]
    damage(copy, keys)
    with pytest.raises(TrustError, match=message):
        runtimes.load_policy(copy, backend, trust=keys["ours"][1])
    if case in ("unsigned", "other_key", "added"):
        # Without a trust policy such bundles load as before: only the signature tells.
        runtimes.load_policy(copy, backend, trust=False)


def test_a_killed_signs_temporary_file_is_removed_not_signed(copy, keys):
    """A sign killed before its rename leaves ``.model.sig.tmp-*``; the next sign removes
    it rather than signing it as a file of the bundle (a look-alike folder stays)."""
    (copy / ".model.sig.tmp-deadbeef").write_text('{"half": ')
    (copy / ".model.sig.tmp-folder").mkdir()
    bundle.sign_bundle(copy, keys["ours"][0])
    assert not (copy / ".model.sig.tmp-deadbeef").exists()
    assert (copy / ".model.sig.tmp-folder").is_dir()
    (copy / ".model.sig.tmp-folder").rmdir()
    runtimes.load_policy(copy, "onnx", trust=keys["ours"][1])
    _model_signing_verify(copy, keys["ours"][1])


def test_the_environment_sets_the_policy_for_every_load(copy, keys, monkeypatch):
    monkeypatch.setenv(bundle.TRUST_KEYS_ENV, str(keys["other"][1]))
    with pytest.raises(TrustError, match="does not hold"):
        runtimes.load_policy(copy, "onnx")
    runtimes.load_policy(copy, "onnx", trust=keys["ours"][1])  # an explicit policy wins
    runtimes.load_policy(copy, "onnx", trust=False)
    monkeypatch.setenv(bundle.TRUST_KEYS_ENV, f"{keys['other'][1]}:{keys['ours'][1]}")
    runtimes.load_policy(copy, "onnx")


def test_a_published_versions_mirror_is_accepted_as_signed(copy, keys, tmp_path):
    from runtimes.serving.publish import publish

    version = publish(copy, tmp_path / "base", version=3)
    assert (version / "saved_model.pb").exists()
    runtimes.load_policy(version, "onnx", trust=keys["ours"][1])
    (version / "saved_model.pb").unlink()
    (version / "saved_model.pb").write_bytes(b"not the signed graph")
    with pytest.raises(TrustError, match=r"not signed: saved_model.pb\)"):
        runtimes.load_policy(version, "onnx", trust=keys["ours"][1])


def test_bad_keys_and_signature_files_are_one_line_errors(copy, keys, tmp_path):
    from toolkit.errors import BundleError

    with pytest.raises(BundleError, match="expected a PEM public key"):
        bundle.TrustPolicy.from_files([keys["ours"][0]])
    with pytest.raises(BundleError, match="cannot read the public key"):
        bundle.TrustPolicy.from_files([tmp_path / "nope.pem"])
    (copy / bundle.SIGNATURE_FILE).write_text('{"mediaType": "x"}')
    with pytest.raises(TrustError, match="mediaType: expected application/vnd.dev.sigstore"):
        runtimes.load_policy(copy, "onnx", trust=keys["ours"][1])
    (copy / bundle.SIGNATURE_FILE).unlink()
    (copy / bundle.SIGNATURE_FILE).symlink_to(copy / bundle.MANIFEST)
    with pytest.raises(TrustError, match="symbolic link"):
        runtimes.load_policy(copy, "onnx", trust=keys["ours"][1])


def test_model_signings_own_cli_verifies_a_bundle_our_cli_signed(copy, keys):
    import subprocess
    import sys

    def verify(public: Path) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "model_signing", "verify", "key", str(copy)]
        command += ["--signature", str(copy / bundle.SIGNATURE_FILE), "--public_key", str(public)]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    done = verify(keys["ours"][1])
    assert done.returncode == 0 and "Verification succeeded" in done.stdout, done.stderr
    (copy / "notes.txt").write_text("added after signing")
    done = verify(keys["ours"][1])
    assert done.returncode != 0 and "Extra files found in model" in done.stdout + done.stderr


def test_signing_and_verifying_need_no_tensorflow(copy, keys):
    from tests.subprocess_utils import run_python

    result = run_python(
        f"""
        import sys
        import runtimes
        from toolkit import bundle
        from toolkit.errors import TrustError

        import pathlib

        pathlib.Path({str(copy)!r}, bundle.SIGNATURE_FILE).unlink()  # signed again here
        bundle.sign_bundle({str(copy)!r}, {str(keys["ours"][0])!r})
        runtimes.load_policy({str(copy)!r}, "onnx", trust={str(keys["ours"][1])!r})
        try:
            runtimes.load_policy({str(copy)!r}, "litert", trust={str(keys["other"][1])!r})
        except TrustError as e:
            assert "does not hold" in str(e), e
        else:
            raise AssertionError("another key's signature was accepted")
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "onnx"))
        print("heavy:", heavy)
        """,
        without_tensorflow=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("heavy: []"), result.stdout


@pytest.mark.parametrize("backend", ["micro", "c"])
def test_the_micro_and_c_backends_take_the_trust_policy_too(tmp_path, keys, backend):
    from tests.micro_bundles import cartpole_c, cartpole_micro

    source = cartpole_micro() if backend == "micro" else cartpole_c()
    path = Path(shutil.copytree(source, tmp_path / "bundle"))
    with pytest.raises(TrustError, match=r"not signed \(no model.sig\)"):
        runtimes.load_policy(path, backend, trust=keys["ours"][1])
    bundle.sign_bundle(path, keys["ours"][0])
    assert runtimes.load_policy(path, backend, trust=keys["ours"][1]).backend == backend
    # One of the target's own files changed, its hash rewritten in the manifest.
    files = json.loads((path / bundle.MANIFEST).read_text())["files"]
    rel = sorted(r for r in files if r.startswith(f"{backend}/"))[0]
    data = bytearray((path / rel).read_bytes())
    data[-1] ^= 1
    (path / rel).write_bytes(bytes(data))
    _rehash(path, rel)
    with pytest.raises(TrustError, match=r"not the bundle that was signed \(changed: ") as e:
        runtimes.load_policy(path, backend, trust=keys["ours"][1])
    assert rel in str(e.value) and "manifest.json" in str(e.value)
