"""Helpers TF-Agents users import from ``tf_agents.utils`` (nest_utils, common)."""
