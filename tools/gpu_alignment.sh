#!/usr/bin/env bash
# The GPU half of channel alignment, for a machine with a CUDA GPU (run it first there): the --round-to auto probe
# for PyTorch on CUDA, eager and CUDA graphs, at batch 1 and 32, then latency efficiency (speedup over MACs cut)
# of resnet50 and mobilenet_v2 pruned 2x by MACs with the alignment compress picks on that GPU.
#   tools/gpu_alignment.sh [OUT_DIR]      about 5 minutes on one H100 (not run yet: no GPU was lent)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-/tmp}/gpu_alignment}"
python -m pip install -q --no-deps -e . 2>/dev/null || true
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv || true
rm -rf "$out" && mkdir -p "$out"
for m in resnet50 mobilenet_v2; do
  for b in 1 32; do
    for g in "" --cuda-graph; do
      python tools/alignment_probe.py --model "torchvision:$m" --input-shape 1,3,224,224 --num-classes 1000 \
        --backend torch --device cuda --batch "$b" $g
    done
  done
  for g in eager graph; do
    flag=(); [ "$g" = graph ] && flag=(--cuda-graph)
    singe-deploy compress --model "torchvision:$m" --data synthetic --criterion l2 --macs-reduction 2 --steps 1 \
      --finetune-iters 0 --epochs 0 --target torch --device cuda --latency-batch 32 --batch-sizes 1,32 \
      --latency-iters 100 --latency-seconds 1 "${flag[@]}" --out "$out/$m-$g" | grep -E "round-to|pruned:|latency \("
  done
done
python - "$out" <<'PY'
import json, pathlib, sys
print("| model | timing | alignment | MACs cut | batch | speedup (95%) | efficiency |")
print("|---|---|---:|---:|---:|---|---:|")
for p in sorted(pathlib.Path(sys.argv[1]).glob("*/report.json")):
    r = json.loads(p.read_text())
    cut = r["reduction"]["macs"]
    for x in r["latency"]:
        if x.get("speedup"):
            s = x["speedup"]
            print(f"| {r['model']['spec']} | {p.parent.name.rsplit('-', 1)[1]} | {r['alignment']['round_to']} | "
                  f"{cut:.2f}x | {x['batch_size']} | {s['speedup']:.2f}x ({s['ci95'][0]:.2f}-{s['ci95'][1]:.2f}) | "
                  f"{s['speedup'] / cut:.2f} |")
PY
