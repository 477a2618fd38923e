"""A TF-free policy server speaking TF Serving's REST API (``policy-toolkit serve``).

Needs the ``[serve]`` extra (onnxruntime, httptools, prometheus-client); never
imports TensorFlow. Importing this package loads none of those: ``runtimes.serving.server``
does. docs/serving.md describes the API, the versions and what is reproducible.
"""

from __future__ import annotations
