"""The channel-alignment probe of `--round-to auto` for one model, backend and batch, printed as a table.

    python tools/alignment_probe.py --model builtin:resnet20 --input-shape 1,1,28,28
    python tools/alignment_probe.py --model torchvision:resnet50 --backend torch --device cuda --batch 32 --cuda-graph

Always measures (no cache): per probed layer shape, the score of each alignment (mean time at its multiples / the
line through all counts; lower is faster), then the mean over layers and the alignment compress would pick.
"""
from __future__ import annotations

import argparse
import time

from singe_deploy.pruning import alignment
from singe_deploy.measure.device import cpu_model
from singe_deploy.models.specs import build_model


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:resnet20")
    ap.add_argument("--input-shape", default="1,1,28,28")
    ap.add_argument("--num-classes", type=int, default=10)
    ap.add_argument("--backend", choices=("onnxruntime", "torch"), default="onnxruntime")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--cuda-graph", action="store_true")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int)
    args = ap.parse_args()
    shape = [int(v) for v in args.input_shape.split(",")]
    model = build_model(args.model, args.num_classes, shape[1]).eval()
    probe = (alignment.OnnxProbe(args.batch, args.threads) if args.backend == "onnxruntime" else
             alignment.TorchProbe(args.batch, args.device, args.threads, args.cuda_graph))
    t = time.time()
    layers = alignment.measure(probe, alignment.probe_shapes(model, shape))
    scores = [alignment.score(l["counts"], l["ms"]) for l in layers]
    value, mean = alignment.choose(scores)
    key = probe.key()
    print(f"{args.model} at {args.input_shape}, {key['backend']} {key['version']} on {key['device']} "
          f"(CPU: {cpu_model()}), batch {args.batch}{', CUDA graphs' if args.cuda_graph else ''}: "
          f"probed in {time.time() - t:.1f} s")
    cands = sorted(mean)
    print("| layer (width, kernel, stride, input) | " + " | ".join(f"a={a}" for a in cands) + " |")
    print("|---|" + "---:|" * len(cands))
    for l, s in zip(layers, scores):
        sh = l["shape"]
        print(f"| {sh['width']}, {sh['kernel']}x{sh['kernel']}, /{sh['stride']}, {sh['hw'][0]}x{sh['hw'][1]} | "
              + " | ".join(f"{s[a]:.3f}" if a in s else "" for a in cands) + " |")
    print("| mean | " + " | ".join(f"{mean[a]:.3f}" for a in cands) + " |")
    print(f"picked: {value}")


if __name__ == "__main__":
    main()
