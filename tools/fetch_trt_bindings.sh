#!/usr/bin/env bash
# Fetch the TensorRT 10 and 11 Python binding wheels (about 1.3 MB each) and unpack their extension
# modules for tests/deploy/test_trt.py's API-surface check. The wheels cannot be imported without TensorRT's
# libraries; the test only reads the names compiled into them. Needs the package registry, not a GPU.
#   tools/fetch_trt_bindings.sh [DIR]      (default .cache/trt-bindings; the test reads $SINGE_TRT_BINDINGS or that)
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-.cache/trt-bindings}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
for spec in "10:tensorrt-cu12-bindings>=10,<11" "11:tensorrt-cu13-bindings>=11,<12"; do
  major="${spec%%:*}"; req="${spec#*:}"
  python -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 --platform manylinux_2_28_x86_64 \
    -d "$tmp/$major" "$req"
  wheel="$(ls "$tmp/$major"/*.whl)"
  mkdir -p "$dir/$major"
  python - "$wheel" "$dir/$major" <<'PY'
import sys, zipfile, pathlib
wheel, out = sys.argv[1], pathlib.Path(sys.argv[2])
with zipfile.ZipFile(wheel) as z:
    so = next(n for n in z.namelist() if n.endswith("/tensorrt.so"))
    (out / "tensorrt.so").write_bytes(z.read(so))
(out / "wheel.txt").write_text(pathlib.Path(wheel).name + "\n")
PY
  echo "TensorRT $major bindings: $(cat "$dir/$major/wheel.txt") -> $dir/$major/tensorrt.so"
done
