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
])
def test_bad_configs(tmp_path, text, match):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(UserError, match=match):
        load_yaml(f)


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        resolve(_args(["--config", str(tmp_path / "none.yaml")]))


@pytest.mark.parametrize("argv,match", [
    (["--macs-reduction", "1"], "must be > 1"),
    (["--macs-reduction", "2", "--params-reduction", "2"], "not both"),
    (["--input-shape", "3,224,224"], "1,C,H,W"),
    (["--max-layer-ratio", "1.5"], "between 0 and 1"),
    (["--steps", "0"], ">= 1"),
])
def test_bad_flag_values(argv, match):
    with pytest.raises(UserError, match=match):
        resolve(_args(argv))


def test_channels_are_rounded_to_8_unless_told():
    assert resolve(_args([]))["round_to"] == 8
    assert resolve(_args(["--target", "trt", "--round-to", "none"]))["round_to"] == 8
    assert resolve(_args(["--round-to", "1"]))["round_to"] == 1


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

    from singe_deploy.prune import Schedule

    for f in fields(Schedule):
        if f.name == "calib_macs":  # not an option: compress derives it from --calib-samples and the device
            continue
        assert f.default == defaults()[f.name], f.name
