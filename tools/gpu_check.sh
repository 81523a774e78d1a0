#!/usr/bin/env bash
# One script for a GPU machine (any NVIDIA GPU with CUDA PyTorch): the gpu-marked tests, then
# compress of torchvision:resnet50 (synthetic 224x224, 2x fewer MACs) with the best GPU target there
# (trt where TensorRT imports, else torch on cuda), then the dense/pruned latency table with the MACs ratio,
# then SInGE scoring on the GPU with path steps batched (vmap) against one by one, then fine-tuning throughput
# in fp32, bf16/fp16 autocast and channels-last (tools/train_throughput.py), then (2+ GPUs)
# compress under torchrun with nccl against one GPU, then a --latency-reduction run timed on the GPU target.
#   tools/gpu_check.sh [OUT_DIR]      about 4-7 minutes on one H100
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-/tmp}/gpu_check}"
python -m pip install -q -e '.[test]' 2>/dev/null || python -m pip install -q --no-deps -e .
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv || true
python -m pytest -q -m gpu -rs tests
if python -c "import tensorrt" 2>/dev/null; then target=(--target trt); else target=(--target torch --device cuda); fi
echo "target: ${target[*]}"
rm -rf "$out"
singe-deploy compress --model torchvision:resnet50 --data synthetic --input-shape 1,3,224,224 --criterion l1 \
  --macs-reduction 2 --steps 1 --finetune-iters 0 --epochs 0 --batch-sizes 1,8,32 --latency-iters 100 \
  --latency-seconds 2 "${target[@]}" --out "$out"
if [ "${target[1]}" = torch ]; then  # the same with CUDA-graph replay, beside eager
  singe-deploy compress --model torchvision:resnet50 --data synthetic --input-shape 1,3,224,224 --criterion l1 \
    --macs-reduction 2 --steps 1 --finetune-iters 0 --epochs 0 --batch-sizes 1,8,32 --latency-iters 100 \
    --latency-seconds 2 "${target[@]}" --cuda-graph --out "$out-graph"
fi
python - "$out" "$out-graph" <<'PY'
import json, sys, pathlib
for d in sys.argv[1:]:
    p = pathlib.Path(d) / "report.json"
    if not p.is_file():
        continue
    r = json.loads(p.read_text())
    macs = r["dense"]["macs"] / r["pruned"]["macs"]
    lat = {(x["variant"], x["batch_size"]): x for x in r["latency"]}
    graph = " (CUDA graph)" if "graph" in d else ""
    print(f"\n{r['model']['spec']}{graph}: MACs {r['dense']['macs'] / 1e9:.3f} G -> {r['pruned']['macs'] / 1e9:.3f} G ({macs:.2f}x)")
    print("| backend | batch | dense median ms | pruned median ms | speedup | MACs ratio | CV dense/pruned |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for b in sorted({k[1] for k in lat}):
        d_, p_ = lat[("dense", b)], lat[("pruned", b)]
        print(f"| {d_['backend']} {d_['device']}{graph} | {b} | {d_['median_ms']:.3f} | {p_['median_ms']:.3f} | "
              f"{d_['median_ms'] / p_['median_ms']:.2f}x | {macs:.2f}x | {100 * d_['cv']:.1f}% / {100 * p_['cv']:.1f}% |")
    print("GPU:", (r["latency"][0].get("gpu") or {}))
PY
python tools/bench_scoring.py --device cuda --model torchvision:resnet50 --data synthetic \
  --input-shape 1,3,224,224 --batch-size 32 --calib-batches 2 --repeat 2 --singe-batch-steps 1,2,4,8,auto
python tools/bench_scoring.py --device cuda --batch-size 128 --calib-batches 4 --repeat 2 \
  --singe-batch-steps 1,2,4,8,auto
python tools/train_throughput.py --device cuda --model torchvision:resnet50 --input-shape 1,3,224,224 \
  --num-classes 1000 --batch-size 64 --iters 20 --repeat 3
python tools/train_throughput.py --device cuda --batch-size 512 --iters 50 --repeat 3 --distill
# compress under torchrun with nccl (needs 2 GPUs and Fashion-MNIST): same channels as one GPU, and the times
if [ "$(nvidia-smi -L 2>/dev/null | wc -l)" -ge 2 ] && [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  for n in 1 2; do
    /usr/bin/time -f "nproc $n: %e s wall" singe-deploy compress --no-export --steps 2 --finetune-iters 50 \
      --epochs 0.5 --nproc "$n" --out "$out-nproc$n"
  done
  python - "$out-nproc1" "$out-nproc2" <<'PY'
import json, sys
a, b = (json.load(open(f"{d}/report.json")) for d in sys.argv[1:])
same = sum(x["pruned_out"] == y["pruned_out"] for x, y in zip(a["layers"], b["layers"]))
print(f"nccl x2 vs one GPU: {same}/{len(a['layers'])} layers equal; accuracy {a['pruned']['accuracy']} vs "
      f"{b['pruned']['accuracy']}; fine-tuning {a['timings']['finetune_s']} s vs {b['timings']['finetune_s']} s")
PY
fi
# last (the longest): a latency target on the GPU target, its table measured there; predicted vs measured
singe-deploy compress --model torchvision:resnet50 --data synthetic --input-shape 1,3,224,224 --criterion l1 \
  --latency-reduction 1.5 --latency-batch 8 --steps 1 --finetune-iters 0 --epochs 0 --no-export \
  --latency-iters 20 --latency-seconds 0.2 "${target[@]}" --latency-table "$out-latency-table.json" --out "$out-latency"
python - "$out-latency" <<'PY'
import json, sys
r = json.load(open(f"{sys.argv[1]}/report.json"))
lat, t = r["target"]["latency"], r["target"]
print(f"latency target {t['reduction']:g}x ({lat['timer']['backend']}, {lat['timer']['device']}, batch {lat['timer']['batch']}): dense {lat['dense_ms']:.3f} ms, "
      f"predicted {lat['predicted_ms']:.3f}, measured {lat['measured_ms']:.3f} ({t['achieved']:.2f}x, hit {t['hit']}); "
      f"MACs {r['reduction']['macs']:.2f}x fewer")
PY
