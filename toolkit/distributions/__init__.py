"""TensorFlow action distributions (TF-Agents' ``distributions`` package, in small).

``shifted_categorical.ShiftedCategorical`` and, in ``utils``, the conversion of network
outputs to per-leaf action distributions and of those to export parameters. Importing
this package imports nothing; its modules need TensorFlow Probability.
"""
