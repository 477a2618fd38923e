"""The model card bom.cdx.json: CycloneDX 1.6 (checked with CycloneDX's own schema), filled
by export, kept current by update, shown by inspect, covered by the signature."""

from __future__ import annotations

import copy
import json

import pytest
from typer.testing import CliRunner

from exporters import card as card_lib
from tests.contract import cases_runtime as cr
from tests.toolkit.manifests import MINIMAL
from toolkit import bundle
from toolkit.cli import app
from toolkit.errors import ExportError


def _schema_errors(card: dict) -> str | None:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(json.dumps(card))
    return None if error is None else error.data.message


def _card(path) -> dict:
    files = bundle.read_manifest(path)["files"]
    assert card_lib.CARD_FILE in files  # listed, hashed: a signature covers it
    return json.loads(bundle.read_member(path, card_lib.CARD_FILE, key="card", files=files))


def test_every_export_writes_a_valid_card_with_the_producers_components():
    path = cr.bundle("greedy_q")
    card = _card(path)
    assert _schema_errors(card) is None
    manifest = bundle.read_manifest(path)
    model = card["metadata"]["component"]
    assert model["type"] == "machine-learning-model" and model["version"] == "7"
    params = model["modelCard"]["modelParameters"]
    assert params["approach"] == {"type": "reinforcement-learning"}
    assert params["architectureFamily"] == manifest["policy"]["class"]
    assert params["inputs"] == [{"format": "observation float32[4]"}]
    assert params["outputs"][0]["format"].startswith("action int")
    producers = {c["name"]: c["version"] for c in card["components"]}
    assert producers["TensorFlow"] == manifest["producer"]["tensorflow"]
    assert producers["tf2onnx"] == manifest["producer"]["tf2onnx"]
    assert producers["onnx"] == manifest["producer"]["onnx"]
    assert any(
        "SavedModel is a program" in t
        for t in model["modelCard"]["considerations"]["technicalLimitations"]
    )


def test_card_options_from_the_cli_are_in_the_card_and_inspect_shows_them(tmp_path):
    out = tmp_path / "b"
    result = CliRunner().invoke(
        app,
        [
            "export", "examples.cartpole_factory:policy", str(out), "--format", "onnx",
            "--no-verify", "--card", "agent=DQN", "--card", "env=CartPole-v1",
            "--card", "eval_return=500", "--card", "eval_episodes=10",
            "--card", "limitation=trained on one seed",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    card = _card(out)
    assert _schema_errors(card) is None
    model_card = card["metadata"]["component"]["modelCard"]
    assert model_card["modelParameters"]["architectureFamily"] == "DQN"
    assert model_card["quantitativeAnalysis"]["performanceMetrics"] == [
        {"type": "mean evaluation return", "value": "500", "slice": "10 episodes of CartPole-v1"}
    ]
    assert "trained on one seed" in model_card["considerations"]["technicalLimitations"]
    shown = CliRunner().invoke(app, ["inspect", str(out)])
    assert shown.exit_code == 0, shown.output
    assert "model card (bom.cdx.json, CycloneDX 1.6)" in shown.stdout
    assert "mean evaluation return" in shown.stdout and "10 episodes of CartPole-v1" in shown.stdout
    assert "signature: none (unsigned)" in shown.stdout


def test_a_quantized_manifest_gives_its_candidate_agreement_and_limitation():
    manifest = copy.deepcopy(MINIMAL)
    manifest["quantization"] = {
        "target": "onnx", "method": "gptq", "weight_type": "int8", "action_agreement": 0.99,
        "states": 512, "tolerance": 0.01,
    }  # fmt: skip
    manifest["formats"] = ["onnx", "micro"]
    card = card_lib.make_card(manifest, {"env_steps": "20000"})
    assert _schema_errors(card) is None
    model_card = card["metadata"]["component"]["modelCard"]
    props = {p["name"]: p["value"] for p in model_card["properties"]}
    assert props["policy-toolkit:quantization.method"] == "gptq"
    assert props["policy-toolkit:quantization.action_agreement"] == "0.99"
    assert props["policy-toolkit:env_steps"] == "20000"
    limits = model_card["considerations"]["technicalLimitations"]
    assert any("agree with the float policy on 0.99 of 512" in t for t in limits)
    assert any("deterministic actions only" in t for t in limits)


def test_bad_card_options_are_named():
    with pytest.raises(ExportError, match=r"--card: expected key=value, got 'agent'"):
        card_lib.parse_card_options(["agent"])
    with pytest.raises(ExportError, match=r"--card: expected a key of \['agent', .*got 'colour'"):
        card_lib.parse_card_options(["colour=red"])


def test_a_quantized_bundle_has_its_own_card(tmp_path):
    import numpy as np

    from exporters.quantize import quantize_bundle
    from tests.cli_factories import cartpole_bundle

    npz = tmp_path / "states.npz"
    rng = np.random.default_rng(3)
    np.savez(npz, observation=(rng.standard_normal((200, 4)) * 0.5).astype(np.float32))
    report = quantize_bundle(
        cartpole_bundle(), tmp_path / "q", observations=npz, method="float16", force=True
    )
    assert report.written
    card = _card(tmp_path / "q")
    assert _schema_errors(card) is None
    model_card = card["metadata"]["component"]["modelCard"]
    props = {p["name"]: p["value"] for p in model_card["properties"]}
    assert props["policy-toolkit:quantization.method"] == "float16"
    assert props["policy-toolkit:quantization.action_agreement"] == str(report.action_agreement)
    assert any(
        "agree with the float policy" in t
        for t in model_card["considerations"]["technicalLimitations"]
    )


@pytest.mark.parametrize(
    "data, shown",
    [
        (b'{"bomFormat": "CycloneDX", "metadata": {', "model card: unreadable (bom.cdx.json: "
         "expected JSON, got Expecting property name"),
        (b"\xff\xfe not utf-8", "model card: unreadable (bom.cdx.json: expected JSON, got"),
        (b"[" * 100_000 + b"]" * 100_000, "model card: unreadable (bom.cdx.json: expected JSON"),
        (b'["a list"]', "model card: unreadable (bom.cdx.json: expected a JSON object, got list)"),
        # The right top level, every field of another shape: shown as far as it goes.
        (
            json.dumps({
                "specVersion": "1.6", "metadata": {"component": {"name": "p", "modelCard": {
                    "modelParameters": {"approach": "rl", "inputs": 3, "outputs": ["x", 1]},
                    "quantitativeAnalysis": [], "properties": [7, {"name": 1}],
                    "considerations": {"technicalLimitations": "one"}}}},
                "components": {"name": "TensorFlow"},
            }).encode(),
            "p (train step None)",
        ),
    ],
    ids=["truncated", "not-utf8", "nested-too-deep", "a-list", "odd-shapes"],
)  # fmt: skip
def test_inspect_shows_a_malformed_card_whose_hash_matches_and_fails_on_nothing(
    tmp_path, data, shown
):
    # The card is the bundle's data: with its hash rewritten to match (found by
    # benchmarks/fuzz_bundles.py), inspect crashed with an unexpected JSONDecodeError.
    import hashlib
    import shutil

    path = tmp_path / "b"
    shutil.copytree(cr.bundle("greedy_q"), path)
    (path / card_lib.CARD_FILE).write_bytes(data)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"][card_lib.CARD_FILE] = {
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }
    (path / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(app, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    assert shown in result.stdout, result.stdout
    assert "signature: none (unsigned)" in result.stdout  # the rest is still shown
