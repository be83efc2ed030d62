"""Export Hugging Face models into the versioned ONNX model repository the services load."""
