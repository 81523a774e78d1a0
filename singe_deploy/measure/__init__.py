"""Latency backends behind one interface, analytic and ONNX MACs/params, thread count, machine facts."""
