#!/usr/bin/env bash
# Run the tests in a fresh virtual environment against the versions a constraints file pins: by default the oldest
# supported ones (tools/constraints/oldest.txt), where CI runs them against tools/constraints/tested.txt.
#
#   tools/test_versions.sh                                   # the oldest supported versions, the whole suite
#   tools/test_versions.sh tools/constraints/oldest.txt tests/deploy/test_export.py   # some tests only
#   VENV=/tmp/old tools/test_versions.sh ...                 # keep (and reuse) the environment
#
# torch and torchvision come from the package index as the constraints pin them: on x86_64 that is a CUDA build of
# several GB, which runs on the CPU too. It prints the versions it tested before the tests' summary. (Where pip
# finds a local torch 2.13.0+cpu wheel, as on the project's CI machines, torch==2.13.0 takes it, and torchvision 0.28
# from the index does not import beside it.)
set -euo pipefail
cd "$(dirname "$0")/.."
constraints="${1:-tools/constraints/oldest.txt}"
shift || true
[ -f "$constraints" ] || { echo "tools/test_versions.sh: constraints file $constraints does not exist" >&2; exit 2; }
venv="${VENV:-$(mktemp -d)/venv}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
[ -x "$venv/bin/python" ] || python -m venv "$venv"
# installed from a copy, so that its build files (egg-info) stay out of this checkout
src="$(mktemp -d)"
cp -r pyproject.toml README.md singe_deploy "$src/"
"$venv/bin/python" -m pip install -q -c "$constraints" "$src[test]"
"$venv/bin/python" -m pip check
"$venv/bin/singe-deploy" --version
# pytest puts this checkout first on the path, so the tests import its singe_deploy (the same code as the copy); the
# copy installed the dependencies and the singe-deploy command that CLI tests run
"$venv/bin/python" -m pytest -q "$@"
