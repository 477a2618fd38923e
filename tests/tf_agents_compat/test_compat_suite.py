"""The compat suite's own machinery: the wheel's pin and bounds, the mechanical rewrites,
the scope's entries against the wheel and docs/tf-agents-differences.md."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from tests.tf_agents_compat import scope, wheel
from tests.tf_agents_compat.differences import RELATIVE, DifferencesDoc

ROOT = Path(__file__).resolve().parents[2]


def test_rewrites_are_the_documented_mechanical_ones():
    source = "\n".join(
        [
            "from tf_agents.specs import tensor_spec",
            "from tf_agents.utils import test_utils",
            "from tf_agents.drivers import test_utils as drivers_test_utils",
            "from tensorflow.python.framework import test_util  # TF internal",
            "import gin",
            "import tensorflow as tf  # pylint: disable=g-explicit-tensorflow-version-import",
            "x = np.float_(1) + np.product([2]) + np.Inf  # np.float_ in a comment stays",
            "layer = tf.keras.layers.Dense(3); old = tf.compat.v1.keras.layers.Dense",
            "name = 'tf_agents.specs'  # strings are not imports",
        ]
    )
    assert wheel.rewrite(source).splitlines() == [
        "from toolkit.specs import tensor_spec",
        "from tests.tf_agents_compat.shims import tfa_test_utils as test_utils",
        "from tests.tf_agents_compat.shims import unmirrored as drivers_test_utils",
        "from tests.tf_agents_compat.shims import tf_test_util as test_util  # TF internal",
        "import tests.tf_agents_compat.shims.gin as gin",
        "import tensorflow as tf  # pylint: disable=g-explicit-tensorflow-version-import",
        "import tf_keras  # rewrite 4: tf.keras is tf_keras, as with TF-Agents",
        "x = np.float64(1) + np.prod([2]) + np.inf  # np.float_ in a comment stays",
        "layer = tf_keras.layers.Dense(3); old = tf_keras.layers.Dense",
        "name = 'tf_agents.specs'  # strings are not imports",
    ]


def test_the_wheel_must_hash_to_the_pin(tmp_path):
    fake = tmp_path / wheel.WHEEL_NAME
    fake.write_bytes(b"not the wheel")
    digest = hashlib.sha256(b"not the wheel").hexdigest()
    with pytest.raises(
        wheel.WheelError, match=rf"expected sha256 {wheel.pinned_sha256()}, got {digest}$"
    ):
        wheel.check_wheel(fake)
    # pip checks the same pin when make venv downloads it
    requirement = wheel.REQUIREMENTS.read_text()
    assert f"tf-agents==0.19.0 --hash=sha256:{wheel.pinned_sha256()}" in requirement


def test_test_files_are_read_within_their_declared_size():
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w") as archive:
        archive.writestr("tf_agents/big_test.py", "x" * (wheel.MAX_TEST_BYTES + 1))
        archive.writestr("tf_agents/small_test.py", "print(1)\n")
    with zipfile.ZipFile(data) as archive:
        with pytest.raises(wheel.WheelError, match=r"big_test.py: expected at most 1048576 bytes"):
            wheel.read_test(archive, "tf_agents/big_test.py")
        assert wheel.read_test(archive, "tf_agents/small_test.py") == "print(1)\n"


def test_without_the_wheel_the_suite_skips_with_the_readme_reason(monkeypatch, tmp_path):
    monkeypatch.setenv(wheel.WHEEL_ENV, str(tmp_path / "absent.whl"))
    monkeypatch.setattr(wheel.sys, "prefix", str(tmp_path))
    assert wheel.find_wheel() is None
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert wheel.MISSING_REASON in readme


def test_every_entry_names_a_line_of_the_differences_doc():
    doc = DifferencesDoc.load()
    used = set(scope.XFAIL.values())
    assert used <= set(doc.entries), sorted(used - set(doc.entries))
    lines = (ROOT / RELATIVE).read_text().splitlines()
    for name in used:
        number, text = doc.entries[name]
        assert lines[number - 1].startswith(f"- `{name}`: ")
        assert doc.reason(name) == f"{RELATIVE}:{number} ({name}): {text}"
    with pytest.raises(KeyError, match="expected an entry `no-such-thing`"):
        doc.reason("no-such-thing")


def test_scope_files_exist_in_the_wheel_and_entries_name_them():
    path = wheel.find_wheel()
    if path is None:
        pytest.skip(wheel.MISSING_REASON)
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
    assert {f"tf_agents/{name}" for name in scope.FILES} <= names
    for key in (*scope.DESELECTED, *scope.XFAIL):
        assert key.split("::")[0] in scope.FILES, key
