from types import SimpleNamespace

import torch

from singe_deploy.compress import CPU_PARITY_MACS, MIN_PARITY_SAMPLES, PARITY_PASSES, _parity_batches


def _data(n_batches=4, size=128):
    batches = [(torch.zeros(size, 1, 4, 4), torch.zeros(size)) for _ in range(n_batches)]
    return SimpleNamespace(real=True, val=batches, train=batches)


def _cfg(**kw):
    return dict(dict(parity_batches=4, parity_samples=None, target="onnx", device="cpu"), **kw)


def _samples(batches):
    return sum(len(x) for x in batches)


def test_parity_on_a_cpu_target_is_cut_to_what_the_mac_budget_affords():
    lines = []
    macs = CPU_PARITY_MACS / PARITY_PASSES / 100  # 100 samples afford the budget
    assert _samples(_parity_batches(_cfg(), _data(), macs, lines.append)) == 100
    assert lines and "100 of 512" in lines[0] and "--parity-samples" in lines[0]
    huge = _parity_batches(_cfg(), _data(), CPU_PARITY_MACS, lines.append)
    assert _samples(huge) == MIN_PARITY_SAMPLES


def test_small_models_explicit_caps_and_gpu_targets_keep_their_batches():
    quiet = []
    assert _samples(_parity_batches(_cfg(), _data(), 1e6, quiet.append)) == 512 and not quiet
    assert _samples(_parity_batches(_cfg(parity_samples=40), _data(), 1e6, quiet.append)) == 40
    assert _samples(_parity_batches(_cfg(target="trt"), _data(), CPU_PARITY_MACS, quiet.append)) == 512
    assert _samples(_parity_batches(_cfg(parity_batches=2), _data(), 1e6, quiet.append)) == 256
