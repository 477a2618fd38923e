"""``python -m toolkit``: the policy-toolkit CLI."""

from toolkit.cli import main

main()
