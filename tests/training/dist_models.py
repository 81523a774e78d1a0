"""Models for the distributed tests, loaded by file path (model spec tests/training/dist_models.py:NAME)."""
import os

import torch
from torch import nn


class Small(nn.Module):
    """conv-bn-relu, a residual conv-bn-relu, then a classifier."""

    def __init__(self, in_channels=1, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32),
                                    nn.ReLU())
        self.head = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.block(x)
        return self.head(self.expand(x).mean((2, 3)))


class FailsOnRank1(Small):
    def forward(self, x):
        if self.training and os.environ.get("RANK") == "1":
            raise RuntimeError("rank 1 broke while fine-tuning")
        return super().forward(x)


class HangsOnRank1(Small):
    def forward(self, x):
        if self.training and os.environ.get("RANK") == "1":
            import time

            time.sleep(600)
        return super().forward(x)


def hangs_on_rank1(num_classes=10, in_channels=1):
    torch.manual_seed(0)
    return HangsOnRank1(in_channels, num_classes)


def tiny(num_classes=10, in_channels=1):
    torch.manual_seed(0)
    return Small(in_channels, num_classes)


def fails_on_rank1(num_classes=10, in_channels=1):
    torch.manual_seed(0)
    return FailsOnRank1(in_channels, num_classes)
