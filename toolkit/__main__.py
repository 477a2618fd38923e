"""``python -m toolkit`` and the ``policy-toolkit`` script: the CLI.

The command line is an extra (``[cli]``, part of every device extra and of ``[all]``):
``pip install policy-toolkit`` alone installs the TF-free core without typer and rich.
This module imports neither before it has checked that they are there, so such an
install gets one line naming the extra (exit 2) instead of a traceback.
"""

from __future__ import annotations

import importlib.util
import sys

__all__ = ["main"]

#: The modules the command line imports before any command runs (the ``[cli]`` extra).
CLI_MODULES = ("typer", "rich")


def _missing() -> list[str]:
    missing = []
    for name in CLI_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a blocked or half-installed module
            found = False
        if not found:
            missing.append(name)
    return missing


def main() -> None:
    """Runs the CLI, or says in one line which extra installs it (exit 2)."""
    missing = _missing()
    if missing:
        print(
            f"error: the policy-toolkit command line needs {' and '.join(missing)}, which is "
            "not installed: pip install 'policy-toolkit[cli]' (or a device extra, which "
            "includes it: '[runtime]', '[litert]')",
            file=sys.stderr,
        )
        raise SystemExit(2)
    from toolkit.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
