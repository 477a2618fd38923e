"""The policy contract: one suite that every policy kind runs.

A case module (``cases_*.py`` in this package) defines ``CASES``, a list of
PolicyCase. ``tests/test_policy_contract.py`` runs every contract test on each.
"""
