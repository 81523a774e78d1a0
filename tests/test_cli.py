import json
import subprocess
import sys

import jsonschema
import pytest
import torch

from singe_deploy.cli import main
from singe_deploy.compress import run
from singe_deploy.config import defaults, validate
from singe_deploy.measure.device import TELLING_FLAGS
from singe_deploy.models.specs import build_model, load_pruned

from .conftest import ROOT, SHARED, load_tool, needs_fashion

FAST = ["--train-limit", "512", "--val-limit", "256", "--steps", "2", "--finetune-iters", "3", "--epochs", "0.02",
        "--calib-batches", "1", "--singe-steps", "2", "--latency-iters", "5", "--latency-seconds", "0.05",
        "--batch-size", "64", "--parity-batches", "1"]


def _bad(tmp_path, capsys, argv):
    out = tmp_path / "out"
    code = main(["compress", "--out", str(out)] + argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("singe-deploy: error:"), err
    assert not out.exists() and not (tmp_path / ".out.partial").exists()
    return err[0]


def _files(tmp_path):
    torch.save(build_model("builtin:resnet56", 10, 1).state_dict(), tmp_path / "r56.pt")
    (tmp_path / "broken.pt").write_bytes(b"\x00garbage")
    (tmp_path / "bad.yaml").write_text("steps: [\n")
    (tmp_path / "unknown.yaml").write_text("learning_rate: 0.1\n")


CASES = [
    (["--model", "resnet20"], "no kind"),
    (["--model", "builtin:resnet21"], "unknown builtin"),
    (["--model", "torchvision:resnet51", "--data", "synthetic"], "unknown torchvision model"),
    (["--checkpoint", "{tmp}/missing.pt"], "does not exist"),
    (["--checkpoint", "{tmp}/broken.pt"], "is corrupt"),
    (["--checkpoint", "{tmp}/r56.pt"], "does not fit"),
    (["--criterion", "magnitude"], "must be one of"),
    (["--macs-reduction", "1"], "must be > 1"),
    (["--macs-reduction", "0.5"], "must be > 1"),
    (["--macs-reduction", "500", "--data", "synthetic", "--checkpoint", "none"], "--macs-reduction 500 is unreachable"),
    (["--sweep", "2,500"], "a --sweep point of 500 is unreachable"),
    (["--config", "{tmp}/bad.yaml"], "not valid YAML"),
    (["--config", "{tmp}/unknown.yaml"], "unknown config key"),
    (["--config", "{tmp}/none.yaml"], "does not exist"),
    (["--data-dir", "{tmp}"], "Fashion-MNIST not found"),
    (["--data", "imagefolder:{tmp}/nowhere"], "train/<class>"),
    (["--model", "torchvision:resnet18", "--input-shape", "1,1,64,64", "--data", "synthetic"], "3 input channels"),
    (["--model", "torchvision:vit_b_16", "--input-shape", "1,3,64,64", "--data", "synthetic"], "fails on input shape"),
    (["--target", "trt"], "--target trt needs"),
    (["--target", "torch", "--device", "cuda"], "CUDA"),
    (["--ignore-layers", "nope"], "does not have"),
    (["--cuda-graph"], "--cuda-graph times CUDA-graph replay on a GPU"),
    (["--trt-precision", "int8"], "must be one of"),
    (["--latency-reduction", "2", "--macs-reduction", "2"], "give one target, not --macs-reduction and "
                                                            "--latency-reduction"),
    (["--latency-budget-ms", "-1"], "--latency-budget-ms must be > 0"),
    (["--latency-reduction", "2", "--target", "torch", "--device", "cuda"], "CUDA"),
    (["--amp", "fp16", "--train-device", "cpu", "--data", "synthetic"], "--amp fp16 needs a CUDA device"),
    (["--resume"], "--resume: no interrupted run was found"),
    (["--max-accuracy-drop", "-0.5"], "--max-accuracy-drop is in accuracy points, 0 to 100, got -0.5"),
    (["--max-accuracy-drop", "101"], "--max-accuracy-drop is in accuracy points, 0 to 100, got 101"),
    (["--max-accuracy-drop", "1", "--data", "synthetic"], "--max-accuracy-drop needs real data"),
    (["--max-accuracy-drop", "1", "--holdout", "1"], "--holdout is a fraction of the training data"),
    (["--max-accuracy-drop", "1", "--finetune-iters", "0"], "give --finetune-iters > 0"),
    (["--sweep", "2"], "--sweep takes two or more different reductions above 1"),
    (["--sweep", "0.5,2"], "--sweep takes two or more different reductions above 1"),
    (["--sweep", "2,x"], "'sweep' must be a list of numbers like 1.5,2,3"),
    (["--sweep", "2,3", "--max-accuracy-drop", "1"], "--sweep gives the MACs reductions to prune to"),
    (["--sweep", "2,3", "--latency-reduction", "1.5"], "--sweep gives the MACs reductions to prune to"),
    (["--sweep", "2,3", "--data", "synthetic"], "--sweep fine-tunes each point"),
    (["--input-shape", "1,3,28,28"], "takes 1-channel input (conv1.weight is (16, 1, 3, 3) in the file) but the "
                                     "model was built for 3 channels (--input-shape or the data's); pass "
                                     "--input-shape 1,1,H,W or drop it"),
]


@pytest.mark.parametrize("argv,match", CASES, ids=[c[1] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, match):
    _files(tmp_path)
    if torch.cuda.is_available() and "cuda" in argv:
        pytest.skip("this machine has a GPU")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if needs_fashion.args[0] and "synthetic" not in argv and "--data-dir" not in argv and "imagefolder" not in " ".join(argv):
        pytest.skip("needs Fashion-MNIST")
    assert match in _bad(tmp_path, capsys, argv)


def test_existing_output_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    code = main(["compress", "--out", str(out), "--data", "synthetic"])
    err = capsys.readouterr().err
    assert code == 2 and "exists" in err and "--force" in err
    assert list(out.iterdir()) == []


def test_resume_needs_the_folder_of_the_interrupted_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["compress", "--resume"]) == 2
    assert "--resume needs --out DIR" in capsys.readouterr().err and not list(tmp_path.iterdir())
    finished = tmp_path / "done"
    finished.mkdir()
    assert main(["compress", "--resume", "--out", str(finished)]) == 2
    assert "holds a finished run" in capsys.readouterr().err


@needs_fashion
@pytest.mark.parametrize("checkpoint,warned", [(None, True), ("none", False)])
def test_random_weights_on_real_data_get_a_warning(checkpoint, warned):
    from singe_deploy.compress import prepare

    cfg = validate(dict(defaults(), model="torchvision:resnet18", input_shape=[1, 3, 32, 32], train_limit=64,
                        val_limit=64, **({"checkpoint": checkpoint} if checkpoint else {})))
    lines = []
    prepare(cfg, lines.append)
    warning = [line for line in lines if line.startswith("warning:")]
    assert bool(warning) == warned
    if warned:
        assert "random weights" in warning[0] and "--checkpoint FILE" in warning[0] and "--pretrained" in warning[0]
    lines.clear()
    prepare(dict(cfg, model="builtin:resnet20", checkpoint="auto", input_shape=None), lines.append)  # shipped
    assert not [line for line in lines if line.startswith("warning:")]


def test_console_script_prints_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "singe_deploy", "compress", "--model", "builtin:nope", "--out",
                        str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def _validate(report):
    jsonschema.validate(report, json.loads((ROOT / "singe_deploy/schemas/report.schema.json").read_text()))
    shared = SHARED / "spec" / "report.schema.json"
    if shared.exists():
        jsonschema.validate(report, json.loads(shared.read_text()))


@needs_fashion
def test_compress_end_to_end_on_fashion_mnist(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["compress", "--out", str(out), "--criterion", "singe"] + FAST)
    stdout = capsys.readouterr().out
    assert code == 0
    assert f"wrote {out}" in stdout
    report = json.loads((out / "report.json").read_text())
    _validate(report)
    d, p = report["dense"], report["pruned"]
    assert d["macs"] / 2 * 0.9 <= p["macs"] <= d["macs"] / 2 * 1.03 and report["target"]["hit"]
    assert 0 <= p["accuracy"] <= 1 and len(report["steps"]) == 2
    training = report["schedule"]["training"]  # --amp/--channels-last auto: measured on this CPU, then used
    auto = training["auto"]
    assert auto["source"].startswith(("measured", "the only setting")) and training["device"] == "cpu"
    assert training["precision"] == {"off": "fp32", "bf16": "bf16"}[auto["amp"]]
    assert training["channels_last"] == (auto["channels_last"] == "on")
    # --augment auto: Fashion-MNIST fine-tunes unaugmented, so the dense model's logits were computed once
    assert report["schedule"]["augment"] is False and training["teacher_logits"] == "computed once"
    assert set(report["environment"]["device"]["cpu_flags"]) <= TELLING_FLAGS
    assert {e["format"] for e in report["exports"]} == {"onnx", "torch"}
    assert all(e["parity"]["max_abs_diff"] < 1e-3 for e in report["exports"])
    graph = {e["variant"]: e["graph_count"] for e in report["exports"] if e["format"] == "onnx"}
    assert graph["dense"]["macs"] == d["macs"] and graph["pruned"]["macs"] == p["macs"]  # counted twice, agreeing
    assert {(x["variant"], x["batch_size"]) for x in report["latency"]} == {("dense", 1), ("pruned", 1)}
    timed = next(x for x in report["latency"] if x["variant"] == "pruned")["speedup"]
    assert timed["paired"] and timed["ci95"][0] <= timed["speedup"] <= timed["ci95"][1]  # dense and pruned interleaved
    assert next(r for r in report["deployables"] if r["name"] == "pruned")["speedup"]["1"] == timed
    assert report["alignment"]["round_to"] == report["schedule"]["round_to"]
    threads = report["threads"]["threads"]  # --threads auto: measured, and what every timing used
    assert report["threads"]["source"].startswith("measured") and threads in report["threads"]["counts"]
    assert {x["threads"] for x in report["latency"]} == {threads}
    for f in ("report.md", "config.yaml", "dense.onnx", "pruned.onnx", "pruned.pt"):
        assert (out / f).is_file(), f
    assert "## Channels per layer" in (out / "report.md").read_text()
    model = load_pruned(out / "pruned.pt")
    assert sum(q.numel() for q in model.parameters()) == p["params"]
    assert not list(tmp_path.glob(".*partial"))
    again = main(["compress", "--config", str(out / "config.yaml"), "--out", str(tmp_path / "again")] + FAST)
    assert again == 0  # the saved config holds no output folder, so it reruns into a new one
    assert json.loads((tmp_path / "again" / "report.json").read_text())["pruned"]["macs"] == p["macs"]
    assert "training samples, computed before" in capsys.readouterr().out  # the second run reads the teacher's logits from the cache
    tool = load_tool("demo_figures")  # the README's table of the two runs
    table = tool.table([tool.load(out), tool.load(tmp_path / "again")])
    acc = 100 * p["accuracy"]
    assert f"| Fashion-MNIST test accuracy | {100 * d['accuracy']:.2f}% | **{acc:.2f}% +- 0.00** " in table
    assert f"{d['macs'] / p['macs']:.2f}x fewer" in table and "seeds 0, 0;" in table


def test_synthetic_data_scores_with_a_data_free_criterion_unless_told(tmp_path, capsys):
    base = ["compress", "--data", "synthetic", "--model", "tests/conftest.py:tiny_factory", "--input-shape",
            "1,1,12,12", "--round-to", "1", "--no-export"] + FAST
    assert main(base + ["--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "criterion l2 (data-free" in out
    assert json.loads((tmp_path / "a" / "report.json").read_text())["criterion"]["name"] == "l2"
    assert main(base + ["--out", str(tmp_path / "b"), "--criterion", "taylor"]) == 0
    out = capsys.readouterr().out
    assert "data-free" not in out and "taylor scores see random labels" in out
    assert json.loads((tmp_path / "b" / "report.json").read_text())["criterion"]["name"] == "taylor"


def test_latency_only_run_on_synthetic_data_with_torch_target(tmp_path, capsys):
    out = tmp_path / "lat"
    code = main(["compress", "--out", str(out), "--data", "synthetic", "--target", "torch", "--criterion", "l1",
                 "--model", "tests/conftest.py:tiny_factory", "--input-shape", "1,1,12,12", "--batch-sizes", "1,4",
                 "--round-to", "1"]
                + FAST)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "synthetic data" in captured.out
    report = json.loads((out / "report.json").read_text())
    _validate(report)
    assert report["dense"]["accuracy"] is None and report["pruned"]["accuracy"] is None
    assert {x["backend"] for x in report["latency"]} == {"torch"}
    assert sorted({x["batch_size"] for x in report["latency"]}) == [1, 4]
    assert not (out / "pruned.onnx").exists()


def _small(tmp_path, **options):
    """A validated config for a seconds-long run on a slice of Fashion-MNIST."""
    return validate(dict(defaults(), out=str(tmp_path / "r"), train_limit=256, val_limit=128, calib_batches=1,
                         latency_iters=3, latency_seconds=0.02, batch_size=64, parity_batches=1,
                         checkpoint="none", **options))


def _interrupt(cfg, at):
    """Run until a log line starting with `at`, then stop as Ctrl-C would."""
    def stop(msg):
        if msg.startswith(at):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(cfg, log=stop)


@needs_fashion
def test_interrupted_run_resumes(tmp_path):
    cfg = _small(tmp_path, steps=2, finetune_iters=2, epochs=0.0, criterion="l2")
    _interrupt(cfg, "step 1/2")
    partial = tmp_path / ".r.partial"
    assert (partial / "state.pt").is_file() and not (tmp_path / "r").exists()
    seen = []
    report, out = run(dict(cfg, resume=True), log=seen.append)
    assert any(m.startswith("resuming") for m in seen)
    assert not any(m.startswith("step 1/2") for m in seen) and any(m.startswith("step 2/2") for m in seen)
    assert len(report["steps"]) == 2 and out.is_dir() and not partial.exists()


def test_torchvision_model_on_an_imagefolder(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("a", "b", "c"):
            (tmp_path / "imgs" / split / cls).mkdir(parents=True)
            for i in range(6):
                Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
                    tmp_path / "imgs" / split / cls / f"{i}.png")
    out = tmp_path / "tv"
    code = main(["compress", "--out", str(out), "--model", "torchvision:resnet18", "--checkpoint", "none",
                 "--data", f"imagefolder:{tmp_path / 'imgs'}", "--input-shape", "1,3,32,32", "--criterion", "taylor",
                 "--steps", "1", "--finetune-iters", "2", "--epochs", "1", "--batch-size", "6", "--calib-batches", "1",
                 "--latency-iters", "3", "--latency-seconds", "0.05", "--parity-batches", "1"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    _validate(report)
    assert report["model"]["num_classes"] == 3 and report["model"]["input_shape"] == [1, 3, 32, 32]
    assert report["target"]["hit"] and report["pruned"]["accuracy"] is not None
    changed = [l for l in report["layers"] if l["type"] == "Conv2d" and l["pruned_out"] != l["dense_out"]]
    assert changed and all(l["pruned_out"] % 8 == 0 for l in changed)


@needs_fashion
def test_resume_after_the_final_fine_tuning_skips_it(tmp_path):
    cfg = _small(tmp_path, steps=1, finetune_iters=1, epochs=1.0, criterion="l1")
    _interrupt(cfg, "pruned:")
    seen = []
    report, _ = run(dict(cfg, resume=True), log=seen.append)
    assert report["timings"]["finetune_s"] == 0 and not any(m.startswith("step") for m in seen)
    assert report["pruned"]["accuracy"] is not None


def test_a_failed_parity_check_exits_1_and_still_writes_the_output(tmp_path, capsys):
    out = tmp_path / "p"
    code = main(["compress", "--out", str(out), "--data", "synthetic", "--criterion", "l1", "--round-to", "1",
                 "--model", "tests/conftest.py:tiny_factory", "--input-shape", "1,1,12,12", "--parity-top1", "1.01"]
                + FAST)
    err = capsys.readouterr().err
    assert code == 1 and "parity" in err and len(err.strip().splitlines()) == 1
    report = json.loads((out / "report.json").read_text())
    assert report["checks"]["passed"] is False and report["checks"]["failures"]


def test_graph_macs_that_disagree_with_the_model_exit_1(tmp_path, capsys, monkeypatch):
    from singe_deploy.measure import onnx_flops

    real = onnx_flops.node_macs
    monkeypatch.setattr(onnx_flops, "node_macs", lambda n, s: real(n, s) * (3 if "stem.weight" in n.input else 1))
    out = tmp_path / "g"
    code = main(["compress", "--out", str(out), "--data", "synthetic", "--criterion", "l1", "--round-to", "1",
                 "--model", "tests/conftest.py:tiny_factory", "--input-shape", "1,1,12,12"] + FAST)
    err = capsys.readouterr().err
    assert code == 1 and "graph MACs" in err and "stem" in err, err
    report = json.loads((out / "report.json").read_text())
    failures = report["checks"]["failures"]
    assert len(failures) == 2 and all("in 1 layer(s): stem" in f for f in failures)


def _one_line(err):
    lines = err.strip().splitlines()
    return len(lines) == 1 and "Traceback" not in err


@pytest.mark.parametrize("case", ["dot", "theirs", "file", "opset", "home"])
def test_bad_output_folders_and_options_are_refused_before_any_work(tmp_path, monkeypatch, capsys, case):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "thesis.tex").write_text("mine")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    (tmp_path / "model.onnx").write_text("mine")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    argv = {"dot": ["--out", ".", "--force"], "theirs": ["--out", "mine", "--force"],
            "file": ["--out", "model.onnx", "--force"], "opset": ["--out", "new", "--opset", "11"],
            "home": ["--out", str(tmp_path), "--force"]}[case]
    assert main(["compress", *argv]) == 2
    err = capsys.readouterr().err
    assert _one_line(err)
    assert {"dot": "it is the current folder", "theirs": "did not write (notes.txt)", "file": "is a file",
            "opset": "--opset 11 is too old", "home": "it is the current folder"}[case] in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert (tmp_path / "thesis.tex").read_text() == "mine" and (tmp_path / "mine" / "notes.txt").read_text() == "mine"


@needs_fashion
def test_a_training_set_smaller_than_a_batch_trains_on_it(tmp_path):
    argv = ["compress", "--criterion", "l2", "--no-export", "--out", str(tmp_path / "o")] + FAST
    assert main(argv + ["--train-limit", "10", "--batch-size", "128"]) == 0


@needs_fashion
def test_a_late_bad_input_keeps_the_finished_work_and_resumes_at_the_export(tmp_path, monkeypatch, capsys):
    from singe_deploy import compress
    from singe_deploy.errors import UserError

    def refused(*a, **k):
        raise UserError("the TensorRT builder refused the graph; pass --opset 19")

    out, work = tmp_path / "run", tmp_path / ".run.partial"
    monkeypatch.setattr(compress, "deploy", refused)
    assert main(["compress", "--criterion", "l2", "--out", str(out)] + FAST) == 2
    captured = capsys.readouterr()
    assert _one_line(captured.err) and "pass --opset 19" in captured.err
    assert f"export failed; what was computed is kept in {work}" in captured.out
    assert not out.exists() and (work / "state.pt").is_file() and (work / "pruned.pt").is_file()
    partial_report = json.loads((work / "report.json").read_text())
    _validate(partial_report)
    assert partial_report["failed"]["stage"] == "export" and partial_report["failed"]["exit_code"] == 2
    assert not partial_report["checks"]["passed"] and "did not finish" in (work / "report.md").read_text()
    monkeypatch.undo()
    assert main(["compress", "--criterion", "l2", "--out", str(out), "--resume", "--opset", "19"] + FAST) == 0
    assert "at the export" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert "failed" not in report and report["steps"] == partial_report["steps"] and not work.exists()
    assert report["pruned"]["params"] == partial_report["pruned"]["params"]


@needs_fashion
def test_a_diverging_fine_tune_stops_with_one_line_and_keeps_the_last_good_state(tmp_path, capsys):
    out, work = tmp_path / "run", tmp_path / ".run.partial"
    code = main(["compress", "--criterion", "l2", "--no-export", "--out", str(out), "--lr", "1e9",
                 "--checkpoint-minutes", "0"] + FAST)
    captured = capsys.readouterr()
    assert code == 1 and _one_line(captured.err)
    assert "diverged: the loss is" in captured.err and "lower --lr" in captured.err
    assert (work / "state.pt").is_file() and json.loads((work / "report.json").read_text())["failed"]["stage"]


@pytest.mark.parametrize("error", ["oom", "bug"])
def test_out_of_memory_and_unexpected_errors_are_one_line(tmp_path, monkeypatch, capsys, error):
    from singe_deploy import compress

    def fail(cfg, **kw):
        if error == "oom":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        raise RuntimeError("something nobody expected\nsecond line")

    monkeypatch.setattr(compress, "run", fail)
    monkeypatch.delenv("SINGE_DEPLOY_TRACEBACK", raising=False)
    code = main(["compress", "--out", str(tmp_path / "o"), "--batch-size", "64"])
    err = capsys.readouterr().err
    assert _one_line(err)
    if error == "oom":
        assert code == 2 and "out of memory" in err and "try --batch-size 32" in err
    else:
        assert code == 1 and "RuntimeError: something nobody expected" in err
        trace = err.split("the traceback is in ")[1].split(":")[0]
        assert "Traceback" in open(trace).read()


@needs_fashion
def test_a_finished_run_that_cannot_be_put_in_place_stays_whole_in_the_work_folder(tmp_path, monkeypatch, capsys):
    from singe_deploy import outdir
    from singe_deploy.errors import UserError

    def refused(work, out, command="compress"):
        raise UserError(f"{out} gained files singe-deploy did not write while it ran (mine.txt); nothing was "
                        f"replaced: the finished run is in {work}")

    monkeypatch.setattr(outdir, "publish", refused)
    work = tmp_path / ".run.partial"
    assert main(["compress", "--criterion", "l2", "--no-export", "--out", str(tmp_path / "run")] + FAST) == 2
    assert "the finished run is in" in capsys.readouterr().err
    report = json.loads((work / "report.json").read_text())
    assert "failed" not in report and (work / "pruned.pt").is_file() and report["checks"]["passed"]


@needs_fashion
def test_an_accuracy_budget_run_reports_its_curve_and_keeps_what_the_budget_allows(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["compress", "--out", str(out), "--criterion", "l2", "--max-accuracy-drop", "2", "--macs-reduction",
                 "1.3", "--quantize", "fp16"] + FAST + ["--steps", "1"])
    stdout = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    _validate(report)
    budget, steps, d, p = report["accuracy_budget"], report["steps"], report["dense"], report["pruned"]
    assert budget["max_drop_points"] == 2 and budget["floor"] and budget["holdout_samples"] == 51
    assert steps[0].get("judged") is None and all(s["judged"] for s in steps[1:]) and budget["stop"]
    kept = [s for s in steps if not s.get("rolled_back")]
    assert p["macs"] == kept[-1]["macs"] <= d["macs"] / 1.3 * 1.03 and report["target"]["hit"]
    assert all(0 <= s["holdout_accuracy"] <= 1 and s["latency_ms"] > 0 and s["dense_latency_ms"] > 0 for s in steps)
    assert budget["drop_points"] == pytest.approx(100 * (d["accuracy"] - p["accuracy"]))
    assert budget["within"] == (budget["drop_points"] <= 2) and code == (0 if budget["within"] else 1)
    held = budget["holdout_accuracy"]
    assert 0 <= held["dense"] <= 1 and 0 <= held["pruned"] <= 1
    assert "within the 2-point budget below dense" in report["recommended"]["rule"]
    text = (out / "report.md").read_text()
    assert "| held-out accuracy |" in text and "Accuracy budget: at most 2 points below dense" in text
    assert (out / "tradeoff.png").is_file() and stdout.strip().splitlines()[-1].startswith("ship ")



@pytest.mark.parametrize("argv,command,unknown,suggested", [
    (["compress", "--latency-reducton", "1.5"], "compress", "--latency-reducton", "--latency-reduction"),
    (["compress", "--singe-pth=unit"], "compress", "--singe-pth", "--singe-path"),
    (["flops", "builtin:resnet20", "--per-layr"], "flops", "--per-layr", "--per-layer"),
    (["check", "--budjet", "b.yaml", "r.json"], "check", "--budjet", "--budget"),
    (["quantize", "a.onnx", "--precison", "int8"], "quantize", "--precison", "--precision"),
])
def test_an_unknown_option_gets_the_closest_one_and_the_sub_commands_usage(tmp_path, capsys, monkeypatch, argv,
                                                                           command, unknown, suggested):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2
    assert err[0].startswith(f"usage: singe-deploy {command} ")
    assert err[-1] == f"singe-deploy {command}: error: unrecognized argument {unknown}; did you mean {suggested}?"
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_an_option_like_no_other_points_to_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["compress", "--qqqqq"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2
    assert err == ["usage: singe-deploy compress [OPTIONS] (every option: singe-deploy compress --help)",
                   "singe-deploy compress: error: unrecognized argument --qqqqq; see 'singe-deploy compress --help'"]


def test_version_names_the_tool_and_the_libraries_it_runs_on(capsys):
    from importlib import metadata

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    out = capsys.readouterr().out.strip()
    assert exit_.value.code == 0
    for name in ("torch", "torchvision", "torch-pruning", "onnx", "onnxruntime"):
        assert f"{name} {metadata.version(name)}" in out
    assert out.startswith(f"singe-deploy {metadata.version('singe-deploy')} (")
