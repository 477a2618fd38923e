"""Fuzz bundle readers and writers with mutated bundles; print the issue-11 counts.

Usage: ``python benchmarks/fuzz_bundles.py [--cases 330] [--seed 0] [--timeout 60]
[--tf-every 6] [--tflite-cases 40] [--no-kill] [--work DIR] [--trust]``

With ``--trust`` the base bundles are signed with a fresh key and the workers run with
that key in POLICY_TOOLKIT_TRUST_KEYS (as a fleet would): every load of a mutated
bundle must then be refused (a load that succeeds is counted as a problem), while the
unmutated signed bases are checked to load.

Exports seven small bundles (a Q policy with SavedModel and ONNX, the same ONNX-only, the
same with LiteRT too, a recurrent Q policy, a deterministic actor, a CartPole Q policy
with the micro and C targets, the same with the C target's int8 weights), and a states file
for each (``quantize --observations``), then builds ``--cases`` mutated copies:
manifest fields set to random JSON or deleted, the same with every copy and hash
rewritten to match (so only the graphs can tell), truncations, byte flips (with and
without new hashes), paths leaving the bundle, symbolic links (to files outside, to
/dev/zero, to folders), FIFOs, folders in place of files, ONNX external data (inside
and outside the bundle), huge shapes, huge and deeply nested manifests, and
``policy.tflite`` mutated with its hash rewritten to match (``--tflite-cases`` of them),
and the micro and C targets' files likewise. The random families (fields, truncations,
flips) draw their base from all seven bundles, the two micro/C ones included: every
case of those also loads and acts with the micro and c backends and runs ``verify``.

Each case runs in a worker process with a timeout (a hang is counted and the worker
restarted): ``load_policy`` with the onnx backend and three actions checked against the
policy's own action spec, ``policy-toolkit inspect`` (CliRunner), ``update_bundle`` (ONNX-only
bundles) and ``quantize_bundle`` on the recorded states (some cases); every
``--tf-every``-th case and every containment case also run ``load_policy(backend="tf")``
and ``verify`` in a TensorFlow worker, and every mutated ``policy.tflite`` runs
``quantize_bundle(target="litert", method="litert-gptq")`` there, which must end in a
written bundle or a BundleError, nothing else. Decoy files sit beside each bundle (and
in the workers' working folder): their content, mtime and atime (set older than mtime,
so relatime records a read) tell a read or write outside the bundle.

Then every crash point of a replacement is hit with ``os._exit`` in a child process
during export, update, quantize and import (renameat2 exchange and the two-rename
fallback) and the target must hold a complete, loadable bundle.

Prints the counts: exceptions other than ToolkitError, hangs, reads/writes outside,
loaded bundles whose actions break their own spec, kill points without a complete
bundle. Exit status 1 if any is non-zero.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import select
import shutil
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BASES = {
    "q": ("tf/greedy_q", ("saved_model", "onnx")),
    "q_onnx": ("tf/greedy_q", ("onnx",)),
    "q_litert": ("tf/greedy_q", ("saved_model", "onnx", "litert")),
    "rnn": ("tf/greedy_q_rnn", ("saved_model", "onnx")),
    "actor": ("tf/actor/action_network", ("saved_model", "onnx")),
}
#: Bases exported with the micro and c targets (made in export_bases): random mutations
#: of theirs are loaded by the micro and c backends too.
MICRO_BASES = ("q_micro", "q_c_int8")
DECOYS = ("outside.onnx", "victim.onnx", "w.bin", "secret.bin")
#: The files of the micro and c targets a "micro_rehash" case mutates (hashes rewritten).
MICRO_FILES = (
    "micro/policy.tflite",
    "micro/held_out_states.f32",
    "micro/held_out_actions.bin",
    "c/policy.c",
    "c/policy.h",
    "c/weights.f32",
    "c/weights.bin",
)


# --- set-up (parent) ------------------------------------------------------------------------


def states_file(base: Path) -> Path:
    """The recorded states ``quantize --observations`` reads for a base bundle."""
    return base.with_name(base.name + ".states.npz")


def sign_bases(bases: dict[str, Path], work: Path) -> dict[str, str]:
    """Signs every base with a fresh P-256 key; the workers' environment trusting it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    import runtimes
    from toolkit import bundle

    key = ec.generate_private_key(ec.SECP256R1())
    private, public = work / "sign.pem", work / "sign.pub.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    for path in bases.values():
        bundle.sign_bundle(path, private)
        runtimes.load_policy(path, "onnx", trust=public)  # the unmutated base loads
    return {bundle.TRUST_KEYS_ENV: str(public)}


def export_bases(work: Path) -> dict[str, Path]:
    """The base bundles, their states files and a weights-only checkpoint of the Q policy."""
    import numpy as np

    import runtimes
    from exporters import export_policy, save_checkpoint
    from tests import exported_bundles
    from toolkit import nest
    from toolkit.specs import array_spec

    bases = {}
    for name, (case_id, formats) in BASES.items():
        path = work / "bases" / name
        if not path.exists():
            policy = exported_bundles.tf_policy_for(case_id)
            export_policy(policy, path, formats=formats, train_step=3, metadata={"base": name})
        if not states_file(path).exists():
            spec = runtimes.load_policy(path, "onnx").time_step_spec.observation
            rows = array_spec.sample_spec_nest(spec, np.random.default_rng(0), outer_dims=(64,))
            np.savez(states_file(path), **dict(nest.flatten_with_paths(rows, "observation")))
        bases[name] = path
    # The micro and c targets (issue 27): calibrated on CartPole, so a CartPole policy.
    micro = work / "bases" / "q_micro"
    if not micro.exists():
        from tests.cli_factories import small_cartpole

        options = {"env": "CartPole-v1", "episodes": 2, "calibration_episodes": 2}
        export_policy(
            small_cartpole(), micro, formats=("onnx", "micro", "c"), format_options=options
        )
    bases["q_micro"] = micro
    c_int8 = work / "bases" / "q_c_int8"  # the c target with int8 weights
    if not c_int8.exists():
        from tests.cli_factories import small_cartpole

        options = {"env": "CartPole-v1", "episodes": 2, "c_weights": "int8"}
        export_policy(small_cartpole(), c_int8, formats=("onnx", "c"), format_options=options)
    bases["q_c_int8"] = c_int8
    for name in MICRO_BASES:  # quantize cases of these bases read recorded states too
        if not states_file(bases[name]).exists():
            spec = runtimes.load_policy(bases[name], "onnx").time_step_spec.observation
            rows = array_spec.sample_spec_nest(spec, np.random.default_rng(0), outer_dims=(64,))
            np.savez(states_file(bases[name]), **dict(nest.flatten_with_paths(rows, "observation")))
    ckpt = work / "bases" / "ckpt_q"
    if not ckpt.exists():
        save_checkpoint(exported_bundles.tf_policy_for("tf/greedy_q"), ckpt, train_step=7)
    return bases


def _rehash(bundle: Path, manifest: dict[str, Any], rel: str) -> None:
    data = (bundle / rel).read_bytes()
    manifest["files"][rel] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def _rewrite_copies(bundle: Path, manifest: dict[str, Any]) -> None:
    """Makes the formats' manifest copies (and their hashes) match ``manifest``."""
    import onnx

    from exporters.onnx_export import embed_manifest
    from toolkit import bundle as bundle_lib

    onnx_info = manifest.get("onnx")
    files = manifest.get("files")
    if not isinstance(files, dict):
        return
    if isinstance(onnx_info, dict) and onnx_info.get("file") == "policy.onnx":
        try:
            model = onnx.load_model_from_string((bundle / "policy.onnx").read_bytes())
            embed_manifest(model, manifest)
            (bundle / "policy.onnx").write_bytes(model.SerializeToString())
            _rehash(bundle, manifest, "policy.onnx")
        except Exception:  # a mutation made the copy impossible: leave it
            pass
    sm = bundle / "saved_model"
    rel = f"saved_model/{bundle_lib.SAVED_MODEL_MANIFEST}"
    if (sm / bundle_lib.SAVED_MODEL_MANIFEST).is_file():
        try:
            bundle_lib.write_saved_model_manifest(sm, manifest)
            _rehash(bundle, manifest, rel)
        except (TypeError, ValueError):
            pass


def _json_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 2 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 2, 7, 10**9, 2**63, -(2**70), 3])
    if kind == 3:
        return rng.choice([0.5, -1e308, 1e308, 2.0, 1e-300])
    if kind == 4:
        return rng.choice(["", "x", "../x", "/etc/passwd", "float32", "inf", "sample", "a" * 300])
    if kind == 5:
        return rng.choice([[], {}, [None], {"kind": "none"}])
    if kind == 6:
        return [_json_value(rng, depth + 1) for _ in range(rng.randrange(3))]
    if kind == 7:
        return {rng.choice(["kind", "shape", "x", "items"]): _json_value(rng, depth + 1)}
    return rng.choice(["array_spec", [10**9], {"kind": "array_spec", "shape": [3], "dtype": "q"}])


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*prefix, i))
    return out


def _mutate_field(manifest: dict[str, Any], rng: random.Random) -> str:
    paths = [p for p in _paths(manifest) if p and p[0] != "producer"]
    path = rng.choice(paths)
    node = manifest
    for key in path[:-1]:
        node = node[key]
    if rng.random() < 0.2:
        del node[path[-1]]
        return f"delete {'/'.join(map(str, path))}"
    value = _json_value(rng)
    node[path[-1]] = value
    return f"set {'/'.join(map(str, path))} = {json.dumps(value)[:40]}"


def _bundle_files(bundle: Path) -> list[str]:
    return sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())


def _load(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / "manifest.json").read_text())


def _save(bundle: Path, manifest: dict[str, Any]) -> None:
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=1))


def _to_external(bundle: Path, location: str) -> None:
    """Rewrites policy.onnx with its initializers as external data at ``location``."""
    import onnx
    from onnx.external_data_helper import convert_model_to_external_data

    model = onnx.load_model_from_string((bundle / "policy.onnx").read_bytes())
    convert_model_to_external_data(
        model, all_tensors_to_one_file=True, location="w.bin", size_threshold=0
    )
    # Writes w.bin beside the model, as onnx.save does; onnx refuses to write "../".
    onnx.save_model(model, str(bundle / "policy.onnx"))
    if location != "w.bin":
        model = onnx.load(str(bundle / "policy.onnx"), load_external_data=False)
        for tensor in model.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
        (bundle / "policy.onnx").write_bytes(model.SerializeToString())


def _targeted(name: str, bundle: Path, case: Path, rng: random.Random) -> str:
    manifest = _load(bundle)
    files = manifest["files"]
    if name == "onnx_file_parent":
        shutil.copy(bundle / "policy.onnx", case / "outside.onnx")
        manifest["onnx"]["file"] = "../outside.onnx"
        files["../outside.onnx"] = files.pop("policy.onnx")
    elif name == "onnx_file_absolute":
        shutil.copy(bundle / "policy.onnx", case / "outside.onnx")
        manifest["onnx"]["file"] = str(case / "outside.onnx")
        files[str(case / "outside.onnx")] = files.pop("policy.onnx")
    elif name == "onnx_symlink_outside":
        shutil.copy(bundle / "policy.onnx", case / "outside.onnx")
        (bundle / "policy.onnx").unlink()
        (bundle / "policy.onnx").symlink_to(case / "outside.onnx")
    elif name == "onnx_symlink_relative_outside":
        shutil.copy(bundle / "policy.onnx", case / "outside.onnx")
        (bundle / "policy.onnx").unlink()
        (bundle / "policy.onnx").symlink_to("../outside.onnx")
    elif name == "onnx_symlink_secret":
        (bundle / "policy.onnx").unlink()
        (bundle / "policy.onnx").symlink_to(case / "secret.bin")
    elif name == "saved_model_symlink":
        if not (bundle / "saved_model").exists():
            return "skip"
        shutil.copytree(bundle / "saved_model", case / "victim_sm")
        shutil.rmtree(bundle / "saved_model")
        (bundle / "saved_model").symlink_to(case / "victim_sm")
    elif name == "saved_model_dir_parent":
        if "saved_model" not in manifest:
            return "skip"
        shutil.copytree(bundle / "saved_model", case / "victim_sm")
        manifest["saved_model"]["dir"] = "../victim_sm"
        for rel in [r for r in files if r.startswith("saved_model/")]:
            files["../victim_sm/" + rel.removeprefix("saved_model/")] = files.pop(rel)
    elif name == "files_key_parent":
        files["../victim.onnx"] = {"sha256": hashlib.sha256(b"victim").hexdigest(), "size": 6}
    elif name == "manifest_dev_zero":
        (bundle / "manifest.json").unlink()
        (bundle / "manifest.json").symlink_to("/dev/zero")
        return name
    elif name == "onnx_dev_zero":
        (bundle / "policy.onnx").unlink()
        (bundle / "policy.onnx").symlink_to("/dev/zero")
    elif name == "manifest_fifo":
        (bundle / "manifest.json").unlink()
        os.mkfifo(bundle / "manifest.json")
        return name
    elif name == "onnx_fifo":
        (bundle / "policy.onnx").unlink()
        os.mkfifo(bundle / "policy.onnx")
    elif name == "variables_fifo":
        index = bundle / "saved_model" / "variables" / "variables.index"
        if not index.exists():
            return "skip"
        index.unlink()
        os.mkfifo(index)
    elif name == "manifest_folder":
        (bundle / "manifest.json").unlink()
        (bundle / "manifest.json").mkdir()
        return name
    elif name == "onnx_folder":
        (bundle / "policy.onnx").unlink()
        (bundle / "policy.onnx").mkdir()
    elif name in ("external_inside", "external_parent", "external_cwd"):
        _to_external(bundle, "../w.bin" if name == "external_parent" else "w.bin")
        if name == "external_parent":
            os.replace(bundle / "w.bin", case / "w.bin")
        if name == "external_cwd":
            os.replace(bundle / "w.bin", case / "cwd" / "w.bin")
        _rehash(bundle, manifest, "policy.onnx")
        if (bundle / "w.bin").exists():
            _rehash(bundle, manifest, "w.bin")
    elif name == "state_huge":
        manifest["specs"]["policy_state"] = {
            "kind": "array_spec",
            "shape": [10**9],
            "dtype": "float32",
            "name": None,
        }
        _rewrite_copies(bundle, manifest)
    elif name == "state_huge_2d":
        manifest["specs"]["policy_state"] = {
            "kind": "array_spec",
            "shape": [10**4, 10**4],
            "dtype": "float32",
            "name": None,
        }
        _rewrite_copies(bundle, manifest)
    elif name == "action_max_zero":
        manifest["specs"]["action"]["maximum"] = 0
        _rewrite_copies(bundle, manifest)
    elif name == "action_max_zero_plain":
        manifest["specs"]["action"]["maximum"] = 0
    elif name == "action_dtype":
        manifest["specs"]["action"]["dtype"] = "float64"
        _rewrite_copies(bundle, manifest)
    elif name == "huge_manifest":
        manifest["metadata"]["pad"] = "x" * (20 << 20)
    elif name == "deep_manifest":
        (bundle / "manifest.json").write_text("[" * 100000 + "]" * 100000)
        return name
    elif name == "nan_literal":
        text = (bundle / "manifest.json").read_text().replace('"maximum": 1.0', '"maximum": NaN', 1)
        (bundle / "manifest.json").write_text(text)
        return name
    elif name == "big_number":
        manifest["train_step"] = 10**400
        (bundle / "manifest.json").write_text(json.dumps(manifest).replace(str(10**400), "1e400"))
        return name
    _save(bundle, manifest)
    return name


TARGETED = (
    "onnx_file_parent",
    "onnx_file_absolute",
    "onnx_symlink_outside",
    "onnx_symlink_relative_outside",
    "onnx_symlink_secret",
    "saved_model_symlink",
    "saved_model_dir_parent",
    "files_key_parent",
    "manifest_dev_zero",
    "onnx_dev_zero",
    "manifest_fifo",
    "onnx_fifo",
    "variables_fifo",
    "manifest_folder",
    "onnx_folder",
    "external_inside",
    "external_parent",
    "external_cwd",
    "state_huge",
    "state_huge_2d",
    "action_max_zero",
    "action_max_zero_plain",
    "action_dtype",
    "huge_manifest",
    "deep_manifest",
    "nan_literal",
    "big_number",
)


def make_case(index: int, family: str, base: str, bases: dict[str, Path], work: Path, seed: int):
    rng = random.Random(seed * 100003 + index)
    case = work / "cases" / f"{index:04d}"
    shutil.rmtree(case, ignore_errors=True)
    case.mkdir(parents=True)
    (case / "cwd").mkdir()
    bundle = case / "bundle"
    shutil.copytree(bases[base], bundle)
    if family == "field":
        manifest = _load(bundle)
        what = "; ".join(_mutate_field(manifest, rng) for _ in range(rng.choice([1, 1, 2])))
        _save(bundle, manifest)
    elif family == "field_consistent":
        manifest = _load(bundle)
        what = _mutate_field(manifest, rng)
        _rewrite_copies(bundle, manifest)
        _save(bundle, manifest)
        what += " (copies rewritten)"
    elif family == "tflite_rehash":
        data = bytearray((bundle / "policy.tflite").read_bytes())
        how = rng.choice(["flip", "flip", "word", "truncate"])
        if how == "flip":
            flips = rng.randrange(1, 9)
            for _ in range(flips):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            what = f"flip {flips} bits of policy.tflite"
        elif how == "word":
            at = rng.randrange(len(data) - 4)
            data[at : at + 4] = rng.randrange(2**32).to_bytes(4, "little")
            what = f"overwrite policy.tflite[{at}:{at + 4}]"
        else:
            cut = rng.randrange(len(data))
            data = data[:cut]
            what = f"truncate policy.tflite at {cut}"
        (bundle / "policy.tflite").write_bytes(bytes(data))
        manifest = _load(bundle)
        _rehash(bundle, manifest, "policy.tflite")
        _save(bundle, manifest)
        what += " (rehashed)"
    elif family == "micro_rehash":
        rel = rng.choice([f for f in MICRO_FILES if (bundle / f).exists()])
        data = bytearray((bundle / rel).read_bytes())
        if rng.random() < 0.25:
            cut = rng.randrange(len(data))
            data = data[:cut]
            what = f"truncate {rel} at {cut}"
        else:
            flips = rng.randrange(1, 9)
            for _ in range(flips):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            what = f"flip {flips} bits of {rel}"
        (bundle / rel).write_bytes(bytes(data))
        manifest = _load(bundle)
        _rehash(bundle, manifest, rel)
        _save(bundle, manifest)
        what += " (rehashed)"
    elif family in ("truncate", "flip"):
        rel = rng.choice(_bundle_files(bundle))
        data = bytearray((bundle / rel).read_bytes())
        rehash = rng.random() < 0.6 and rel != "manifest.json"
        if family == "truncate":
            cut = rng.randrange(len(data)) if data else 0
            data = data[:cut]
            what = f"truncate {rel} at {cut}"
        else:
            flips = rng.randrange(1, 9)
            for _ in range(flips):
                if data:
                    data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            what = f"flip {flips} bits of {rel}"
        (bundle / rel).write_bytes(bytes(data))
        if rehash:
            manifest = _load(bundle)
            _rehash(bundle, manifest, rel)
            _save(bundle, manifest)
            what += " (rehashed)"
    else:
        what = _targeted(family, bundle, case, rng)
    # Decoys, unless the mutation put a real file there (which a reader would accept).
    for path in [case / name for name in DECOYS] + [case / "cwd" / "w.bin"]:
        if not path.exists():
            path.write_bytes(f"decoy {path.name}".encode())
    return case, what


# --- decoys -------------------------------------------------------------------------------------


def _decoy_paths(case: Path) -> list[Path]:
    paths = [case / name for name in DECOYS] + [case / "cwd" / "w.bin"]
    if (case / "victim_sm").exists():
        paths += [p for p in (case / "victim_sm").rglob("*") if p.is_file()]
    return paths


def arm_decoys(case: Path) -> dict[str, tuple]:
    """Sets each decoy's atime before its mtime (relatime then records the next read)."""
    state = {}
    for path in _decoy_paths(case):
        info = path.stat()
        os.utime(path, ns=(info.st_mtime_ns - 10**9, info.st_mtime_ns))
        info = path.stat()
        state[str(path)] = (
            info.st_atime_ns,
            info.st_mtime_ns,
            hashlib.sha256(path.read_bytes()).hexdigest(),
        )
        os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))  # the hash read moved atime
    return state


def touched_decoys(case: Path, state: dict[str, tuple]) -> list[str]:
    touched = []
    for name, (atime, mtime, digest) in state.items():
        path = Path(name)
        if not path.exists():
            touched.append(f"{name} removed")
            continue
        info = path.stat()
        if info.st_atime_ns != atime:
            touched.append(f"{name} read")
        if info.st_mtime_ns != mtime or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            touched.append(f"{name} written")
    allowed = {"bundle", "cwd", "qout", "victim_sm", *DECOYS}
    extra = [p.name for p in case.iterdir() if p.name not in allowed]
    touched += [f"{case / name} created" for name in extra]
    return touched


# --- workers --------------------------------------------------------------------------------------


def _outcome(fn, refusals: tuple[type, ...] | None = None) -> dict[str, Any]:
    """ok, refused (a ToolkitError, or one of ``refusals``) or other (the count at zero)."""
    from toolkit.errors import ToolkitError

    refused = refusals or (ToolkitError,)
    try:
        detail = fn()
        return {"outcome": "ok", **(detail or {})}
    except refused as e:
        return {"outcome": "refused", "message": str(e).splitlines()[0][:300]}
    except BaseException as e:  # the count we want at zero
        return {
            "outcome": "other",
            "type": type(e).__name__,
            "message": str(e)[:300],
            "trace": traceback.format_exc()[-1500:],
        }


def _act(policy) -> dict[str, Any]:
    import numpy as np

    from toolkit.specs import array_spec

    rng = np.random.default_rng(0)
    state = policy.get_initial_state()
    breaks = 0
    for step in range(3):
        time_step = array_spec.sample_spec_nest(policy.time_step_spec, rng)
        time_step = time_step._replace(
            step_type=np.asarray(0 if step == 0 else 1, np.int32),
            discount=np.asarray(1.0, np.float32),
        )
        out = policy.action(time_step, state)
        state = out.state
        if not array_spec.check_arrays_nest(out.action, policy.action_spec):
            breaks += 1
    return {"spec_breaks": breaks}


def _inspect(bundle: Path) -> dict[str, Any]:
    from typer.testing import CliRunner

    from toolkit.cli import app

    result = CliRunner().invoke(app, ["inspect", str(bundle)])
    text = result.output
    if result.exit_code not in (0, 1, 2) or "error: unexpected" in text or "Traceback" in text:
        raise RuntimeError(f"inspect exit {result.exit_code}: {text.strip()[-300:]}")
    if result.exit_code == 2:
        # A bad bundle: one line on stderr, nothing else.
        if len(text.strip().splitlines()) != 1 or not text.startswith("error: "):
            raise RuntimeError(f"inspect exit 2 with more than one line: {text.strip()[:300]}")
        return {"exit": 2}
    return {"exit": result.exit_code}


def run_case(task: dict[str, Any], kind: str) -> dict[str, Any]:
    import runtimes

    bundle = Path(task["bundle"])
    results: dict[str, Any] = {}
    if kind == "light":
        results["load_onnx"] = _outcome(lambda: _act(runtimes.load_policy(bundle, "onnx", seed=0)))
        results["inspect"] = _outcome(lambda: _inspect(bundle))
        if task.get("micro"):
            # A mutated micro model or C file (hashes rewritten) may only be refused as a
            # bad bundle; a mutated manifest, with any ToolkitError.
            from exporters.parity import verify
            from toolkit.errors import BundleError

            refusals = (BundleError,) if task.get("rehashed_model") else None
            for backend in ("micro", "c"):
                results[f"load_{backend}"] = _outcome(
                    lambda b=backend: _act(runtimes.load_policy(bundle, b, seed=0)),
                    refusals=refusals,
                )
            results["verify_micro"] = _outcome(
                lambda: {"ok": verify(bundle, num_samples=4).ok}, refusals=refusals
            )
        if task.get("quantize"):
            from exporters.quantize import quantize_bundle

            out = Path(task["case"]) / "qout"
            results["quantize"] = _outcome(
                lambda: {
                    "written": quantize_bundle(
                        bundle, out, observations=task["states"], force=True
                    ).written
                }
            )
        if task.get("update"):
            from exporters.update import update_bundle

            results["update"] = _outcome(
                lambda: {"train_step": update_bundle(bundle, task["ckpt"]).train_step}
            )
            results["load_after_update"] = _outcome(
                lambda: _act(runtimes.load_policy(bundle, "onnx", seed=0))
            )
    else:
        from exporters.parity import verify

        results["load_tf"] = _outcome(lambda: _act(runtimes.load_policy(bundle, "tf", seed=0)))
        results["verify"] = _outcome(lambda: {"ok": verify(bundle, num_samples=4).ok})
        if task.get("quantize_litert"):
            from exporters.quantize import quantize_bundle
            from toolkit.errors import BundleError

            out = Path(task["case"]) / "qout"
            # A model file whose hash matches can only be refused as a bad bundle.
            results["quantize_litert"] = _outcome(
                lambda: {
                    "written": quantize_bundle(
                        bundle, out, observations=task["states"], target="litert",
                        method="litert-gptq", min_agreement=0.0, force=True, overwrite=True,
                    ).written
                },
                refusals=(BundleError,),
            )  # fmt: skip
    return results


def worker(kind: str) -> None:
    """Reads tasks (JSON lines) on stdin, answers one JSON line each on stdout."""
    import logging

    logging.disable(logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    out = os.fdopen(os.dup(1), "w")
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # keep libraries' prints off the channel
    for line in sys.stdin:
        task = json.loads(line)
        os.chdir(Path(task["case"]) / "cwd")
        out.write(json.dumps(run_case(task, kind)) + "\n")
        out.flush()


class Worker:
    def __init__(self, kind: str, env: dict[str, str] | None = None):
        self.kind = kind
        self.env = env or {}
        self.process = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", **self.env}
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", self.kind],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
            cwd=ROOT,
        )

    def run(self, task: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        """The worker's answer, or None after ``timeout`` (the worker is then killed)."""
        if self.process is None or self.process.poll() is not None:
            self.start()
        self.process.stdin.write(json.dumps(task) + "\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            self.stop()
            return None
        return json.loads(line)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


# --- kill points ----------------------------------------------------------------------------------

_KILL_CHILD = textwrap.dedent(
    """
    import os, sys, json
    from pathlib import Path
    from toolkit import bundle
    from toolkit.bundle import writing
    op, point, exchange = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    target, extra = Path(sys.argv[4]), sys.argv[5]
    writing._use_exchange = exchange
    def hook(name):
        if name == point:
            os._exit(9)
    writing._crash_hook = hook
    if op == "export":
        from tests import exported_bundles
        from exporters import export_policy
        policy = exported_bundles.tf_policy_for("tf/greedy_q")
        export_policy(policy, target, train_step=9, overwrite=True)
    elif op == "update":
        from exporters.update import update_bundle
        update_bundle(target, extra)
    elif op == "quantize":
        from exporters.quantize import quantize_bundle
        quantize_bundle(extra, target, observations=extra + ".states.npz", force=True,
                        overwrite=True)
    elif op == "import":
        from exporters.tf_agents import import_tf_agents
        import_tf_agents(extra, target, overwrite=True)
    os._exit(0)
    """
)

POINTS = [
    ("written", True),
    ("synced", True),
    ("exchanged", True),
    ("exchange-synced", True),
    ("moved-old", False),
    ("moved-new", False),
    ("fallback-synced", False),
]


def kill_points(bases: dict[str, Path], work: Path, timeout: float) -> tuple[int, int, list[str]]:
    import runtimes
    from toolkit import bundle as bundle_lib

    # A real TF-Agents save to import: the test data's reference q_greedy.
    unpacked = work / "tf_agents_reference"
    if not unpacked.exists():
        with tarfile.open(ROOT / "tests" / "data" / "tf_agents_0_19" / "reference.tar.xz") as tar:
            tar.extractall(unpacked, filter="data")
    reference = unpacked / "q_greedy" / "saved_policy"
    ops = {
        "export": (bases["q"], ""),
        "update": (bases["q_onnx"], str(work / "bases" / "ckpt_q")),
        "quantize": (bases["q_onnx"], str(bases["q_onnx"])),
        "import": (bases["q"], str(reference)),
    }
    total, bad, notes = 0, 0, []
    for op, (base, extra) in ops.items():
        for point, exchange in POINTS:
            target = work / "kill" / f"{op}-{point}-{int(exchange)}" / "b"
            shutil.rmtree(target.parent, ignore_errors=True)
            target.parent.mkdir(parents=True)
            shutil.copytree(base, target)
            result = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    _KILL_CHILD,
                    op,
                    point,
                    "1" if exchange else "0",
                    str(target),
                    extra,
                ],
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"},
                capture_output=True,
                text=True,
                timeout=timeout * 10,
            )
            total += 1
            if result.returncode != 9:
                bad += 1
                notes.append(
                    f"{op} {point}: the child did not reach the point (exit "
                    f"{result.returncode}): {result.stderr.strip()[-300:]}"
                )
                continue
            try:
                bundle_lib.read_manifest(target)  # restores a two-rename swap first
                import numpy as np

                policy = runtimes.load_policy(target, "onnx", seed=0)
                _act(policy)
                del np
            except Exception as e:
                bad += 1
                notes.append(
                    f"{op} {point} exchange={exchange}: no complete bundle: "
                    f"{type(e).__name__}: {str(e)[:200]}"
                )
    return total, bad, notes


# --- main --------------------------------------------------------------------------------------


def plan(cases: int, seed: int, tflite_cases: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = [(name, base) for name in TARGETED for base in ("q", "q_onnx", "rnn")]
    out += [
        (name, "actor") for name in ("action_max_zero", "onnx_symlink_outside", "external_inside")
    ]
    out += [("tflite_rehash", "q_litert")] * tflite_cases
    out += [("micro_rehash", "q_micro")] * tflite_cases
    out += [("micro_rehash", "q_c_int8")] * (tflite_cases // 2)
    families = ["field"] * 6 + ["field_consistent"] * 3 + ["truncate"] * 2 + ["flip"] * 3
    bases = [*BASES, *MICRO_BASES]
    while len(out) < cases:
        out.append((rng.choice(families), rng.choice(bases)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=330)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per case")
    parser.add_argument(
        "--tf-every", type=int, default=6, help="run the tf worker on every n-th case"
    )
    parser.add_argument(
        "--tflite-cases",
        type=int,
        default=40,
        help="mutated policy.tflite, and mutated micro/ and c/ files, (rehashed) cases",
    )
    parser.add_argument("--no-kill", action="store_true", help="skip the kill-point runs")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--verbose", action="store_true", help="print every case's outcomes")
    parser.add_argument(
        "--trust", action="store_true", help="sign the bases; workers load with a trust policy"
    )
    parser.add_argument("--worker", choices=("light", "tf"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return 0

    work = args.work or Path(tempfile.mkdtemp(prefix="fuzz-bundles-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work folder: {work}", flush=True)
    bases = export_bases(work)
    worker_env = sign_bases(bases, work) if args.trust else {}
    light, tf_worker = Worker("light", worker_env), Worker("tf", worker_env)
    counts = {
        "cases": 0,
        "skipped": 0,
        "operations": 0,
        "other_exceptions": 0,
        "hangs": 0,
        "outside": 0,
        "spec_breaks": 0,
        "loaded": 0,
        "refused_loads": 0,
    }
    problems: list[str] = []
    started = time.monotonic()
    for index, (family, base) in enumerate(plan(args.cases, args.seed, args.tflite_cases)):
        case, what = make_case(index, family, base, bases, work, args.seed)
        if what == "skip":
            counts["skipped"] += 1
            shutil.rmtree(case, ignore_errors=True)
            continue
        counts["cases"] += 1
        decoys = arm_decoys(case)
        task = {
            "case": str(case),
            "bundle": str(case / "bundle"),
            "update": base == "q_onnx",
            "ckpt": str(work / "bases" / "ckpt_q"),
            "quantize": index % 4 == 0,
            "quantize_litert": family == "tflite_rehash",
            "micro": base in MICRO_BASES,
            "rehashed_model": family == "micro_rehash",
            "states": str(states_file(bases[base])),
        }
        answers = []
        workers = [light]
        targeted = family in TARGETED or family == "tflite_rehash"
        has_tf = base in BASES and "saved_model" in BASES[base][1]
        if (targeted or index % args.tf_every == 0) and has_tf:
            workers.append(tf_worker)
        for w in workers:
            answer = w.run(task, args.timeout)
            if answer is None:
                counts["hangs"] += 1
                problems.append(
                    f"case {index} ({base}, {what}): {w.kind} worker hung (> {args.timeout}s)"
                )
                continue
            answers.append(answer)
        for answer in answers:
            for op, result in answer.items():
                counts["operations"] += 1
                if result["outcome"] == "other":
                    counts["other_exceptions"] += 1
                    problems.append(
                        f"case {index} ({base}, {what}): {op}: {result['type']}: "
                        f"{result['message'][:200]}\n{result.get('trace', '')}"
                    )
                if op.startswith("load") and op != "load_after_update":
                    counts["loaded" if result["outcome"] == "ok" else "refused_loads"] += 1
                counts["spec_breaks"] += result.get("spec_breaks", 0)
                if result.get("spec_breaks"):
                    problems.append(
                        f"case {index} ({base}, {what}): {op}: actions broke the action spec"
                    )
        if args.verbose:
            summary = ", ".join(
                f"{op}={r['outcome']}"
                + (f" ({r.get('message', '')[:90]})" if r["outcome"] != "ok" else "")
                for answer in answers
                for op, r in answer.items()
            )
            print(f"case {index} [{base}] {what}: {summary}", flush=True)
        touched = touched_decoys(case, decoys)
        if touched:
            counts["outside"] += 1
            problems.append(f"case {index} ({base}, {what}): outside the bundle: {touched}")
        if index % 25 == 0:
            print(f"  {index} cases, {time.monotonic() - started:.0f}s", flush=True)
    light.stop()
    tf_worker.stop()

    kill_total = kill_bad = 0
    if not args.no_kill:
        print("kill points...", flush=True)
        kill_total, kill_bad, notes = kill_points(bases, work, args.timeout)
        problems += notes

    for problem in problems:
        print("PROBLEM:", problem)
    print()
    print(
        f"mutated bundles:                           {counts['cases']} "
        f"({counts['skipped']} plans skipped)"
    )
    print(f"operations run:                            {counts['operations']}")
    print(
        f"loads that succeeded / were refused:       {counts['loaded']} / {counts['refused_loads']}"
    )
    print(f"exceptions other than ToolkitError:        {counts['other_exceptions']}")
    print(f"hangs (> {args.timeout:g}s):                          {counts['hangs']}")
    print(f"cases reading or writing outside:          {counts['outside']}")
    print(f"loaded bundles whose actions broke spec:   {counts['spec_breaks']}")
    print(f"kill points without a complete bundle:     {kill_bad} of {kill_total}")
    if args.trust:
        print(f"mutated bundles loaded under trust:        {counts['loaded']} (must be 0)")
    print(f"time: {time.monotonic() - started:.0f}s")
    bad = (
        counts["other_exceptions"]
        + counts["hangs"]
        + counts["outside"]
        + counts["spec_breaks"]
        + kill_bad
        + (counts["loaded"] if args.trust else 0)
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
