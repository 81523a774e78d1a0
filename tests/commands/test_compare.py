import json

import pytest

from singe_deploy import compress
from singe_deploy.cli import main
from singe_deploy.commands import compare

from ..conftest import needs_fashion

FAST = ["--train-limit", "256", "--val-limit", "128", "--finetune-iters", "2", "--epochs", "0.02",
        "--calib-batches", "1", "--singe-steps", "2", "--batch-size", "64"]


def test_plan_covers_every_combination_in_a_fixed_order():
    runs = compare.plan(["singe", "l1"], [2.0, 3.0], [0, 1], ["one-shot", "entwined"])
    assert len(runs) == 16 and len({name for name, _, _ in runs}) == 16
    one_shot = [opts for _, flowchart, opts in runs if flowchart == "one-shot"]
    assert len(one_shot) == 8 and all(o["steps"] == 1 and o["finetune_iters"] == 0 for o in one_shot)
    assert runs[0] == ("singe-x2-s0-entwined", "entwined",
                       {"criterion": "singe", "macs_reduction": 2.0, "seed": 0, "label": "singe"})


def test_compare_at_equal_measured_latency_runs_every_planner_on_one_table(tmp_path):
    out, table = tmp_path / "cmp", tmp_path / "table.json"
    code = main(["compare", "--criteria", "l1", "--rankings", "global,cost", "--latency-reduction", "1.2", "--seeds",
                 "0", "--data", "synthetic", "--model", "tests/conftest.py:wide_factory", "--input-shape", "1,1,24,24",
                 "--latency-table", str(table), "--latency-iters", "10", "--latency-seconds", "0", "--out", str(out)])
    assert code == 0
    result = json.loads((out / "compare.json").read_text())
    assert result["latency_reductions"] == [1.2] and len(result["runs"]) == 2
    names = [r["name"] for r in result["runs"]]
    assert names == ["l1+ranking-global-lat1.2-s0-entwined", "l1+ranking-cost-lat1.2-s0-entwined"]
    for r in result["runs"]:
        report = json.loads((out / "runs" / r["name"] / "report.json").read_text())
        assert report["target"]["metric"] == "latency" and r["latency_ms"] == report["target"]["latency"]["measured_ms"]
        assert report["target"]["latency"]["table"] == str(table) and report["criterion"]["options"]["ranking"] in names[
            result["runs"].index(r)]
    md = (out / "compare.md").read_text()
    assert "## entwined, 1.2x lower measured latency" in md and "| latency ms |" in md
    assert {r["training"] for r in result["runs"]} == {"cpu fp32"} and "Fine-tuned on: cpu fp32." in md


def test_resume_adds_the_missing_runs_to_a_finished_comparison_under_its_options(tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    argv = ["compare", "--criteria", "l1", "--macs-reduction", "1.5", "--data", "synthetic", "--model",
            "tests/conftest.py:wide_factory", "--input-shape", "1,1,24,24", "--out", str(out)]
    assert main(argv + ["--seeds", "0"]) == 0
    first = json.loads((out / "compare.json").read_text())["runs"]
    report = (out / "runs" / first[0]["name"] / "report.json").read_text()
    assert main(argv + ["--seeds", "0", "--finetune-iters", "3", "--resume"]) == 2  # other options: refused
    assert json.loads((out / "compare.json").read_text())["runs"] == first and not list(tmp_path.glob(".*partial"))
    real, calls = compress.run, []

    def counted(cfg, *a, **k):
        calls.append((cfg["seed"], cfg["steps"]))
        return real(cfg, *a, **k)

    monkeypatch.setattr(compress, "run", counted)
    assert main(argv + ["--seeds", "0,1", "--one-shot", "--resume"]) == 0
    assert sorted(calls) == [(0, 1), (1, 1), (1, 2)]  # seed 0 entwined was done; seed 1 and one-shot were not
    runs = json.loads((out / "compare.json").read_text())["runs"]
    assert len(runs) == 4 and runs[0] == first[0]
    assert (out / "runs" / first[0]["name"] / "report.json").read_text() == report
    assert main(argv[:2] + ["l2"] + argv[3:] + ["--seeds", "2", "--resume"]) == 0  # another criterion, another seed
    done = json.loads((out / "compare.json").read_text())
    assert done["runs"][:4] == runs and [r["name"] for r in done["runs"][4:]] == ["l2-x1.5-s2-entwined"]
    assert done["criteria"] == ["l1", "l2"] and done["seeds"] == [0, 1, 2]
    assert len({r["dense_accuracy"] for r in done["runs"]}) == 1 and "| l2 |" in (out / "compare.md").read_text()
    lat = ["--latency-reduction", "1.2", "--latency-iters", "5", "--latency-seconds", "0"]
    assert main([a for a in argv if a not in ("--macs-reduction", "1.5")] + lat + ["--resume"]) == 2

    def cut(cfg, *a, **k):  # the first new run finishes, the second is cut short
        if cfg["seed"] == 4:
            raise KeyboardInterrupt
        return real(cfg, *a, **k)

    monkeypatch.setattr(compress, "run", cut)  # a growth interrupted, then resumed, keeps the earlier runs
    assert main(argv + ["--seeds", "3,4", "--resume"]) == 130 and not out.exists()
    cut_short = _merge_tool().finished_runs(tmp_path / ".cmp.partial")  # the earlier runs and the new one
    assert sorted(r["name"] for r in cut_short["runs"]) == sorted([r["name"] for r in done["runs"]] +
                                                                   ["l1-x1.5-s3-entwined"])
    assert cut_short["options"] == done["options"]
    monkeypatch.setattr(compress, "run", real)
    assert main(argv + ["--seeds", "3,4", "--resume", "--lr", "0.01"]) == 2
    assert main(argv + ["--seeds", "3,4", "--resume"]) == 0
    grown = json.loads((out / "compare.json").read_text())
    assert grown["runs"][:5] == done["runs"] and grown["seeds"] == [0, 1, 2, 3, 4] and len(grown["runs"]) == 7


def test_flowcharts_choose_which_runs_a_comparison_makes(tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    argv = ["compare", "--criteria", "l1", "--macs-reduction", "1.5", "--seeds", "0", "--data", "synthetic",
            "--model", "tests/conftest.py:wide_factory", "--input-shape", "1,1,24,24", "--out", str(out)]
    assert main(argv + ["--flowcharts", "one-shot,twice"]) == 2 and not out.exists()
    real, calls = compress.run, []

    def counted(cfg, *a, **k):
        calls.append(cfg["steps"])
        return real(cfg, *a, **k)

    monkeypatch.setattr(compress, "run", counted)
    assert main(argv + ["--flowcharts", "one-shot"]) == 0 and calls == [1]  # the one-shot run only
    result = json.loads((out / "compare.json").read_text())
    assert [r["flowchart"] for r in result["runs"]] == ["one-shot"]
    md = (out / "compare.md").read_text()
    assert "## one-shot, 1.5x fewer MACs" in md and "## entwined" not in md
    assert main(argv + ["--flowcharts", "entwined", "--resume"]) == 0 and calls == [1, 2]  # then the entwined one
    assert sorted(r["flowchart"] for r in json.loads((out / "compare.json").read_text())["runs"]) == [
        "entwined", "one-shot"]


@needs_fashion
def test_compare_writes_json_markdown_and_plot(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--criteria", "l1,random", "--macs-reduction", "2", "--seeds", "0", "--one-shot",
                 "--out", str(out)] + FAST) == 0
    result = json.loads((out / "compare.json").read_text())
    runs = result["runs"]
    assert len(runs) == 4
    for r in runs:
        for key in ("criterion", "macs_reduction", "seed", "flowchart", "accuracy", "macs", "params", "score_seconds"):
            assert key in r, key
        report = json.loads((out / "runs" / r["name"] / "report.json").read_text())
        accuracies = [step["accuracy"] for step in report["steps"]]
        assert accuracies[-1] is not None and all(a is None for a in accuracies[:-1])  # last step only
    assert {r["flowchart"] for r in runs} == {"entwined", "one-shot"}
    assert len({r["dense_accuracy"] for r in runs}) == 1  # the same baseline and validation data for every run
    md = (out / "compare.md").read_text()
    assert md.count("**") >= 4 and "## one-shot, 2x fewer MACs" in md
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob(".*partial"))


@needs_fashion
def test_an_interrupted_comparison_resumes_with_the_runs_left(tmp_path, monkeypatch, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--criteria", "l1,l2", "--macs-reduction", "2", "--seeds", "0", "--out", str(out)] + FAST
    real, calls = compress.run, []

    def flaky(cfg, log=print, dense_accuracy=None, resume_hint=True):
        calls.append(cfg["criterion"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(cfg, log, dense_accuracy, resume_hint)

    monkeypatch.setattr(compress, "run", flaky)
    assert main(argv) == 130 and not out.exists()
    assert f"--resume --out {out}" in capsys.readouterr().out
    cut = _merge_tool().finished_runs(tmp_path / ".cmp.partial")  # what tools/merge_compare.py reads of it
    calls.clear()
    assert main(argv + ["--resume", "--lr", "0.01"]) == 2 and not calls  # not under other shared options
    assert "lr 0.05 there, 0.01 now" in capsys.readouterr().err and (tmp_path / ".cmp.partial").is_dir()
    assert main(argv + ["--resume"]) == 0
    assert calls == ["l2"]  # l1 finished before the interruption
    assert not (out / compare.STARTED).exists()
    done = json.loads((out / "compare.json").read_text())
    assert len(done["runs"]) == 2
    assert cut["runs"] == done["runs"][:1] and cut["options"] == done["options"]
    rows, _, _, repeated = _merge_tool().merge([str(out / "compare.json"), str(out)])
    assert len(rows) == 2 and repeated == 2


@needs_fashion
def test_a_run_interrupted_after_a_pruning_step_resumes_from_that_step(tmp_path, monkeypatch, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--criteria", "l1", "--macs-reduction", "2", "--seeds", "0", "--steps", "2",
            "--out", str(out)] + FAST
    real, seen = compress.run, []

    def stop_after_step_1(msg):
        if msg.startswith("step 1/2"):
            raise KeyboardInterrupt

    def traced(cfg, log=print, dense_accuracy=None, resume_hint=True):
        seen.append(cfg["resume"])
        return real(cfg, stop_after_step_1 if len(seen) == 1 else lines.append, dense_accuracy, resume_hint)

    lines = []
    monkeypatch.setattr(compress, "run", traced)
    assert main(argv) == 130
    assert (tmp_path / ".cmp.partial" / "runs" / ".l1-x2-s0-entwined.partial" / "state.pt").is_file()
    assert main(argv + ["--resume"]) == 0
    assert seen == [False, True]
    assert any(m.startswith("resuming") for m in lines) and not any(m.startswith("step 1/2") for m in lines)
    assert "resuming from its last pruning step" in capsys.readouterr().out
    run = json.loads((out / "compare.json").read_text())["runs"][0]
    assert json.loads((out / "runs" / run["name"] / "report.json").read_text())["steps"][1]["step"] == 2


@pytest.mark.parametrize("argv,match", [
    (["--criteria", "singe,magnitude"], "unknown criterion 'magnitude'"),
    (["--macs-reduction", "2,x"], "--macs-reduction must be"),
    (["--macs-reduction", "1"], "must be > 1"),
    (["--seeds", ""], "--seeds must be"),
    (["--steps", "0"], "--steps must be >= 1"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, match):
    assert main(["compare", "--out", str(tmp_path / "c")] + argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err
    assert not (tmp_path / "c").exists() and not (tmp_path / ".c.partial").exists()


def test_entries_carry_their_own_options_and_rankings_cross_them():
    runs = compare.plan(["singe:variant=completeness:path=unit", "l2"], [2.0], [0], rankings=["global", "cost"])
    labels = [opts["label"] for _, _, opts in runs]
    assert labels == ["singe:variant=completeness:path=unit:ranking=global",
                      "singe:variant=completeness:path=unit:ranking=cost", "l2:ranking=global", "l2:ranking=cost"]
    first = runs[0][2]
    assert first["singe_variant"] == "completeness" and first["singe_path"] == "unit" and first["ranking"] == "global"
    assert "/" not in runs[0][0] and ":" not in runs[0][0]
    fixed = compare.plan(["l2:ranking=local"], [2.0], [0], rankings=["global", "cost"])
    assert [o["ranking"] for _, _, o in fixed] == ["local"]  # an entry's own ranking wins


def test_distillation_crosses_every_criterion_so_its_effect_stands_apart():
    runs = compare.plan(["singe", "l2"], [2.0], [0, 1], rankings=["global"], distill=[False, True])
    labels = list(dict.fromkeys(opts["label"] for _, _, opts in runs))
    assert labels == ["singe:ranking=global:distill=false", "singe:ranking=global:distill=true",
                      "l2:ranking=global:distill=false", "l2:ranking=global:distill=true"]
    assert [(o["distill"], o["seed"]) for _, _, o in runs[:4]] == [(False, 0), (False, 1), (True, 0), (True, 1)]
    assert len({name for name, _, _ in runs}) == len(runs) == 8


@pytest.mark.parametrize("text", ["singe:variant", "singe:colour=red", "l2:seed=3", "singe:steps=many"])
def test_bad_entries_are_bad_input(text):
    from singe_deploy.errors import UserError

    with pytest.raises(UserError):
        compare.entry(text)


def _merge_tool():
    from ..conftest import load_tool
    return load_tool("merge_compare")


def test_merging_ignores_export_options_of_runs_without_export_and_refuses_other_differences(tmp_path):
    import json

    def write(name, options, run):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"options": dict({"export": False, "lr": 0.05}, **options), "runs": [run]}))
        return str(path)

    run = {"name": "l2-x2-s0-entwined", "criterion": "l2", "macs_reduction": 2.0, "seed": 0, "flowchart": "entwined",
           "accuracy": 0.9, "macs": 1, "params": 1, "score_seconds": 0.0, "target_hit": True}
    merge = _merge_tool().merge
    a = write("a", {}, run)
    b = write("b", {"parity_rtol": 1e-5}, dict(run, name="l2-x2-s1-entwined", seed=1))
    rows, _, sources, _ = merge([a, b])
    assert len(rows) == 2 and len(sources) == 2
    c = write("c", {"lr": 0.1}, dict(run, name="l2-x2-s2-entwined", seed=2))
    with pytest.raises(SystemExit, match="other options \\(lr\\)"):
        merge([a, c])
    # an option added after a file was written: at its default it is the same run; otherwise it is not
    d = write("d", {"momentum": 0.9, "quantize": []}, dict(run, name="l2-x2-s3-entwined", seed=3))
    assert len(merge([a, d])[0]) == 2
    e = write("e", {"momentum": 0.5}, dict(run, name="l2-x2-s4-entwined", seed=4))
    with pytest.raises(SystemExit, match="other options \\(momentum\\)"):
        merge([a, e])


def test_merging_runs_with_and_without_distillation_keeps_them_apart(tmp_path):
    import json

    run = {"name": "singe-x2-s0-entwined", "criterion": "singe", "macs_reduction": 2.0, "seed": 0,
           "flowchart": "entwined", "accuracy": 0.9, "macs": 1, "params": 1, "score_seconds": 0.0, "target_hit": True}
    paths = []
    for distill, acc in ((False, 0.91), (True, 0.93)):
        path = tmp_path / f"{distill}.json"
        path.write_text(json.dumps({"options": {"export": False, "distill": distill}, "runs": [dict(run, accuracy=acc)]}))
        paths.append(str(path))
    rows, _, _, repeated = _merge_tool().merge(paths)
    assert repeated == 0 and {(r["name"], r["criterion"], r["accuracy"]) for r in rows} == {
        ("singe+distill-false-x2-s0-entwined", "singe:distill=false", 0.91),
        ("singe+distill-true-x2-s0-entwined", "singe:distill=true", 0.93)}
    rows, _, _, repeated = _merge_tool().merge(paths[:1] * 2)  # one setting: names as they were
    assert repeated == 1 and rows[0]["name"] == "singe-x2-s0-entwined"


def test_coverage_counts_seeds_per_setting_and_merging_refuses_runs_fine_tuned_apart(tmp_path):
    import json

    def write(name, options, runs):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"options": dict({"export": False, "model": "builtin:resnet20"}, **options),
                                    "runs": runs}))
        return str(path)

    def run(criterion, seed, x=2.0, flowchart="entwined", training="cpu fp32"):
        return {"name": f"{compare.folder(criterion)}-x{x:g}-s{seed}-{flowchart}", "criterion": criterion,
                "macs_reduction": x, "seed": seed, "flowchart": flowchart, "accuracy": 0.9, "macs": 1, "params": 1,
                "score_seconds": 0.0, "target_hit": True, "training": training}

    tool = _merge_tool()
    short = write("short", {}, [run("singe", 0), run("singe", 1), run("l2", 0), run("singe:ranking=cost", 0)])
    again = write("again", {}, [run("singe", 1), run("singe", 2, x=3.0)])  # seed 1 counted once
    long = write("long", {"steps": 4, "round_to": 1}, [run("taylor", 0, flowchart="one-shot")])
    gpu = write("gpu", {}, [run("l2", 1, training="cuda bf16")])
    lines = tool.coverage([short, again, long, gpu]).splitlines()
    assert lines[0] == "| model | setting | fine-tuned on | flowchart | target | singe | l2 | taylor |"
    assert set(lines[2:]) == {
        "| builtin:resnet20 | compare's defaults | cpu fp32 | entwined | 2x | 2 | 1 |  |",
        "| builtin:resnet20 | compare's defaults | cpu fp32 | entwined | 3x | 1 |  |  |",
        "| builtin:resnet20 | ranking=cost | cpu fp32 | entwined | 2x | 1 |  |  |",
        "| builtin:resnet20 | round_to=1 steps=4 | cpu fp32 | one-shot | 2x |  |  | 1 |",
        "| builtin:resnet20 | compare's defaults | cuda bf16 | entwined | 2x |  | 1 |  |"}
    older = write("older", {}, [{k: v for k, v in run("l2", 2).items() if k != "training"}])
    assert "| compare's defaults | unrecorded | entwined | 2x |  | 1 |" in tool.coverage([short, older])
    assert "| compare's defaults | cpu fp32 | entwined | 2x | 2 | 2 |" in tool.coverage([short, older], "cpu fp32")
    assert len(tool.merge([short, again])[0]) == 5
    with pytest.raises(SystemExit, match="fine-tuned on cpu fp32 and cuda bf16"):
        tool.merge([short, gpu])
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({"runs": []}))
    with pytest.raises(SystemExit, match="not a compare result"):
        tool.coverage([str(bare)])


def test_standing_ranks_one_criterion_in_every_cell_against_the_best_other(tmp_path):
    import json

    def run(criterion, seed, acc, x=2.0):
        return {"name": f"{criterion}-x{x:g}-s{seed}-entwined", "criterion": criterion, "macs_reduction": x,
                "seed": seed, "flowchart": "entwined", "accuracy": acc, "macs": 1, "params": 1, "score_seconds": 0.0,
                "target_hit": True, "training": "cpu fp32"}

    path = tmp_path / "a.json"
    runs = [run("singe", 0, 0.90), run("singe", 1, 0.92), run("l2", 0, 0.91), run("l2", 1, 0.90),
            run("random", 0, 0.80), run("random", 1, 0.82), run("singe", 0, 0.85, x=3.0), run("taylor", 0, 0.87, x=3.0),
            run("l2", 0, 0.88, x=4.0)]  # 4x: no singe, no row
    path.write_text(json.dumps({"options": {"export": False, "model": "builtin:resnet20"}, "runs": runs}))
    again = tmp_path / "b.json"  # the same run met again (a merged file beside its sources) counts once
    again.write_text(json.dumps({"options": {"export": False, "model": "builtin:resnet20"},
                                 "runs": [run("singe", 1, 0.5)]}))
    lines = _merge_tool().standing([str(path), str(again)], "singe").splitlines()
    assert lines[2:] == [
        "| builtin:resnet20 | compare's defaults | cpu fp32 | entwined | 2x | 0.9100 (2) | 1 of 3 | l2 0.9050 | +0.50 "
        "| 1/2 | 0.8100 |",
        "| builtin:resnet20 | compare's defaults | cpu fp32 | entwined | 3x | 0.8500 (1) | 2 of 2 | taylor 0.8700 | "
        "-2.00 | 0/1 |  |"]
