"""The package's imports run one way: no two modules import each other (lazy imports inside functions count too),
and the pipeline's modules never import the sub-commands in singe_deploy/commands/."""
import ast

from .conftest import ROOT

PACKAGE = ROOT / "singe_deploy"


def _module(path):
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _imports(path):
    """The singe_deploy modules a file imports, anywhere in it."""
    name = _module(path)
    parts = name.split(".") if path.name != "__init__.py" else (name + ".x").split(".")
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = parts[:len(parts) - node.level] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                full = f"{target}.{alias.name}"
                out.add(full if (PACKAGE.parent / (full.replace(".", "/") + ".py")).is_file() else target)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("singe_deploy"))
    return {m for m in out if m.startswith("singe_deploy") and m != name}


def test_no_two_modules_import_each_other_and_stages_do_not_import_commands():
    graph = {_module(p): _imports(p) for p in PACKAGE.rglob("*.py")}
    pairs = sorted({tuple(sorted((a, b))) for a, deps in graph.items() for b in deps if a in graph.get(b, ())})
    assert pairs == []
    upward = sorted((a, b) for a, deps in graph.items() for b in deps
                    if b.startswith("singe_deploy.commands") and not a.startswith(("singe_deploy.commands",
                                                                                  "singe_deploy.cli")))
    assert upward == []


STAGES = ("models", "data", "scoring", "pruning", "training", "deploy", "measure")


def test_the_package_is_laid_out_by_stage_and_the_tests_mirror_it():
    for stage in STAGES:
        doc = ast.get_docstring(ast.parse((PACKAGE / stage / "__init__.py").read_text()))
        assert doc and "\n" not in doc.strip(), stage
    folders = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))
    assert [f for f in folders if not (ROOT / "tests" / f / "__init__.py").is_file()] == []
