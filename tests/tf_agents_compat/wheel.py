"""TF-Agents' own unit tests, read from its official wheel and rewritten mechanically.

The project may not commit TF-Agents' code, so its tests are taken at test time from
``tf_agents-0.19.0-py3-none-any.whl`` (TF-Agents ships its tests in the wheel), which
``make venv`` downloads into the venv's folder without installing it. This module finds
the wheel, checks its sha256 against the pin in ``wheel-requirements.txt``, and turns one
test file into one our modules can run, by these rewrites only (nothing else changes:
no test logic, no expected value):

1. imports: ``tf_agents.X`` -> ``toolkit.X``; TF-Agents' test helpers and the few modules
   this project does not mirror (drivers, bandits, policy utilities) -> the shims in
   ``tests/tf_agents_compat/shims`` (``SHIMMED``); the tests that use an unmirrored
   module are deselected (``scope.DESELECTED``), so its shim only lets the file import;
   ``suite_gym``/``tf_py_environment``, which network tests use for a gym task's specs
   and first time step, -> a shim over ``toolkit.environments.gym_adapter``;
2. NumPy 2's removed aliases -> their NumPy 2 names (``NUMPY2_RENAMES``);
3. TensorFlow's internal ``test_util`` -> the shim whose graph-and-eager decorators run
   the eager half only (this project is TF2 and eager-only; ``tf_test_util.py`` there);
   ``import gin`` -> a shim whose ``clear_config`` has nothing to clear (no gin here);
4. ``tf.keras`` -> ``tf_keras``: TF-Agents 0.19 runs under TF 2.16+ only with
   ``TF_USE_LEGACY_KERAS=1``, where ``tf.keras`` is tf_keras (Keras 2), the Keras this
   project's networks use; the rewrite gives the tests that Keras without switching the
   whole test process's ``tf.keras``.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
WHEEL_NAME = "tf_agents-0.19.0-py3-none-any.whl"
REQUIREMENTS = HERE / "wheel-requirements.txt"
#: The environment variable naming another copy of the wheel (e.g. a shared download).
WHEEL_ENV = "TF_AGENTS_WHEEL"
#: What a machine without the wheel shows (the README names it).
MISSING_REASON = (
    f"TF-Agents' tests need {WHEEL_NAME} in the venv folder (`make venv` downloads it; "
    f"or set {WHEEL_ENV})"
)
#: The largest test file read from the wheel (the largest in scope is 37 kB).
MAX_TEST_BYTES = 1 << 20

SHIM_PACKAGE = "tests.tf_agents_compat.shims"
#: TF-Agents modules that become a shim instead of ``toolkit.X``.
SHIMMED = {
    "tf_agents.utils.test_utils": f"{SHIM_PACKAGE}.tfa_test_utils",
    "tf_agents.drivers.test_utils": f"{SHIM_PACKAGE}.unmirrored",
    "tf_agents.drivers.dynamic_episode_driver": f"{SHIM_PACKAGE}.unmirrored",
    "tf_agents.environments.tf_py_environment": f"{SHIM_PACKAGE}.environments",
    "tf_agents.environments.suite_gym": f"{SHIM_PACKAGE}.environments",
    "tf_agents.bandits.specs.utils": f"{SHIM_PACKAGE}.unmirrored",
    "tf_agents.policies.utils": f"{SHIM_PACKAGE}.policy_utils",
    "gin": f"{SHIM_PACKAGE}.gin",
    "tensorflow.python.framework.test_util": f"{SHIM_PACKAGE}.tf_test_util",
}
#: NumPy aliases removed in NumPy 2 -> what NumPy 2 calls them.
NUMPY2_RENAMES = {
    "float_": "float64",
    "complex_": "complex128",
    "bool8": "bool_",
    "string_": "bytes_",
    "unicode_": "str_",
    "product": "prod",
    "cumproduct": "cumprod",
    "alltrue": "all",
    "sometrue": "any",
    "Inf": "inf",
    "Infinity": "inf",
    "infty": "inf",
    "NaN": "nan",
    "NAN": "nan",
}


class WheelError(Exception):
    """The wheel is there but is not the pinned one (a test failure, not a skip)."""


def pinned_sha256() -> str:
    """The sha256 that ``wheel-requirements.txt`` pins (pip checks the same one)."""
    match = re.search(r"--hash=sha256:([0-9a-f]{64})", REQUIREMENTS.read_text())
    if match is None:
        raise WheelError(f"{REQUIREMENTS}: expected a --hash=sha256:... pin, found none")
    return match.group(1)


def find_wheel() -> Path | None:
    """The wheel: ``$TF_AGENTS_WHEEL``, else the venv's folder (``sys.prefix``); None if absent."""
    candidates = []
    if os.environ.get(WHEEL_ENV):
        candidates.append(Path(os.environ[WHEEL_ENV]))
    candidates.append(Path(sys.prefix) / WHEEL_NAME)
    return next((path for path in candidates if path.is_file()), None)


def check_wheel(path: Path) -> None:
    """Raises WheelError unless ``path`` hashes to the pinned sha256."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    expected = pinned_sha256()
    if digest != expected:
        raise WheelError(f"{path}: expected sha256 {expected}, got {digest}")


def read_test(wheel: zipfile.ZipFile, member: str) -> str:
    """One test file's text from the wheel, its size bounded before it is read."""
    info = wheel.getinfo(member)
    if info.file_size > MAX_TEST_BYTES:
        raise WheelError(f"{member}: expected at most {MAX_TEST_BYTES} bytes, got {info.file_size}")
    with wheel.open(info) as handle:
        data = handle.read(MAX_TEST_BYTES + 1)
    if len(data) > MAX_TEST_BYTES:
        raise WheelError(f"{member}: more bytes than its declared {info.file_size}")
    return data.decode("utf-8")


_TF_KERAS = re.compile(r"\btf\.(?:compat\.v[12]\.)?keras\b")
_FROM_IMPORT = re.compile(r"^(\s*from\s+)([A-Za-z_][\w.]*)(\s+import\s+)(.*)$")
_IMPORT = re.compile(r"^(\s*import\s+)([A-Za-z_][\w.]*)(.*)$")


def _module_for(name: str) -> str:
    if name in SHIMMED:
        return SHIMMED[name]
    if name == "tf_agents" or name.startswith("tf_agents."):
        return "toolkit" + name[len("tf_agents") :]
    return name


def _rewrite_from_import(match: re.Match[str]) -> str:
    head, module, middle, names = match.groups()
    name, _, alias = (part.strip() for part in names.partition(" as "))
    target = SHIMMED.get(f"{module}.{name}")
    if target is not None:
        # ``from tf_agents.utils import test_utils``: the imported name is the shimmed module.
        package, shim = target.rsplit(".", 1)
        spacing = names[len(names.rstrip()) :]  # before a trailing comment
        return f"{head}{package}{middle}{shim} as {alias or name}{spacing}"
    return f"{head}{_module_for(module)}{middle}{names}"


def rewrite(source: str) -> str:
    """The mechanical rewrites of the module docstring, line by line."""
    out = []
    for line in source.splitlines():
        code, hash_, comment = line.partition("#")
        match = _FROM_IMPORT.match(code)
        if match:
            code = _rewrite_from_import(match)
        else:
            match = _IMPORT.match(code)
            if match and _module_for(match.group(2)) != match.group(2):
                head, module, rest = match.groups()
                if " as " not in rest and "." in module:
                    raise ValueError(f"import {module}: no rewrite for a dotted plain import")
                alias = rest if " as " in rest else f" as {module}{rest}"
                code = f"{head}{_module_for(module)}{alias}"
        for old, new in NUMPY2_RENAMES.items():
            code = re.sub(rf"\bnp\.{old}\b", f"np.{new}", code)
        if _TF_KERAS.search(code):
            code = _TF_KERAS.sub("tf_keras", code)
        out.append(code + hash_ + comment)
        if re.match(r"^import tensorflow as tf\b", code):
            out.append("import tf_keras  # rewrite 4: tf.keras is tf_keras, as with TF-Agents")
    return "\n".join(out) + "\n"
