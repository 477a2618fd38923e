"""Environments: gymnasium adapters and drivers that run Python policies in them.

Import the submodules (``toolkit.environments.gym_adapter``, ``toolkit.environments.driver``):
this package imports nothing itself, so importing it stays cheap.
"""
