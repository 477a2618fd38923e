"""TF policy -> bundle (SavedModel and ONNX). Needs TensorFlow."""
