"""policy-toolkit: RL policies from TensorFlow to production.

Importing this package is cheap: it loads no TensorFlow and no onnxruntime.
"""

__version__ = "0.1.0"
