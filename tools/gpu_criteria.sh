#!/usr/bin/env bash
# The criteria study's GPU measurements, for one NVIDIA GPU with CUDA PyTorch (docs/research/criteria.md):
#   1. SInGE's paths on the demo model (shipped resnet20, 128 Fashion-MNIST images, m = 8): seconds, as a
#      multiple of Taylor's, and Spearman against the exact unit path, with the replicated unit paths (R = 8);
#   2. compare on builtin:resnet56 with the longer schedule (4 steps of 150 iterations, 1 final epoch, 4
#      calibration batches), singe/l2/taylor, 3x then 2x fewer MACs, one process per target and seed, until the
#      time given to it is spent;
#   3. the same path measurement on torchvision:resnet18 (random weights, 32x32 synthetic, 16 images, m = 4),
#      the exact unit path on 256 of its 2,880 channels drawn at random (--unit-sample), no replicated rows;
#   4. the gpu-marked tests.
#   tools/gpu_criteria.sh [OUT_DIR] [SECONDS_FOR_2]
#   RUNS="3:1 3:2 2:0" tools/gpu_criteria.sh ...   step 2 for these TARGET:SEED pairs only (default: all six)
# On one H200 (2026-11-29): step 1 took about 4 minutes, each resnet56 run 25-50 s (18 runs in all), and step 3
# more than its 150 s in the first try, with the unit path on every channel (now 256 of them, in 600 s at most).
# Needs Fashion-MNIST (apt-get install dataset-fashion-mnist, or its four .gz files in FMNIST_DIR) and the
# project's dependencies; a machine without network can take wheels from WHEELS_DIR (pip --no-index).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-/tmp}/gpu_criteria}"
budget="${2:-180}"
mkdir -p "$out"
if [ -n "${WHEELS_DIR:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$WHEELS_DIR"/*.whl
  export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
if [ -n "${FMNIST_DIR:-}" ] && [ ! -d /usr/share/datasets/fashion-mnist ]; then
  mkdir -p /usr/share/datasets/fashion-mnist && cp "$FMNIST_DIR"/*.gz /usr/share/datasets/fashion-mnist/
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader || true
python3 -c "import torch, torch_pruning; print('torch', torch.__version__, torch.cuda.get_device_name())"
quiet() { grep -v -E '^\s*(score|evaluate|fine-tune|train).*(it/s|s/it|batch/s|%\|)' || true; }

echo "== 1. SInGE paths on the demo model"
timeout 400 python3 tools/path_fidelity.py --device cuda --replicas 8 --no-rules --json "$out/paths-resnet20.json" \
  2>&1 | quiet

echo "== 2. resnet56, longer schedule, ${budget} s"
deadline=$((SECONDS + budget))
for xs in ${RUNS:-3:0 3:1 3:2 2:0 2:1 2:2}; do
  left=$((deadline - SECONDS))
  [ "$left" -gt 20 ] || break
  x=${xs%:*}; s=${xs#*:}
  timeout "$left" python3 -m singe_deploy compare --model builtin:resnet56 --criteria singe,l2,taylor \
    --steps 4 --finetune-iters 150 --epochs 1 --calib-batches 4 --macs-reduction "$x" --seeds "$s" \
    --out "/tmp/r56long/x$x-s$s" 2>&1 | grep -E '^\[|wrote|error' || true
done
(cd /tmp && tar czf "$out/r56long.tgz" --exclude='*.pt' --exclude='*.onnx' --exclude='*.png' r56long 2>/dev/null) || true

echo "== 3. SInGE paths on torchvision:resnet18"
timeout 600 python3 tools/path_fidelity.py --device cuda --model torchvision:resnet18 --data synthetic \
  --input-shape 1,3,32,32 --batch-size 16 --steps 4 --unit-sample 256 --no-rules \
  --json "$out/paths-resnet18.json" \
  2>&1 | quiet

echo "== 4. gpu-marked tests"
timeout 70 python3 -m pytest -q -m gpu -rs -p no:cacheprovider tests 2>&1 | tail -25
echo "== done in ${SECONDS} s"
