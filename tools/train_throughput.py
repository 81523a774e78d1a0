"""Fine-tuning throughput (images per second) in each precision and memory format, through the pipeline's own
train_iters, on synthetic batches of a fixed size.

    python tools/train_throughput.py                          # the demo model on this CPU
    python tools/train_throughput.py --device cuda --model torchvision:resnet50 --input-shape 1,3,224,224 \
        --batch-size 64
    python tools/train_throughput.py --distill                # with the dense model as teacher
    python tools/train_throughput.py --settings bf16+cl --compile # also torch.compile'd: compile seconds, images/s

Each setting runs --warmup iterations, then --iters timed ones, --repeat times (best kept, medians printed too).
Run it with nothing else on the machine.
"""
import argparse
import time

import torch

from singe_deploy.training import distributed
from singe_deploy.models.specs import build_model
from singe_deploy.training.loops import Recipe, precision, train_iters

SETTINGS = {"fp32": ("off", "off"), "fp32+cl": ("off", "on"), "bf16": ("bf16", "off"), "bf16+cl": ("bf16", "on"),
            "fp16+cl": ("fp16", "on"), "auto": ("auto", "auto")}


def timed(model, x, y, iters, recipe, device):
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    sync()
    t = time.perf_counter()
    train_iters(model, None, iters, 0.01, batches=iter([(x, y)] * iters), recipe=recipe)
    sync()
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin:resnet20")
    ap.add_argument("--input-shape", default="1,1,28,28")
    ap.add_argument("--num-classes", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--settings", default=None, help=f"comma list of {', '.join(SETTINGS)} (default: those that run "
                                                     "on the device)")
    ap.add_argument("--distill", action="store_true", help="a teacher (a copy of the model) runs on every batch")
    ap.add_argument("--compile", action="store_true", help="also time each setting with the model torch.compile'd "
                                                           "(default inductor backend); its first call is timed apart")
    args = ap.parse_args()
    device = torch.device(args.device)
    distributed._current = distributed.Context(device=device)
    shape = [int(v) for v in args.input_shape.split(",")]
    torch.manual_seed(0)
    model = build_model(args.model, args.num_classes, shape[1])
    teacher = build_model(args.model, args.num_classes, shape[1]) if args.distill else None
    x = torch.randn([args.batch_size] + shape[1:])
    y = torch.randint(0, args.num_classes, (args.batch_size,))
    names = args.settings.split(",") if args.settings else [n for n in SETTINGS
                                                            if device.type == "cuda" or "fp16" not in n]
    print(f"{args.model} {args.input_shape} batch {args.batch_size} on {device} "
          f"({torch.get_num_threads()} threads), {args.iters} iterations x {args.repeat}"
          f"{', distilling' if args.distill else ''}")
    print("| setting | autocast | channels-last | images/s (best) | images/s (median) | vs fp32 |")
    print("|---|---|---|---:|---:|---:|")
    base = None
    for name in names:
        amp, cl = SETTINGS[name]
        dtype, channels_last = precision(amp, cl, device)
        recipe = Recipe(teacher=teacher, amp=amp, channels_last=cl)
        timed(model, x, y, args.warmup, recipe, device)
        rates = sorted(args.batch_size * args.iters / timed(model, x, y, args.iters, recipe, device)
                       for _ in range(args.repeat))
        best, median = rates[-1], rates[len(rates) // 2]
        base = base or best
        kind = str(dtype or 'fp32').replace('torch.', '')
        print(f"| {name} | {kind} | {channels_last} | {best:.0f} | {median:.0f} | {best / base:.2f}x |", flush=True)
        if args.compile:
            compiled = torch.compile(model)
            first = timed(compiled, x, y, 1, recipe, device)  # compiles forward and backward
            timed(compiled, x, y, args.warmup, recipe, device)
            rates = sorted(args.batch_size * args.iters / timed(compiled, x, y, args.iters, recipe, device)
                           for _ in range(args.repeat))
            print(f"| {name} + compile (first iteration {first:.1f} s) | {kind} | {channels_last} | {rates[-1]:.0f} | "
                  f"{rates[len(rates) // 2]:.0f} | {rates[-1] / base:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
