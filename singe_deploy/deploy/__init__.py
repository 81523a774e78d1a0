"""Export to ONNX, fp16/int8 deployables, TensorRT engines, and their checks against PyTorch."""
