"""Write the constraints file that CI and the README install with: every package singe-deploy[test,docs] needs,
directly or not, pinned to the version installed in this environment (where the tests just passed).

    pip install -c tools/constraints/tested.txt -e '.[test,docs]' && python -m pytest -q
    python tools/pin_constraints.py [--extras test,docs] [--out tools/constraints/tested.txt]
"""
import argparse
import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

HEADER = """# What CI (.ci/run) and the README's commands install: singe-deploy[{extras}] and everything it needs, at the
# versions the tests passed with. Made by `python tools/pin_constraints.py` on {machine}.
# The supported ranges are in pyproject.toml; tools/constraints/oldest.txt pins the oldest tested versions.
"""


def closure(extras):
    """{canonical name: installed version} of singe-deploy's requirements with `extras`, followed recursively."""
    pinned, seen, todo = {}, set(), [(Requirement(f"singe-deploy[{','.join(extras)}]"), set(extras))]
    while todo:
        req, chosen = todo.pop()
        name = canonicalize_name(req.name)
        if (name, frozenset(chosen)) in seen:  # extras may require each other
            continue
        seen.add((name, frozenset(chosen)))
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            sys.exit(f"pin_constraints: {req.name} is not installed; install singe-deploy[{','.join(extras)}] first")
        if name != "singe-deploy":
            pinned[name] = dist.version
        for text in dist.requires or []:
            sub = Requirement(text)
            env = [{"extra": e} for e in (chosen or {""})]
            if sub.marker is None or any(sub.marker.evaluate(e) for e in env):
                todo.append((sub, set(sub.extras)))
    return pinned


def machine():
    import platform

    from singe_deploy.measure.device import cpu_model

    return f"{platform.system()} {platform.machine()}, Python {platform.python_version()}, {cpu_model()}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--extras", default="test,docs")
    ap.add_argument("--out", default=str(Path(__file__).parent / "constraints" / "tested.txt"))
    args = ap.parse_args(argv)
    extras = [e for e in re.split(r"[,\s]+", args.extras) if e]
    pins = closure(extras)
    text = HEADER.format(extras=",".join(extras), machine=machine())
    text += "".join(f"{name}=={version}\n" for name, version in sorted(pins.items()))
    Path(args.out).write_text(text)
    print(f"wrote {args.out}: {len(pins)} packages")


if __name__ == "__main__":
    main()
