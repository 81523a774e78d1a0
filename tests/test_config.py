import argparse

import pytest
import yaml

from singe_deploy.config import OPTIONS, add_arguments, defaults, load_yaml, resolve
from singe_deploy.errors import UserError

from .conftest import ROOT


def _args(argv):
    ap = argparse.ArgumentParser()
    add_arguments(ap)
    return ap.parse_args(argv)


def test_cli_overrides_yaml_overrides_defaults(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("steps: 2\nlr: 0.5\nbatch-sizes: [1, 8]\nround_to: 4\n")
    cfg = resolve(_args(["--config", str(f), "--steps", "3"]))
    assert cfg["steps"] == 3 and cfg["lr"] == 0.5 and cfg["batch_sizes"] == [1, 8] and cfg["round_to"] == 4
    assert cfg["epochs"] == defaults()["epochs"]


@pytest.mark.parametrize("text,match", [
    ("stepz: 2\n", "unknown config key 'stepz'.*did you mean 'steps'"),
    ("steps: two\n", "'steps' must be an integer"),
    ("steps: [1\n", "not valid YAML"),
    ("- 1\n- 2\n", "mapping"),
    ("criterion: magnitude\n", "must be one of"),
    ("force: maybe\n", "true or false"),
    ("model: a\nsteps: [1, 2\nepochs: 3\n", r"line 3: expected ',' or '\]', but got ':', in a flow sequence that "
                                            r"starts on line 2\)"),
    ("model: a\n  steps: 2\n", r"\(line 2: mapping values are not allowed here\)"),
])
def test_bad_configs(tmp_path, text, match):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(UserError, match=match):
        load_yaml(f)


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="does not exist; fix the path or name a shipped one: demo, latency-only"):
        resolve(_args(["--config", str(tmp_path / "none.yaml")]))


def test_a_shipped_config_is_found_by_name_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ folder here, as after an install from a wheel
    by_name = resolve(_args(["--config", "latency-only"]))
    assert by_name == resolve(_args(["--config", str(ROOT / "configs" / "latency-only.yaml")]))
    assert by_name["model"] == "torchvision:resnet50"
    (tmp_path / "latency-only").write_text("steps: 2\n")  # a file of the user's by that name wins
    assert resolve(_args(["--config", "latency-only"]))["steps"] == 2


@pytest.mark.parametrize("argv,match", [
    (["--macs-reduction", "1"], "must be > 1"),
    (["--macs-reduction", "2", "--params-reduction", "2"], "give one target, not --macs-reduction and --params-reduction"),
    (["--input-shape", "3,224,224"], "1,C,H,W"),
    (["--max-layer-ratio", "1.5"], "between 0 and 1"),
    (["--steps", "0"], ">= 1"),
])
def test_bad_flag_values(argv, match):
    with pytest.raises(UserError, match=match):
        resolve(_args(argv))


def test_channel_alignment_is_measured_unless_told():
    assert resolve(_args([]))["round_to"] == "auto"
    assert resolve(_args(["--round-to", "none"]))["round_to"] == 1
    assert resolve(_args(["--round-to", "16"]))["round_to"] == 16
    for bad in ("0", "-8", "fast", "1.5"):
        with pytest.raises(UserError, match="--round-to must be 'auto' or a positive integer"):
            resolve(_args(["--round-to", bad]))


def test_every_shipped_config_is_valid_and_demo_matches_defaults():
    configs = sorted((ROOT / "configs").glob("*.yaml"))
    assert configs
    for c in configs:
        resolve(_args(["--config", str(c)]))
    demo = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    for key, value in demo.items():
        assert defaults()[key.replace("-", "_")] == value, key
    assert set(k.replace("-", "_") for k in demo) == {o.name for o in OPTIONS if o.name not in ("out", "force", "resume")}


def test_python_api_defaults_are_the_cli_defaults():
    from dataclasses import fields

    from singe_deploy.pruning.entwined import Schedule

    for f in fields(Schedule):
        if f.name == "calib_macs":  # not an option: compress derives it from --calib-samples and the device
            continue
        assert f.default == defaults()[f.name], f.name


def test_a_schedule_is_read_from_a_config_with_overrides():
    from singe_deploy.pruning.entwined import Schedule

    cfg = resolve(_args(["--steps", "3", "--no-distill", "--ranking", "cost"]))
    schedule = Schedule.from_config(cfg, epochs=0, calib_macs=5.0)
    assert (schedule.steps, schedule.distill, schedule.ranking) == (3, False, "cost")
    assert (schedule.epochs, schedule.calib_macs) == (0, 5.0)
    assert schedule.finetune_iters == defaults()["finetune_iters"]


def test_a_saved_config_reruns_without_the_output_folder(tmp_path):
    from singe_deploy.config import PER_RUN, to_yaml

    cfg = resolve(_args(["--out", str(tmp_path / "run"), "--force", "--steps", "3"]))
    saved = tmp_path / "config.yaml"
    saved.write_text(to_yaml(cfg))
    assert not set(PER_RUN) & set(yaml.safe_load(saved.read_text()))
    again = resolve(_args(["--config", str(saved)]))
    assert again["out"] is None and not again["force"] and again["steps"] == 3
    assert {k: v for k, v in again.items() if k not in PER_RUN} == {k: v for k, v in cfg.items() if k not in PER_RUN}


@pytest.mark.parametrize("command", ["compress", "compare", "bench", "flops", "check", "report merge"])
def test_help_says_each_default_once_with_readable_placeholders(command, capsys):
    import re

    from singe_deploy.cli import main

    with pytest.raises(SystemExit):
        main(command.split() + ["--help"])
    text = capsys.readouterr().out
    options = re.split(r"\n  (?=-)", text.split("options:")[1])
    assert len(options) >= 3
    for block in options:
        assert block.count("(default") <= 1, block
        flag = block.split()[0:2]
        if len(flag) == 2 and not flag[1].startswith(("-", "{")):  # --flag METAVAR
            dest = flag[0].strip(",").lstrip("-").replace("-", "_").upper()
            assert flag[1] != dest, f"{flag[0]} shows argparse's placeholder {flag[1]}"
