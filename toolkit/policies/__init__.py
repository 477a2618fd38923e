"""Python and TensorFlow policies. Import the modules you need; this imports nothing heavy."""
