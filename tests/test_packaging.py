"""The wheel: it holds the code and the package data the code reads (baselines, schemas, configs), and declares
dependency ranges, not pins, so that installing it keeps a user's torch. tools/wheel_check.sh installs it."""
import email
import shutil
import subprocess
import sys
import zipfile

import pytest

from .conftest import ROOT, load_tool

PACKAGE_DATA = ("assets", "schemas", "configs")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """A wheel built from a copy of the sources (the build leaves nothing in the checkout)."""
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "singe_deploy", src / "singe_deploy", ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(out), str(src)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-2000:]
    (path,) = out.glob("singe_deploy-*.whl")
    return path


def test_the_wheel_holds_every_module_and_the_package_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    package = ROOT / "singe_deploy"
    data = [p for d in PACKAGE_DATA for p in (package / d).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert {p.parent.name for p in data} >= {"assets", "schemas", "configs", "budgets"}
    wanted = {p.relative_to(ROOT).as_posix() for p in data + list(package.rglob("*.py"))}
    assert wanted - names == set()
    assert not [n for n in names if n.startswith(("tests/", "docs/", "tools/"))]


def test_the_wheel_declares_ranges_and_the_command(wheel):
    with zipfile.ZipFile(wheel) as z:
        meta = email.message_from_bytes(z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))))
        entry_points = z.read(next(n for n in z.namelist() if n.endswith("entry_points.txt"))).decode()
    requires = {r.split(";")[0].replace(" ", "") for r in meta.get_all("Requires-Dist")}
    for name in ("torch", "torchvision", "torch-pruning", "onnx", "onnxruntime"):
        (spec,) = [r for r in requires if r.removeprefix(name)[:1] in "<>=!"]
        assert ">=" in spec and "<" in spec and "==" not in spec, spec  # a tested range, never a pin
    assert "singe-deploy = singe_deploy.cli:entry" in entry_points


def _pins(path):
    return dict(line.split("==") for line in path.read_text().splitlines() if line and not line.startswith("#"))


def test_the_constraints_files_pin_the_ends_of_the_supported_ranges():
    """tested.txt (what CI installs) lies in every range; oldest.txt pins each range's lower bound, so the ranges
    say what tools/test_versions.sh ran."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    ranges = {canonicalize_name(Requirement(r).name): Requirement(r).specifier
              for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    tested, oldest = (_pins(ROOT / "tools" / "constraints" / f"{n}.txt") for n in ("tested", "oldest"))
    for name, spec in ranges.items():
        assert tested[name] in spec, (name, tested[name], spec)
        lower = [s.version for s in spec if s.operator == ">="]
        if name in ("torch", "torchvision", "torch-pruning", "onnx", "onnxruntime", "onnxscript"):
            assert lower == [oldest[name]], (name, lower, oldest.get(name))
    for script in (ROOT / ".ci" / "run", ROOT / "README.md"):
        assert "-c tools/constraints/tested.txt" in script.read_text(), script


def test_pin_constraints_pins_the_installed_closure(tmp_path):
    from importlib import metadata

    out = tmp_path / "c.txt"
    load_tool("pin_constraints").main(["--extras", "test", "--out", str(out)])
    pins = _pins(out)
    for name in ("torch", "onnxruntime", "pytest", "filelock"):  # direct, test-extra, indirect (torch needs filelock)
        assert pins[name] == metadata.version(name)
    assert "singe-deploy" not in pins and "mkdocs" not in pins  # the docs extra was not asked for
