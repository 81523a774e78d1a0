"""Two gloo processes against one: the same scores, the same fine-tuning, the same pruned model."""
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from singe_deploy.pruning.groups import all_groups, default_ignored
from singe_deploy.scoring.importance import make_criterion
from singe_deploy.training import distributed
from singe_deploy.training.loops import Recipe, evaluate, train_iters

from ..conftest import ROOT, TinyNet, batches


def _data(n=4, size=8):
    return batches(n, size=size)


def _work(model, data, distill=False):
    """Scores with SInGE and Taylor, then 4 fine-tuning iterations on the data (distilling from another TinyNet when
    asked), then accuracy."""
    groups = all_groups(model, torch.zeros(1, 1, 12, 12), default_ignored(model))[1]
    scores = [make_criterion(c, steps=2).score(model, groups, data) if c == "singe" else
              make_criterion(c).score(model, groups, data) for c in ("singe", "taylor")]
    it = iter(data * 2)
    recipe = None
    if distill:
        torch.manual_seed(1)
        recipe = Recipe(teacher=TinyNet().eval(), distill_alpha=0.7, distill_t=2.0)
    train_iters(model, None, 4, 0.05, batches=it, recipe=recipe)
    acc = evaluate(model, data)
    return scores, {k: v.clone() for k, v in model.state_dict().items()}, acc


def _rank(rank, world, path, out, sync_bn=True, distill=False):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=world)
    distributed.init("cpu", "gloo", 60, sync_bn)
    torch.manual_seed(0)
    result = _work(TinyNet().eval(), _data(), distill)
    if rank == 0:
        torch.save(result, out)
    distributed.shutdown()


@pytest.mark.parametrize("distill", [False, True], ids=["plain", "distilling"])
def test_two_gloo_ranks_compute_what_one_process_computes(tmp_path, distill):
    torch.manual_seed(0)
    single = _work(TinyNet().eval(), _data(), distill)
    out = tmp_path / "rank0.pt"
    mp.spawn(_rank, args=(2, str(tmp_path / "store"), str(out), True, distill), nprocs=2, join=True)
    scores, state, acc = torch.load(out, weights_only=False)
    for crit_a, crit_b in zip(single[0], scores):
        for a, b in zip(crit_a, crit_b):
            if a is not None:
                assert torch.allclose(a, b, rtol=1e-5, atol=1e-12)
    for k, v in single[1].items():
        assert torch.allclose(v.float(), state[k].float(), rtol=1e-4, atol=1e-5), k  # BN stats synced too
    assert acc == single[2]


def test_without_synced_batchnorm_two_ranks_drift_from_one_process(tmp_path):
    torch.manual_seed(0)
    single = _work(TinyNet().eval(), _data())
    out = tmp_path / "rank0.pt"
    mp.spawn(_rank, args=(2, str(tmp_path / "store"), str(out), False), nprocs=2, join=True)
    state = torch.load(out, weights_only=False)[1]
    assert not torch.allclose(single[1]["bn0.running_var"], state["bn0.running_var"], rtol=1e-4)


RUN = ["--model", "tests/training/dist_models.py:tiny", "--checkpoint", "none", "--train-limit", "512", "--val-limit", "256",
       "--steps", "2", "--finetune-iters", "3", "--epochs", "0.05", "--calib-batches", "3", "--batch-size", "64",
       "--criterion", "singe", "--singe-steps", "2", "--round-to", "1", "--no-export", "--dist-timeout", "60"]


def _compress(*argv, timeout=300):
    return subprocess.run([sys.executable, "-m", "singe_deploy", "compress", *argv], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def _channels(out):
    import json

    report = json.loads((out / "report.json").read_text())
    return [(layer["name"], layer["pruned_out"]) for layer in report["layers"]], report


@pytest.mark.skipif(not os.path.exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"),
                    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_two_processes_prune_the_same_channels_as_one(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = _compress(*RUN, "--out", str(one))
    r2 = _compress(*RUN, "--nproc", "2", "--out", str(two))
    assert r1.returncode == 0, r1.stderr
    assert r2.returncode == 0, r2.stderr
    (c1, rep1), (c2, rep2) = _channels(one), _channels(two)
    assert c1 == c2 and rep1["pruned"]["macs"] == rep2["pruned"]["macs"]
    assert rep2["distributed"] == {"world_size": 2, "backend": "gloo", "device": "cpu", "sync_bn": True}
    assert rep1["distributed"]["world_size"] == 1
    assert abs(rep1["pruned"]["accuracy"] - rep2["pruned"]["accuracy"]) < 0.02  # float order only
    assert r2.stdout.count("wrote ") == 1  # rank 0 alone logs and writes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]


def test_a_failing_rank_fails_the_run_with_its_error_and_no_hang(tmp_path):
    argv = [a if a != "tests/training/dist_models.py:tiny" else "tests/training/dist_models.py:fails_on_rank1" for a in RUN]
    argv[argv.index("--dist-timeout") + 1] = "20"
    r = _compress(*argv, "--nproc", "2", "--data", "synthetic", "--input-shape", "1,1,12,12",
                  "--out", str(tmp_path / "o"), timeout=120)
    assert r.returncode == 0, r.stderr  # synthetic data: nothing is fine-tuned, rank 1 never trains
    r = _compress(*argv, "--nproc", "2", "--out", str(tmp_path / "p"), timeout=120)
    assert r.returncode == 1 and "rank 1 broke while fine-tuning" in r.stderr
    assert not (tmp_path / "p").exists()


def test_bad_input_on_rank_0_stops_every_rank_with_exit_2(tmp_path):
    (tmp_path / "o").mkdir()
    r = _compress(*RUN, "--data", "synthetic", "--input-shape", "1,1,12,12", "--nproc", "2",
                  "--out", str(tmp_path / "o"), timeout=120)
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.startswith("singe-deploy: error:")]
    assert lines and "exists" in lines[0] and all("exists" in line for line in lines)


def test_a_hanging_rank_is_cut_off_by_the_timeout(tmp_path):
    import time

    argv = [a if a != "tests/training/dist_models.py:tiny" else "tests/training/dist_models.py:hangs_on_rank1" for a in RUN]
    argv[argv.index("--dist-timeout") + 1] = "8"
    t = time.time()
    r = _compress(*argv, "--nproc", "2", "--out", str(tmp_path / "h"), timeout=240)
    assert r.returncode == 1 and "did not answer" in r.stderr
    assert time.time() - t < 200  # the rank asleep for 600 s did not hold the run
    assert not (tmp_path / "h").exists()


def _flowchart_on(device):
    from singe_deploy.data.specs import Data
    from singe_deploy.measure.flops import count
    from singe_deploy.pruning.entwined import prune

    distributed.init(device)
    try:
        data = batches(4, size=16)
        model = TinyNet().eval()
        dense = count(model, (1, 1, 12, 12)).macs
        prune(model, (1, 1, 12, 12), make_criterion("singe", steps=2), {"macs_reduction": 1.5},
              {"steps": 2, "finetune_iters": 3, "epochs": 0.5, "round_to": 1, "calib_batches": 2},
              data=Data("test", data, data[:2], 4, (1, 12, 12), True), log=lambda *a: None)
        assert all(p.device.type == "cpu" for p in model.parameters())  # back on the CPU for planning/export
        assert count(model, (1, 1, 12, 12)).macs < dense
        assert evaluate(model, data[:2]) >= 0
    finally:
        distributed.shutdown()


def test_the_flowchart_on_the_cpu_device():
    _flowchart_on("cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_flowchart_scores_and_fine_tunes_on_cuda():
    assert distributed.init("cuda").device.type == "cuda"
    distributed.shutdown()
    _flowchart_on("cuda")
