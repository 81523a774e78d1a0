"""Prune every torchvision classification model with `singe-deploy compress`; write OUT.json and OUT.md.

    python tools/prune_zoo.py --out docs/research/zoo/prune                      # every model (hours on 2 CPU cores)
    python tools/prune_zoo.py --models shufflenet_v2_x1_0,vit_b_16 --out /tmp/zoo
    python tools/prune_zoo.py --models timm:resnet18@64,timm:vit_tiny_patch16_224@224 --out docs/research/zoo/prune-timm
    python tools/prune_zoo.py --models fasterrcnn_mobilenet_v3_large_fpn@320,fcn_resnet50@128 --out docs/research/zoo/prune-detseg
    python tools/prune_zoo.py --models vit_b_16,swin_t@224 --reduction 2 --latency --threads 2 --out /tmp/vit2x

A name without a kind is torchvision's; `@N` sets the input to NxN.

Each model: random weights, synthetic data, l2, 1.5x fewer MACs (--reduction), one step, ONNX export with
parity against PyTorch and the pruned MACs counted again on the graph, latency at batch 1 with a few iterations
(not a benchmark; with --latency, compress's default latency run of the dense and pruned files, with the load
average recorded: run it alone). Input 64x64 where the model takes it, else the size it needs (SIZES). Every
model runs in its own process under a time limit; a row says pass/fail, the MACs ratio reached, the parity and
the failure's line. Exit 1 when a model fails.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torchvision.models as tvm

SIZES = {"inception_v3": 96, "maxvit_t": 224}  # the smallest input each of these takes
FIXED = ("vit_",)  # torchvision builds these for 224x224 only
REDUCTION = 1.5


def size_of(name):
    if "@" in name:
        return int(name.rsplit("@", 1)[1])
    if name in SIZES:
        return SIZES[name]
    return 224 if name.startswith(FIXED) else 64


def run(name, timeout, threads, reduction=REDUCTION, latency=False):
    size = size_of(name)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        spec = name.rsplit("@", 1)[0]
        spec = spec if ":" in spec else f"torchvision:{spec}"
        cmd = [sys.executable, "-m", "singe_deploy", "compress", "--model", spec, "--data", "synthetic",
               "--input-shape", f"1,3,{size},{size}", "--criterion", "l2", "--macs-reduction",
               str(reduction), "--steps", "1", "--batch-size", "8", "--parity-batches", "1", "--batch-sizes", "1",
               "--threads", str(threads), "--out", str(out)]
        if not latency:  # a few iterations: the run checks that latency can be measured, it is not a benchmark
            cmd += ["--latency-iters", "5", "--latency-seconds", "0"]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        load = round(os.getloadavg()[0], 2)
        t = time.time()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            return {"model": name, "input": size, "status": "timeout", "seconds": round(time.time() - t),
                    "reason": f"no result within {timeout} s"}
        row = {"model": name, "input": size, "reduction": reduction, "seconds": round(time.time() - t, 1),
               "exit": proc.returncode, "load": load}
        report = out / "report.json"
        if report.exists():
            r = json.loads(report.read_text())
            onnx = {e["variant"]: e for e in r["exports"] if e["format"] == "onnx"}
            pruned = onnx.get("pruned", {})
            row.update(dense_macs=r["dense"]["macs"], pruned_macs=r["pruned"]["macs"],
                       macs_ratio=round(r["dense"]["macs"] / r["pruned"]["macs"], 3),
                       params_ratio=round(r["dense"]["params"] / r["pruned"]["params"], 3),
                       dense_params=r["dense"]["params"], pruned_params=r["pruned"]["params"],
                       parity_max_abs_diff=pruned.get("parity", {}).get("max_abs_diff"),
                       top1_agreement=pruned.get("parity", {}).get("top1_agreement"),
                       graph_macs_agree=pruned.get("graph_count", {}).get("macs_agree"))
            ms = {e["variant"]: e["median_ms"] for e in r.get("latency", []) if e["batch_size"] == 1}
            if latency and {"dense", "pruned"} <= set(ms):
                row.update(dense_ms=round(ms["dense"], 3), pruned_ms=round(ms["pruned"], 3),
                           speedup=round(ms["dense"] / ms["pruned"], 3), threads=threads)
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.startswith(("error:", "check failed"))]
        row["status"] = "pass" if proc.returncode == 0 and report.exists() else "fail"
        if row["status"] != "pass":
            tail = (proc.stderr or proc.stdout).strip().splitlines()
            row["reason"] = (lines or tail or ["no output"])[-1][:300]
        return row


def render(rows, listed=None, reduction=REDUCTION):
    passed = sum(r["status"] == "pass" for r in rows)
    timed = any("speedup" in r for r in rows)
    ran = (f"{len(rows)} of the {listed} listed models run, then stopped: rerunning the command continues it"
           if listed and listed > len(rows) else f"{len(rows)} models run")
    out = ["# Pruning a model zoo with `singe-deploy compress`\n",
           f"`python tools/prune_zoo.py` ({ran}; {passed} pass): `compress` on each model with random weights,",
           f"synthetic data, l2, {reduction}x fewer MACs, one step; parity is the pruned ONNX file against PyTorch "
           "on 8 images (the check: |diff| <= 1e-3 + 1e-5 x the sample's largest |output|); seconds include export "
           + ("and the latency runs." if timed else "and a short latency run, with other jobs on the machine."),
           *(["Latency: onnxruntime on the CPU, batch 1, median of `compress`'s default run (at least 50 iterations "
              "and 2 s), dense and pruned ONNX files; load: the 1-minute load average when the model's run began "
              "(about 0 means nothing else ran).\n"] if timed else [""]),
           "| model | input | result | MACs ratio | params ratio | parity max abs diff | top-1 agreement "
           "| graph MACs agree | " + ("dense MACs | pruned MACs | dense params | pruned params | dense ms | pruned ms | "
                                    "speedup | threads | load | " if timed else "") + "s | reason |",
           "|---|---:|---|---:|---:|---:|---:|---|" + ("---:|" * 9 if timed else "") + "---:|---|"]
    for r in rows:
        diff = r.get("parity_max_abs_diff")
        extra = "".join(f"{r.get(k, '')} | " for k in ("dense_macs", "pruned_macs", "dense_params", "pruned_params",
                                                       "dense_ms", "pruned_ms", "speedup", "threads", "load"))
        out.append(f"| {r['model']} | {r['input']} | {r['status']} | {r.get('macs_ratio', '')} | "
                   f"{r.get('params_ratio', '')} | {'' if diff is None else f'{diff:.1e}'} | "
                   f"{r.get('top1_agreement', '')} | {r.get('graph_macs_agree', '')} | {extra if timed else ''}"
                   f"{r.get('seconds', '')} | {r.get('reason', '').replace('|', chr(92) + '|')} |")
    return "\n".join(out) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", help="comma-separated torchvision names (default: every classification model)")
    ap.add_argument("--out", required=True, help="OUT.json and OUT.md are written")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per model")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reduction", type=float, default=REDUCTION, help="--macs-reduction for every model")
    ap.add_argument("--latency", action="store_true",
                    help="time dense and pruned ONNX files with compress's default latency run (run it alone)")
    ap.add_argument("--render", action="store_true", help="only write OUT.md again from OUT.json")
    args = ap.parse_args(argv)
    names = args.models.split(",") if args.models else tvm.list_models(module=tvm)
    out = Path(args.out)
    if args.render:
        data = json.loads(out.with_suffix(".json").read_text())
        listed = data.get("listed") or max(len(names), len(data["rows"]))
        out.with_suffix(".md").write_text(render(data["rows"], listed, data.get("reduction", REDUCTION)))
        return 0
    done, listed_before = {}, 0
    if out.with_suffix(".json").exists():  # resume: passed rows are kept, the rest run again
        before = json.loads(out.with_suffix(".json").read_text())
        done, listed_before = {r["model"]: r for r in before["rows"]}, before.get("listed", 0)
    rows = []
    for name in names:
        kept = done.get(name)
        row = (kept if kept and kept["status"] == "pass"
               else run(name, args.timeout, args.threads, args.reduction, args.latency))
        rows.append(row)
        print(f"{name}: {row['status']} {row.get('macs_ratio', '')} {row.get('reason', '')}", flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        keep = [r for r in done.values() if r["model"] not in {x["model"] for x in rows}] + rows
        listed = max(len(names), len(keep), listed_before)
        out.with_suffix(".json").write_text(json.dumps({"reduction": args.reduction, "listed": listed,
                                                        "rows": keep}, indent=1))
        out.with_suffix(".md").write_text(render(keep, listed, args.reduction))
    return 0 if all(r["status"] == "pass" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
