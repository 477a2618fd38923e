"""policy-toolkit sign, --trust-key (run/bench) and --sign-key, through the CLI."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from tests.contract import cases_runtime as cr
from tests.signing_keys import write_key_pair
from toolkit import bundle
from toolkit.cli import app
from toolkit.errors import TrustError

runner = CliRunner()


def test_sign_then_bench_with_the_trust_key_and_refusals_are_one_line(tmp_path, monkeypatch):
    path = shutil.copytree(cr.bundle("greedy_q"), tmp_path / "b")
    private, public = write_key_pair(tmp_path, "k")
    _, other = write_key_pair(tmp_path, "other")
    bench = ["bench", str(path), "--backend", "onnx", "--batch", "1", "--seconds", "0.01"]

    result = runner.invoke(app, [*bench, "--trust-key", str(public)])
    assert result.exit_code == 2
    assert result.stderr.strip().endswith(
        "not signed (no model.sig); the trust policy accepts signed bundles only "
        "(policy-toolkit sign BUNDLE --key PRIVATE.pem)"
    )
    assert "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        result.stderr.strip().splitlines()[-1]
    ]

    result = runner.invoke(app, ["sign", str(path), "--key", str(private)])
    assert result.exit_code == 0, result.output
    assert f"-> {path / bundle.SIGNATURE_FILE}" in result.stdout
    files = len(bundle.read_manifest(path)["files"]) + 1
    assert result.stdout.startswith(f"signed {files} files of {path}")

    both = ["--trust-key", str(other), "--trust-key", str(public)]
    assert runner.invoke(app, [*bench, *both]).exit_code == 0
    result = runner.invoke(app, [*bench, "--trust-key", str(other)])
    assert result.exit_code == 2
    assert "signed by a key the trust policy does not hold" in result.stderr
    # The fleet's variable applies when no --trust-key is given.
    monkeypatch.setenv(bundle.TRUST_KEYS_ENV, str(other))
    assert "does not hold" in runner.invoke(app, bench).stderr
    monkeypatch.delenv(bundle.TRUST_KEYS_ENV)

    (path / "extra.bin").write_bytes(b"x")
    result = runner.invoke(app, [*bench, "--trust-key", str(public)])
    assert result.exit_code == 2 and "not signed: extra.bin)" in result.stderr
    result = runner.invoke(app, ["sign", str(path), "--key", str(public)])
    assert result.exit_code == 2 and "expected a PEM private key" in result.stderr


def test_verify_checks_the_signature_first_with_a_trust_policy(tmp_path):
    path = shutil.copytree(cr.bundle("greedy_q"), tmp_path / "b")
    private, public = write_key_pair(tmp_path, "k")
    _, other = write_key_pair(tmp_path, "other")
    verify = ["verify", str(path), "-n", "4"]

    result = runner.invoke(app, [*verify, "--trust-key", str(public)])
    assert result.exit_code == 2 and "not signed (no model.sig)" in result.stderr
    assert runner.invoke(app, ["sign", str(path), "--key", str(private)]).exit_code == 0

    result = runner.invoke(app, [*verify, "--json"])  # no policy: reported, not verified
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["signature"]["verified"] is False
    result = runner.invoke(app, verify)
    assert "signature: present, not verified (--trust-key KEY verifies it)" in result.stdout

    result = runner.invoke(app, [*verify, "--trust-key", str(public), "--json"])
    assert result.exit_code == 0, result.output
    signature = json.loads(result.stdout)["signature"]
    assert signature["verified"] is True and signature["trusted"] == [str(public)]
    assert signature["files"] == len(bundle.read_manifest(path)["files"]) + 1
    result = runner.invoke(app, [*verify, "--trust-key", str(other)])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "signed by a key the trust policy does not hold" in result.stderr

    # Changed metadata: verify's own checks pass it (no file of the manifest changed);
    # the signature does not, and verify stops before reading the bundle.
    manifest = json.loads((path / bundle.MANIFEST).read_text())
    manifest["metadata"] = {"changed": "yes"}
    (path / bundle.MANIFEST).write_text(json.dumps(manifest))
    result = runner.invoke(app, [*verify, "--trust-key", str(public)])
    assert result.exit_code == 2 and "manifest.json" in result.stderr
    assert "verify" not in result.stdout


def test_update_leaves_a_signed_bundle_unsigned_and_says_so_unless_re_signed(tmp_path):
    from exporters import save_checkpoint

    path = shutil.copytree(cr.bundle("greedy_q"), tmp_path / "b")
    private, public = write_key_pair(tmp_path, "k")
    bundle.sign_bundle(path, private)
    checkpoint = save_checkpoint(cr.set_weights(cr.live("greedy_q"), 5), tmp_path / "ckpt", 9)
    result = runner.invoke(app, ["update", str(path), "--checkpoint", str(checkpoint)])
    assert result.exit_code == 0, result.output
    assert f"note: {path} is not signed (its source was); sign it again" in result.stderr
    trust = bundle.TrustPolicy.from_files([public])
    with pytest.raises(TrustError, match="not signed"):
        bundle.read_manifest(path, trust=trust)
    result = runner.invoke(
        app, ["update", str(path), "--checkpoint", str(checkpoint), "--sign-key", str(private)]
    )
    assert result.exit_code == 0, result.output
    assert bundle.read_manifest(path, trust=trust)["train_step"] == 9
    # The model card travels with the bundle and names the new train step.
    card = json.loads((path / "bom.cdx.json").read_text())
    assert card["metadata"]["component"]["version"] == "9"


def test_an_encrypted_key_takes_its_password_from_the_environment(tmp_path, monkeypatch):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    path = shutil.copytree(cr.bundle("greedy_q"), tmp_path / "b")
    key = ec.generate_private_key(ec.SECP384R1())
    private = tmp_path / "locked.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"s3cret"),
        )
    )
    result = runner.invoke(app, ["sign", str(path), "--key", str(private)])
    assert result.exit_code == 2 and "private key is encrypted" in result.stderr
    assert not (path / bundle.SIGNATURE_FILE).exists()
    monkeypatch.setenv("POLICY_TOOLKIT_KEY_PASSWORD", "s3cret")
    assert runner.invoke(app, ["sign", str(path), "--key", str(private)]).exit_code == 0
    public = tmp_path / "locked.pub.pem"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    assert bundle.read_manifest(path, trust=bundle.TrustPolicy.from_files([public]))


def test_import_tf_agents_signs_what_it_writes(tmp_path):
    import tarfile
    from pathlib import Path

    archive = Path(__file__).resolve().parents[1] / "data" / "tf_agents_0_19" / "saves.tar.xz"
    with tarfile.open(archive) as saves:
        members = [m for m in saves.getmembers() if m.name.startswith("dqn_greedy/")]
        saves.extractall(tmp_path, members=members, filter="data")
    private, public = write_key_pair(tmp_path, "k")
    out = tmp_path / "imported"
    command = ["import-tf-agents", str(tmp_path / "dqn_greedy" / "saved_policy"), str(out)]
    result = runner.invoke(app, [*command, "--no-verify", "--sign-key", str(private)])
    assert result.exit_code == 0, result.output
    assert f"signed -> {out / bundle.SIGNATURE_FILE}" in result.stderr
    trust = bundle.TrustPolicy.from_files([public])
    assert "bom.cdx.json" in bundle.read_manifest(out, trust=trust)["files"]
