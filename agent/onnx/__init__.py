"""ONNX export of GGUF models (``export``) and the folder format it writes (``artifact``)."""
