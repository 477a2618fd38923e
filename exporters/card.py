"""The bundle's model card: a CycloneDX 1.6 ML-BOM, ``bom.cdx.json`` (docs/bundle-format.md).

Built from the finished manifest (so every writer can make one: export, update, quantize)
plus what the caller knows beyond it (``export_policy(card=...)``, the CLI's
``--card key=value``). It is an ordinary listed file of the bundle: hashed in the
manifest's file table and covered by a signature like every other file.

One ``machine-learning-model`` component (the policy, with its ``modelCard``) and one
``framework`` component per producer library (TensorFlow, TFP, tf2onnx, onnx).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from toolkit.errors import BundleError, ExportError

__all__ = ["CARD_FILE", "CARD_KEYS", "make_card", "parse_card_options", "updated_card"]

CARD_FILE = "bom.cdx.json"
_PROPERTY = "policy-toolkit:"

#: What ``--card key=value`` may set, and where it goes in the card.
CARD_KEYS = {
    "agent": "the agent that trained the policy (e.g. DQN)",
    "network": "the network architecture (e.g. QNetwork(fc=100,50))",
    "env": "the training environment id (e.g. CartPole-v1)",
    "env_steps": "environment steps of training",
    "eval_return": "mean evaluation return",
    "eval_episodes": "episodes the evaluation return is over",
    "description": "what the policy is for",
    "limitation": "a limitation that applies (adds to those the toolkit knows)",
    "license": "the model's license (SPDX id)",
}

_PRODUCER_COMPONENTS = {
    "tensorflow": "TensorFlow",
    "tensorflow_probability": "TensorFlow Probability",
    "tf2onnx": "tf2onnx",
    "onnx": "onnx",
}


def parse_card_options(items: list[str]) -> dict[str, str]:
    """``key=value`` strings (``--card``) as a dict; unknown keys are refused, naming them."""
    card: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ExportError(f"--card: expected key=value, got {item!r}")
        if key not in CARD_KEYS:
            raise ExportError(f"--card: expected a key of {sorted(CARD_KEYS)}, got {key!r}")
        if key == "limitation" and key in card:
            value = f"{card[key]}\n{value}"
        card[key] = value
    return card


def _spec_text(spec: Any) -> str:
    """A spec nest in one line: ``float32[4]``, ``int64[] in [0, 1]``, ``{a: ..., b: ...}``."""
    if not isinstance(spec, dict):
        return str(spec)
    kind = spec.get("kind")
    if kind in ("array_spec", "bounded_array_spec"):
        text = f"{spec['dtype']}{list(spec['shape'])}"
        if kind == "bounded_array_spec":
            text += f" in [{spec['minimum']}, {spec['maximum']}]"
        return text
    if kind == "dict":
        return "{" + ", ".join(f"{k}: {_spec_text(v)}" for k, v in spec["items"].items()) + "}"
    if kind in ("tuple", "list", "namedtuple"):
        return "(" + ", ".join(_spec_text(v) for v in spec["items"]) + ")"
    return str(kind)


def _limitations(manifest: Mapping[str, Any], extra: Mapping[str, str]) -> list[str]:
    known = []
    quantization = manifest.get("quantization")
    if quantization:
        known.append(
            f"Quantized ({quantization.get('method')}, {quantization.get('weight_type')} "
            f"weights): actions agree with the float policy on "
            f"{quantization.get('action_agreement')} of {quantization.get('states')} real "
            "states, not all."
        )
    if {"micro", "c"} & set(manifest.get("formats", [])):
        known.append("The microcontroller target (micro, c) computes deterministic actions only.")
    if "saved_model" in manifest.get("formats", []):
        known.append(
            "The SavedModel is a program: load it (backend tf) only from sources you would "
            "run code from; the onnx and litert backends run no code of the bundle's."
        )
    known.extend(v for v in extra.get("limitation", "").split("\n") if v)
    return known


def make_card(
    manifest: Mapping[str, Any], extra: Mapping[str, str] | None = None, *, name: str = "policy"
) -> dict[str, Any]:
    """The CycloneDX 1.6 ML-BOM (a JSON dict) of a bundle's manifest and what ``extra`` adds.

    Args:
      manifest: the finished manifest (its ``files`` are not needed).
      extra: ``CARD_KEYS`` entries the manifest does not hold; the manifest's metadata
        keys of the same names fill in what is not given.
      name: the model's name (the bundle folder's).
    """
    metadata = manifest.get("metadata") or {}
    given = {k: str(v) for k, v in metadata.items() if k in CARD_KEYS and v is not None}
    given.update(extra or {})
    producer = manifest.get("producer") or {}
    specs = manifest.get("specs", {})
    observation = specs.get("time_step", {})
    if observation.get("kind") == "namedtuple":
        fields = observation.get("fields", [])
        if "observation" in fields:
            observation = observation["items"][fields.index("observation")]
    properties = [
        ("policy_class", manifest.get("policy", {}).get("class")),
        ("action_kind", manifest.get("policy", {}).get("action", {}).get("kind")),
        ("formats", ",".join(manifest.get("formats", []))),
        ("train_step", manifest.get("train_step")),
        ("env", given.get("env")),
        ("env_steps", given.get("env_steps")),
        ("policy_state", _spec_text(specs.get("policy_state"))),
    ]
    quantization = manifest.get("quantization") or {}
    for key in ("target", "method", "weight_type", "action_agreement", "states", "tolerance"):
        if key in quantization:
            properties.append((f"quantization.{key}", quantization[key]))
    model_parameters: dict[str, Any] = {
        "approach": {"type": "reinforcement-learning"},
        "task": "sequential decision making (an RL policy: observation -> action)",
        "architectureFamily": given.get("agent") or manifest.get("policy", {}).get("class"),
        "inputs": [{"format": f"observation {_spec_text(observation)}"}],
        "outputs": [{"format": f"action {_spec_text(specs.get('action'))}"}],
    }
    if given.get("network"):
        model_parameters["modelArchitecture"] = given["network"]
    if given.get("env"):
        model_parameters["datasets"] = [
            {
                "type": "dataset",
                "name": f"experience from {given['env']}",
                "classification": "environment interaction (reinforcement learning)",
            }
        ]
    card: dict[str, Any] = {
        "modelParameters": model_parameters,
        "considerations": {"technicalLimitations": _limitations(manifest, given)},
        "properties": [
            {"name": _PROPERTY + k, "value": str(v)} for k, v in properties if v is not None
        ],
    }
    if given.get("description"):
        card["considerations"]["useCases"] = [given["description"]]
    if given.get("eval_return") is not None:
        episodes = given.get("eval_episodes")
        card["quantitativeAnalysis"] = {
            "performanceMetrics": [
                {
                    "type": "mean evaluation return",
                    "value": str(given["eval_return"]),
                    "slice": f"{episodes or 'unknown'} episodes"
                    + (f" of {given['env']}" if given.get("env") else ""),
                }
            ]
        }
    model: dict[str, Any] = {
        "type": "machine-learning-model",
        "bom-ref": "policy",
        "name": name,
        "version": str(manifest.get("train_step")),
        "modelCard": card,
    }
    if given.get("description"):
        model["description"] = given["description"]
    if given.get("license"):
        model["licenses"] = [{"license": {"id": given["license"]}}]
    frameworks = [
        {
            "type": "framework",
            "bom-ref": f"producer-{key}",
            "name": label,
            "version": str(producer[key]),
        }
        for key, label in _PRODUCER_COMPONENTS.items()
        if producer.get(key)
    ]
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": f"urn:uuid:{uuid.uuid4()}",
        "version": 1,
        "metadata": {
            "timestamp": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "tools": {
                "components": [
                    {
                        "type": "application",
                        "name": "policy-toolkit",
                        "version": str(producer.get("policy_toolkit", "unknown")),
                    }
                ]
            },
            "component": model,
        },
        "components": frameworks,
        "dependencies": [
            {"ref": "policy", "dependsOn": [f["bom-ref"] for f in frameworks]},
            *({"ref": f["bom-ref"]} for f in frameworks),
        ],
    }


def card_bytes(card: Mapping[str, Any]) -> bytes:
    """The card as written: indented JSON, keys in CycloneDX's order."""
    return (json.dumps(card, indent=2) + "\n").encode()


def updated_card(data: bytes, manifest: Mapping[str, Any]) -> bytes:
    """A card (bom.cdx.json bytes) with the manifest's new train step (``update``).

    Raises:
      BundleError: the card is not a CycloneDX model card of the shape export writes (its
        hash matched: the bundle's data, checked before it is edited).
    """
    try:
        card = json.loads(data)
        model = card["metadata"]["component"]
        properties = model["modelCard"].get("properties", [])
        if not isinstance(properties, list):
            raise TypeError(f"properties: expected a list, got {type(properties).__name__}")
    except (ValueError, RecursionError, LookupError, TypeError, AttributeError) as e:
        got = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise BundleError(
            f"{CARD_FILE}: expected a CycloneDX model card with metadata.component.modelCard "
            f"(as export writes it), got {type(e).__name__}: {got}"
        ) from e
    model["version"] = str(manifest.get("train_step"))
    for prop in properties:
        if isinstance(prop, dict) and prop.get("name") == _PROPERTY + "train_step":
            prop["value"] = str(manifest.get("train_step"))
    card["serialNumber"] = f"urn:uuid:{uuid.uuid4()}"
    return card_bytes(card)
