"""The README, copied as written: its Python snippets run, its commands agree with each other.

The snippets run in order, each in a fresh interpreter, from a folder holding what the
Quickstart makes (``demo_out/cartpole``, an exported CartPole policy, and
``demo_out/cartpole_run``, a training run's policy checkpoints): here a small policy of
the demo's architecture with seeded weights, and a checkpoint of other weights.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.subprocess_utils import ROOT

README = (ROOT / "README.md").read_text()
SNIPPETS = re.findall(r"^```python\n(.*?)^```", README, re.MULTILINE | re.DOTALL)


def _section(title: str) -> str:
    start = README.index(f"\n## {title}")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def _shell_commands(text: str) -> list[list[str]]:
    """The commands of a section's ```sh/```bash blocks (continuations joined, comments,
    background ``&`` and blank lines dropped)."""
    commands = []
    for block in re.findall(r"^```(?:sh|bash)\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip().removesuffix("&").strip()
            if line and not line.startswith("#"):
                commands.append(shlex.split(line))
    return commands


@pytest.fixture(scope="module")
def quickstart_outputs(tmp_path_factory):
    """A folder with ``demo_out/cartpole`` (exported) and ``demo_out/cartpole_run``."""
    import tensorflow as tf

    from examples import cartpole_factory
    from exporters import export_policy

    def seeded(seed: int):
        policy = cartpole_factory.policy()
        rng = np.random.default_rng(seed)
        for variable in policy.variables():
            variable.assign(rng.normal(0.0, 0.3, variable.shape.as_list()).astype(np.float32))
        return policy

    home = tmp_path_factory.mktemp("readme")
    export_policy(seeded(0), home / "demo_out" / "cartpole", formats=("onnx",), train_step=0)
    # What training writes: a CheckpointManager folder of the policy and its train step.
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(policy=seeded(1), train_step=tf.Variable(9, dtype=tf.int64)),
        str(home / "demo_out" / "cartpole_run" / "policy_checkpoints"),
        max_to_keep=1,
    )
    manager.save(checkpoint_number=9)
    return home


def test_the_readme_has_the_python_snippets_this_file_runs():
    assert len(SNIPPETS) == 3
    assert "RandomPyPolicy" in SNIPPETS[0] and "load_policy" in SNIPPETS[1]
    assert "observation_and_action_constraint_splitter" in SNIPPETS[2]


def _run(snippet: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-c", snippet],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_short_tour_runs_as_written_and_prints_what_its_comments_say(tmp_path):
    done = _run(SNIPPETS[0], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "(4, 2)",
        "observation/velocity: expected shape (3,), got (4,)",
    ]


def test_running_a_bundle_from_python_runs_as_written(quickstart_outputs):
    # Then the train step in use: the checkpoint's (9), not the export's (0).
    done = _run(SNIPPETS[1] + "\nprint(policy.train_step)\n", quickstart_outputs)
    assert done.returncode == 0, done.stderr
    *lines, train_step = done.stdout.splitlines()
    assert train_step == "9"
    # The specs, then the train step and metadata of the export.
    assert lines[0].startswith("BoundedArraySpec(shape=(4,), dtype=float32, name='observation'")
    assert lines[0].endswith("name='action', minimum=0, maximum=1) 0 {}")
    # print(step.action): a batch of 8 CartPole actions.
    actions = np.array(re.findall(r"\d", " ".join(lines[1:])), int)
    assert len(actions) == 8 and set(actions) <= {0, 1}


def test_the_action_masks_snippet_builds_a_masked_agent_as_written(tmp_path):
    # Then what the agent's greedy policy does with a state whose mask allows one action.
    check = """
import numpy as np
from toolkit.trajectories import time_step as ts
observation = {"observation": np.array([314]), "mask": np.array([[0, 0, 0, 1, 0, 0]], np.int8)}
print(network_spec, int(agent.policy.action(ts.restart(observation, 1)).action[0]))
"""
    done = _run(SNIPPETS[2] + check, tmp_path)
    assert done.returncode == 0, done.stderr
    spec, action = done.stdout.splitlines()[-1].rsplit(" ", 1)
    assert "Taxi" not in spec and "mask" not in spec  # the network sees the state alone
    assert action == "3"  # the only allowed action, whatever the untrained Q values


def test_every_readme_path_is_one_the_quickstart_writes():
    quickstart = _shell_commands(_section("Quickstart"))
    written = set()
    for command in quickstart:
        if "--output-dir" in command:
            written.add(command[command.index("--output-dir") + 1])
        if command[:2] in (["policy-toolkit", "export"], ["policy-toolkit", "quantize"]):
            written.add(command[3])
        if "--plot" in command:
            written.add(command[command.index("--plot") + 1])
    used = set(re.findall(r"[\w./-]*\bdemo_out/[\w./-]*\w", README))
    # Read by later sections; written by the Quickstart (or by the command using it).
    assert used - written <= {"demo_out/cartpole_ray"}, sorted(used - written)
    # No other spelling of the demo's folders (runs/cartpole, out/cartpole) anywhere.
    assert not re.findall(r"(?<![\w_])(?:runs|out)/cartpole", README)
    for snippet in SNIPPETS:
        for path in re.findall(r'"(demo_out/[^"]+)"', snippet):
            assert path in written, path


def _demo():
    spec = importlib.util.spec_from_file_location("demo", ROOT / "examples" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_quickstart_commands_are_the_ones_make_demo_runs():
    demo = _demo()
    out = ROOT / "demo_out"
    expected = [demo.train_command(out / "cartpole_run", 0), *demo.steps(out, out / "cartpole_run")]
    shown = [
        c for c in _shell_commands(_section("Quickstart")) if c[0] in ("python", "policy-toolkit")
    ]
    serve = [c for c in shown if c[:2] == ["policy-toolkit", "serve"]]
    assert [c for c in shown if c not in serve] == expected
    assert serve and serve[0][:3] == demo.serve_commands(out / "cartpole", 8501)[0][:3]
