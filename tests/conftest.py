import json
import os
import tempfile
from pathlib import Path

# latency tables, layer times and alignment probes go to a cache of the test session's own, not the user's
# (set before singe_deploy is imported, and inherited by the compress runs tests start as subprocesses). This file is
# also loaded as a model file (tests/conftest.py:tiny_factory), in the session and in its subprocesses: they reuse the
# session's folder rather than leave one more in /tmp
if "SINGE_DEPLOY_TEST_CACHE" not in os.environ:
    os.environ["SINGE_DEPLOY_TEST_CACHE"] = tempfile.mkdtemp(prefix="singe-deploy-test-cache-")
os.environ["XDG_CACHE_HOME"] = os.environ["SINGE_DEPLOY_TEST_CACHE"]

import pytest
import torch
from torch import nn

from singe_deploy.data.specs import find_fashion_mnist
from singe_deploy.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def _has_fashion():
    try:
        find_fashion_mnist()
        return True
    except UserError:
        return False


needs_fashion = pytest.mark.skipif(not _has_fashion(), reason="Fashion-MNIST not installed "
                                   "(apt-get install dataset-fashion-mnist)")


def load_tool(name):
    """A script of tools/ as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True, scope="session")
def _own_cache():
    yield
    import shutil

    shutil.rmtree(os.environ["XDG_CACHE_HOME"], ignore_errors=True)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


class TinyNet(nn.Module):
    """conv-bn-relu x2 with a residual add, a grouped conv and a depthwise conv, then a classifier."""

    def __init__(self, in_channels=1, num_classes=4):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(16)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.expand = nn.Conv2d(16, 24, 1)
        self.head = nn.Linear(24, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn0(self.stem(x)))
        x = x + torch.relu(self.bn1(self.grouped(x)))
        x = torch.relu(self.bn2(self.dw(x)))
        x = torch.relu(self.expand(x))
        return self.head(x.mean((2, 3)))


def tiny_factory(num_classes=4, in_channels=1):
    return TinyNet(in_channels, num_classes)


def wide_factory(num_classes=4, in_channels=1):
    """Two wide 3x3 convs: milliseconds of compute, so removing channels shows in measured latency."""
    return nn.Sequential(nn.Conv2d(in_channels, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(),
                         nn.Conv2d(128, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, num_classes))


class Fixed224(nn.Module):
    """A model that, like a ViT, takes only its own input size (224x224)."""

    def __init__(self, num_classes=4, in_channels=3):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 8, 3, stride=8)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        if x.shape[-2:] != (224, 224):
            raise ValueError(f"input size must be 224x224, got {tuple(x.shape[-2:])}")
        return self.head(self.conv(x).mean((2, 3)))


def fixed224_factory(num_classes=4, in_channels=3):
    return Fixed224(num_classes, in_channels)


@pytest.fixture
def tiny():
    return TinyNet().eval()


@pytest.fixture
def report_schema():
    return json.loads((ROOT / "singe_deploy" / "schemas" / "report.schema.json").read_text())


def batches(n=2, size=8, shape=(1, 12, 12), classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn((size,) + shape, generator=g), torch.randint(0, classes, (size,), generator=g))
            for _ in range(n)]


@pytest.fixture(scope="session")
def compressed(tmp_path_factory):
    """A finished compress output of TinyNet on synthetic data: report.json, dense/pruned .onnx, pruned.pt."""
    from singe_deploy.cli import main

    out = tmp_path_factory.mktemp("compressed") / "tiny"
    code = main(["compress", "--out", str(out), "--data", "synthetic", "--criterion", "l1", "--round-to", "1",
                 "--model", "tests/conftest.py:tiny_factory", "--input-shape", "1,1,12,12", "--steps", "1",
                 "--finetune-iters", "0", "--epochs", "0", "--calib-batches", "1", "--latency-iters", "5",
                 "--latency-seconds", "0", "--batch-sizes", "1,2"])
    assert code == 0
    return out


class Chain(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16)
        self.c3 = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.c4 = nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        x = torch.relu(self.c4(torch.relu(self.c3(x))))
        return self.fc(x.mean((2, 3)))


def chain_groups(model, shape=(1, 1, 16, 16)):
    from singe_deploy.pruning.groups import all_groups, default_ignored

    return all_groups(model, torch.zeros(shape), default_ignored(model))[1]
