"""A compress run killed at any point (SIGKILL: no cleanup at all) and resumed with --resume ends where the
uninterrupted run ends: the same channels, the same weights, the same accuracy."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from .conftest import needs_fashion

ARGS = ["--criterion", "taylor", "--steps", "2", "--finetune-iters", "10", "--epochs", "0.5", "--train-limit", "2048",
        "--val-limit", "256", "--calib-batches", "1", "--batch-sizes", "1", "--latency-iters", "3",
        "--latency-seconds", "0", "--parity-batches", "1", "--checkpoint-minutes", "0"]
# fault points (singe_deploy/faults.py): fine-tuning iterations 1-10 are step 1's, 11-20 step 2's, 21-28 the final's
KILLS = {"checkpoint write": "write:14", "step fine-tuning": "finetune:15", "final fine-tuning": "finetune:25",
         "export": "export:1"}


def _compress(out, *extra, fault=None, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1")  # one thread: the same kernels, bit for bit, in every run
    env.pop("SINGE_DEPLOY_FAULT", None)
    if fault:
        env["SINGE_DEPLOY_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "singe_deploy", "compress", "--out", str(out), *ARGS, *extra],
                          env=env, capture_output=True, text=True, **kw)


def _interruptible():
    """Ctrl-C as a terminal delivers it: a shell running this suite in the background ignores SIGINT, and its
    children would inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _result(out):
    report = json.loads((out / "report.json").read_text())
    weights = torch.load(out / "pruned.pt", weights_only=True)["state_dict"]
    return ([(s["removed_channels"], s["params"], s["accuracy"]) for s in report["steps"]],
            report["pruned"]["accuracy"], report["layers"], weights)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "whole"
    r = _compress(out)
    assert r.returncode == 0, r.stderr
    return _result(out)


def _same(a, b):
    assert a[:3] == b[:3]
    assert a[3].keys() == b[3].keys() and all(torch.equal(a[3][k], b[3][k]) for k in a[3])


@needs_fashion
@pytest.mark.slow
@pytest.mark.parametrize("where", list(KILLS))
def test_a_run_killed_anywhere_resumes_to_the_uninterrupted_result(tmp_path, uninterrupted, where):
    out = tmp_path / "run"
    killed = _compress(out, fault=KILLS[where])
    assert killed.returncode == -signal.SIGKILL
    work = tmp_path / ".run.partial"
    assert (work / "state.pt").is_file() and not out.exists()
    torch.load(work / "state.pt", weights_only=True)  # whole: the kill left the old state or the new one
    again = _compress(out)  # without --resume the interrupted run is neither continued nor thrown away
    assert again.returncode == 2 and "holds an interrupted run; add --resume" in again.stderr
    resumed = _compress(out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout and not work.exists()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [".singe-deploy.json"]  # no torn temporary
    _same(_result(out), uninterrupted)


@needs_fashion
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_keep_the_state_and_say_how_to_resume(tmp_path, uninterrupted, sig):
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")  # each line as it is printed
    p = subprocess.Popen([sys.executable, "-m", "singe_deploy", "compress", "--out", str(out), *ARGS], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_interruptible)
    lines = []
    for line in p.stdout:  # the first step is checkpointed when its line is printed
        lines.append(line)
        if line.startswith("step 1/2"):
            p.send_signal(sig)
            break
    rest, err = p.communicate(timeout=120)
    assert p.returncode == 130 and "interrupted" in err and "Traceback" not in err
    assert f"rerun the same command plus --resume --out {out}" in rest
    resumed = _compress(out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    _same(_result(out), uninterrupted)


@needs_fashion
@pytest.mark.slow
def test_an_interrupt_before_anything_is_resumable_leaves_nothing_and_no_hint(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")  # each line as it is printed
    p = subprocess.Popen([sys.executable, "-m", "singe_deploy", "compress", "--out", str(out), *ARGS,
                          "--checkpoint-minutes", "5"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, preexec_fn=_interruptible)
    for line in p.stdout:
        if line.startswith("dense "):  # the work folder exists, no state yet
            time.sleep(0.2)
            p.send_signal(signal.SIGTERM)
            break
    rest, err = p.communicate(timeout=120)
    assert p.returncode == 130 and "--resume" not in rest + err
    assert not out.exists() and not (tmp_path / ".run.partial").exists()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A small image folder (3 classes, 40 training and 8 validation images each, 16x16)."""
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("val", 8)):
        for c in range(3):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 80, (16, 16, 3)) + 60 * c
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / f"c{c}" / f"{i}.png")
    return root


@pytest.mark.slow
def test_an_image_folder_run_killed_in_fine_tuning_resumes_to_the_uninterrupted_result(tmp_path, images):
    """Shuffled, augmented loader batches (a generator's state) and calibration batches that do not depend on what
    ran before: the resumed run prunes the same channels as the uninterrupted one."""
    data = ["--data", f"imagefolder:{images}", "--input-shape", "1,3,16,16", "--batch-size", "16", "--no-export",
            "--train-limit", "120", "--val-limit", "24"]
    whole = _compress(tmp_path / "whole", *data)
    assert whole.returncode == 0, whole.stderr
    killed = _compress(tmp_path / "run", *data, fault="finetune:14")
    assert killed.returncode == -signal.SIGKILL
    resumed = _compress(tmp_path / "run", *data, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    _same(_result(tmp_path / "run"), _result(tmp_path / "whole"))


BUDGET = ["--max-accuracy-drop", "0", "--macs-reduction", "1.5", "--steps", "1", "--no-export"]


@needs_fashion
@pytest.mark.slow
def test_a_run_killed_inside_a_budget_step_that_is_rolled_back_resumes_to_the_uninterrupted_result(tmp_path):
    """Step 1 reaches the floor (iterations 1-10); step 2 is judged (11-20) and, at no loss allowed, rolled back, and
    so is the half step after it (21-30): a kill inside step 2's fine-tuning must resume with the model before it, to
    roll back to."""
    whole = tmp_path / "whole"
    first = _compress(whole, *BUDGET)
    assert first.returncode in (0, 1), first.stderr  # 1: the test set's drop may be over a budget of 0 points
    steps = json.loads((whole / "report.json").read_text())["steps"]
    assert [s.get("rolled_back", False) for s in steps] == [False, True, True]
    out = tmp_path / "run"
    assert _compress(out, *BUDGET, fault="finetune:15").returncode == -signal.SIGKILL
    resumed = _compress(out, *BUDGET, "--resume")
    assert resumed.returncode == first.returncode, resumed.stderr
    assert json.loads((out / "report.json").read_text())["steps"] == [
        dict(s, **{k: r[k] for k in ("score_seconds", "plan_seconds", "finetune_seconds")})
        for s, r in zip(steps, json.loads((out / "report.json").read_text())["steps"])]
    a, b = (torch.load(d / "pruned.pt", weights_only=True)["state_dict"] for d in (whole, out))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


SWEEP = ["--sweep", "1.3,1.6", "--no-export"]


@needs_fashion
@pytest.mark.slow
def test_a_sweep_killed_in_a_point_s_fine_tuning_resumes_to_the_uninterrupted_points(tmp_path):
    """Steps 1-2 fine-tune in iterations 1-20; the points' own fine-tuning (0.5 epochs of 16 batches) in 21-28 and
    29-36: the kill lands in the second point's, after the first point is written."""
    whole = tmp_path / "whole"
    assert _compress(whole, *SWEEP).returncode == 0
    out = tmp_path / "run"
    assert _compress(out, *SWEEP, fault="finetune:32").returncode == -signal.SIGKILL
    assert (tmp_path / ".run.partial" / "sweep" / "macs-1.3x" / "point.json").is_file()
    resumed = _compress(out, *SWEEP, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "sweep 1.3x: fine-tuned before" in resumed.stdout

    def points(d):
        return [{k: v for k, v in q.items() if k != "finetune_seconds"}
                for q in json.loads((d / "report.json").read_text())["sweep"]["points"]]

    assert points(out) == points(whole)
    for q in points(whole):
        a, b = (torch.load(d / q["pruned_pt"], weights_only=True)["state_dict"] for d in (whole, out))
        assert all(torch.equal(a[k], b[k]) for k in a)
