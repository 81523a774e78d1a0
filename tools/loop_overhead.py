"""The pipeline's fine-tuning loop (train.train_iters) against a plain PyTorch loop on the same model, batch,
precision and memory format, timed in alternation: how much the pipeline's own per-batch work costs.

    python tools/loop_overhead.py                      # the demo model, batch 128, distilling, fp32 and bf16+cl
    python tools/loop_overhead.py --settings fp32 --no-distill --iters 30
    python tools/loop_overhead.py --settings bf16+cl --profile   # where the pipeline loop's time goes (cProfile)

The plain loop is what a user would write: SGD with Nesterov momentum, cross-entropy plus distillation from a
teacher (when distilling), autocast and channels-last as the setting says, one batch held in memory. Run it with
nothing else on the machine; bf16 settings need a CPU with bf16 instructions to be worth timing.
"""
import argparse
import copy
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from singe_deploy.models.specs import build_model
from singe_deploy.training.precision import SETTINGS
from singe_deploy.training.loops import Recipe, precision, train_iters


def plain(model, teacher, x, y, iters, dtype, channels_last, soft=None):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt).train()
    if teacher is not None:
        teacher.to(memory_format=fmt).eval()
    x = x.contiguous(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, nesterov=True, weight_decay=5e-4)
    for _ in range(iters):
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            logits = model(x)
            with torch.no_grad():
                t = soft if soft is not None else teacher(x) if teacher is not None else None
        loss = F.cross_entropy(logits.float(), y)
        if t is not None:
            loss = 0.5 * loss + 0.5 * 16 * F.kl_div(F.log_softmax(logits.float() / 4, 1),
                                                    F.log_softmax(t.float() / 4, 1), reduction="batchmean",
                                                    log_target=True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.to(memory_format=torch.contiguous_format)


def pipeline(model, teacher, x, y, iters, amp, cl, soft=None):
    batch = (x, y) if soft is None else (x, y, soft)  # soft: the teacher's logits, held (distill.py)
    train_iters(model, None, iters, 1e-4, batches=iter([batch] * iters),
                recipe=Recipe(teacher=teacher, amp=amp, channels_last=cl), desc="pipeline")


def profile(model, teacher, x, y, a, soft=None):
    """cProfile of the pipeline loop (after a warm-up): the functions with the most time of their own. Time inside
    torch's operators shows as their Python entry points (conv2d, backward, ...); the rest is per-batch Python."""
    import cProfile
    import pstats

    for name in a.settings.split(","):
        amp, cl = SETTINGS[name]
        pipeline(model, teacher, x, y, 3, amp, cl, soft)
        prof = cProfile.Profile()
        t = time.perf_counter()
        prof.enable()
        pipeline(model, teacher, x, y, a.iters, amp, cl, soft)
        prof.disable()
        wall = time.perf_counter() - t
        stats = pstats.Stats(prof)
        rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:12]
        print(f"\n{name}: {1000 * wall / a.iters:.1f} ms per iteration; own time per iteration of the top functions")
        print("| function | ms / iteration | share |")
        print("|---|---:|---:|")
        for (file, line, func), (_, _, own, _, _) in rows:
            where = f"{Path(file).name}:{line}" if line else file
            print(f"| {func} ({where}) | {1000 * own / a.iters:.2f} | {own / wall:.1%} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:resnet20")
    ap.add_argument("--input-shape", default="1,1,28,28")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--settings", default="fp32,bf16+cl")
    ap.add_argument("--no-distill", action="store_true")
    ap.add_argument("--logits-once", action="store_true", help="distil from the teacher's logits computed once, as "
                                                               "compress does on unaugmented in-memory data")
    ap.add_argument("--profile", action="store_true", help="profile the pipeline loop instead: the functions with "
                                                           "the most time of their own, per iteration")
    a = ap.parse_args()
    shape = [int(v) for v in a.input_shape.split(",")]
    torch.manual_seed(0)
    model = build_model(a.model, 10, shape[1])
    teacher = None if a.no_distill else copy.deepcopy(model)
    x = torch.randn([a.batch_size] + shape[1:])
    y = torch.randint(0, 10, (a.batch_size,))
    soft = None
    if a.logits_once and teacher is not None:
        with torch.no_grad():
            soft = teacher.eval()(x)
    print(f"{a.model} batch {a.batch_size}, {a.iters} iterations x {a.rounds} rounds in alternation, "
          f"{torch.get_num_threads()} threads{'' if a.no_distill else ', distilling'}"
          f"{' from logits held' if soft is not None else ''}")
    if a.profile:
        return profile(model, teacher, x, y, a, soft)
    print("| setting | plain loop images/s (best, median) | pipeline images/s (best, median) | pipeline / plain (best) |")
    print("|---|---:|---:|---:|")
    for name in a.settings.split(","):
        amp, cl = SETTINGS[name]
        dtype, channels_last = precision(amp, cl, "cpu")
        runs = {"plain": [], "pipeline": []}
        for r in range(a.rounds + 1):  # round 0 warms up both
            for kind in (("plain", "pipeline") if r % 2 else ("pipeline", "plain")):
                t = time.perf_counter()
                if kind == "plain":
                    plain(model, teacher, x, y, a.iters, dtype, channels_last, soft)
                else:
                    pipeline(model, teacher, x, y, a.iters, amp, cl, soft)
                if r:
                    runs[kind].append(a.batch_size * a.iters / (time.perf_counter() - t))
        p, q = sorted(runs["plain"]), sorted(runs["pipeline"])
        print(f"| {name} | {p[-1]:.0f}, {p[len(p) // 2]:.0f} | {q[-1]:.0f}, {q[len(q) // 2]:.0f} | "
              f"{q[-1] / p[-1]:.2f} |")


if __name__ == "__main__":
    main()
