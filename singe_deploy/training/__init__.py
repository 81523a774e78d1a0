"""Fine-tuning and evaluation loops, distillation from the dense model, precision, and torchrun."""
