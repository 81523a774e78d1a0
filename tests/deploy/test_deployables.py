from types import SimpleNamespace

import torch

from singe_deploy.deploy.deployables import (
    CPU_PARITY_MACS,
    MIN_PARITY_SAMPLES,
    PARITY_PASSES,
    DeploySettings,
)
from singe_deploy.deploy.deployables import parity_batches as _parity_batches


def _data(n_batches=4, size=128):
    batches = [(torch.zeros(size, 1, 4, 4), torch.zeros(size)) for _ in range(n_batches)]
    return SimpleNamespace(real=True, val=batches, train=batches)


def _cfg(**kw):
    return DeploySettings(**dict(dict(parity_batches=4, parity_samples=None, target="onnx", device="cpu"), **kw))


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


def test_settings_come_from_the_run_options():
    import argparse

    from singe_deploy.config import add_arguments, resolve, validate

    ap = argparse.ArgumentParser()
    add_arguments(ap)
    cfg = validate(resolve(ap.parse_args(["--target", "trt", "--trt-precision", "fp16", "--parity-atol", "0.02",
                                          "--batch-sizes", "1,4", "--cuda-graph"])))
    s = DeploySettings.from_config(cfg)
    assert s.target == "trt" and s.batch_sizes == (1, 4) and s.parity_atol == 0.02 and s.quantize == ()
    assert s.engine.precision == "fp16" and s.engine.cuda_graph and not s.on_cpu
    assert s.variant_of("pruned") == ("pruned", "fp16") and s.variant_of("pruned.int8") == ("pruned", "int8")
    onnx = DeploySettings.from_config(validate(resolve(ap.parse_args(["--quantize", "int8"]))))
    assert onnx.on_cpu and onnx.quantize == ("int8",) and onnx.variant_of("dense") == ("dense", "fp32")
