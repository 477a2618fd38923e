"""Bundle -> Python policy. The onnx backend imports no TensorFlow."""
