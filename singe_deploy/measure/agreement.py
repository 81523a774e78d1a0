"""Top-1 agreement of two outputs (numpy only: `check` uses it where torch is not installed)."""
import numpy as np


def top1_agreement(a, b, tie=0.0):
    """Per sample, the share of its predictions (one, or one per pixel or anchor) whose reference top class is
    b's too, or within `tie` of b's best score."""
    axis = 1 if a.ndim == 4 else -1  # (N, classes, H, W) maps: the class of every pixel
    picked = np.take_along_axis(b, np.expand_dims(a.argmax(axis), axis), axis)
    same = picked >= b.max(axis, keepdims=True) - tie
    return same.reshape(len(same), -1).mean(1)
