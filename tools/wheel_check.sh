#!/usr/bin/env bash
# Build the wheel, install it into a fresh virtual environment that already has torch and torchvision (as a user's
# has), and run it from a folder with no checkout: --version, then the export check's short demo run, held to the
# shipped budgets by name (tools/export_check.sh). Fails if installing the wheel replaced the environment's torch.
#   tools/wheel_check.sh [TORCH_CONSTRAINTS]    default tools/constraints/tested.txt (the torch already there)
# It prints the wheel's size and the time pip took to install it. About 3 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
constraints="$PWD/${1:-tools/constraints/tested.txt}"
work="$(mktemp -d)"
export PIP_DISABLE_PIP_VERSION_CHECK=1
mkdir "$work/src" && cp -r pyproject.toml README.md singe_deploy "$work/src/"
find "$work/src" -name __pycache__ -prune -exec rm -rf {} +
python -m pip wheel -q --no-deps --no-build-isolation -w "$work/dist" "$work/src"
wheel="$(ls "$work"/dist/singe_deploy-*.whl)"
python -m venv "$work/venv"
bin="$work/venv/bin"
"$bin/python" -m pip install -q -c "$constraints" torch torchvision
torch_before="$("$bin/python" -c 'import torch; print(torch.__version__)')"
start=$(date +%s.%N)
"$bin/python" -m pip install -q "$wheel"   # as a user would: no constraints, so pip keeps or replaces torch itself
seconds=$(python -c "import time; print(f'{time.time() - $start:.1f}')")
torch_after="$("$bin/python" -c 'import torch; print(torch.__version__)')"
if [ "$torch_before" != "$torch_after" ]; then
  echo "wheel check failed: installing the wheel replaced torch $torch_before with $torch_after" >&2
  exit 1
fi
echo "wheel: $(basename "$wheel"), $(du -k "$wheel" | cut -f1) KiB; pip installed it in $seconds s into an" \
  "environment with torch $torch_before (kept)"
cd "$work" && mkdir run && cd run   # no configs/ and no checkout here: the shipped files must come from the wheel
"$bin/singe-deploy" --version
PATH="$bin:$PATH" "$repo/tools/export_check.sh" ci out onnx   # the budgets by name: the wheel's own
echo "wheel check passed: $work"
