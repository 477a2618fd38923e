"""Specs: the shapes, dtypes and bounds of observations, actions and states."""
