"""Rerun the README's demo figures: `singe-deploy compress` over several seeds, printed as the README's table.

    python tools/demo_figures.py                                 # seeds 0, 1, 2 of the defaults, in /tmp/demo-figures
    python tools/demo_figures.py --out DIR -- --augment on --epochs 4   # options after -- go to every compress run
    python tools/demo_figures.py --reports DIR0 DIR1 DIR2        # the table of runs made before (their own timings)
    python tools/demo_figures.py --reports docs/research/singe-paths/demo/frozen-*.json   # kept, trimmed reports

Each run is timed from the outside (the process's wall time, start-up included). Run it with nothing else on the
machine: the wall times are the point. Accuracies are means over the seeds with their sample standard deviation;
the CPU's model name and the flags that move the figures (avx2, avx512f, avx512_bf16, amx_bf16, ...) head the table.
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import yaml

from singe_deploy.measure.device import TELLING_FLAGS, cpu_flags, cpu_model, physical_cores


def run(seed, out, extra):
    """Run compress for one seed into out/seedS; returns the folder, and writes the wall time beside the report."""
    folder = out / f"seed{seed}"
    cmd = ["singe-deploy", "compress", "--seed", str(seed), "--out", str(folder), "--force", *extra]
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    t = time.perf_counter()
    rc = subprocess.run(cmd, stdout=subprocess.DEVNULL, check=False).returncode
    wall = time.perf_counter() - t
    if rc != 0:
        sys.exit(f"seed {seed}: compress exited {rc}; see {folder}")
    (folder / "wall.json").write_text(json.dumps({"wall_s": wall, "command": cmd}))
    return folder


def load(folder):
    """A compress output folder, or a trimmed report file a study keeps (its seed in a `seed` field)."""
    folder = Path(folder)
    if folder.suffix == ".json":
        report = json.loads(folder.read_text())
        return dict(report, _wall=None, _seed=report.get("seed"))
    report = json.loads((folder / "report.json").read_text())
    wall = folder / "wall.json"
    report["_wall"] = json.loads(wall.read_text())["wall_s"] if wall.is_file() else None
    report["_seed"] = yaml.safe_load((folder / "config.yaml").read_text()).get("seed")
    return report


def mean_sd(values):
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def minutes(s):
    return f"{int(s // 60)} min {s % 60:02.0f} s"


def table(reports):
    """The README's markdown table (and a heading line) for reports of one setting over several seeds."""
    first = reports[0]
    device = first["environment"]["device"]
    flags = next((r["environment"]["device"]["cpu_flags"] for r in reports
                  if r["environment"]["device"].get("cpu_flags") is not None), None)
    if flags is None:  # a report written before reports carried the flags: this machine's, said so
        flags = sorted(cpu_flags() & TELLING_FLAGS) + ["read on this machine"]
    dense, pruned = first["dense"], [r["pruned"] for r in reports]
    acc = [p["accuracy"] for p in pruned]
    am, asd = mean_sd(acc)
    drop = statistics.mean(p["accuracy"] - r["dense"]["accuracy"] for p, r in zip(pruned, reports))

    def deployable(r, name):
        return next((d for d in r.get("deployables", []) if d["name"] == name), None)

    lat = [(deployable(r, "dense"), deployable(r, "pruned")) for r in reports]
    days = sorted({x["measured_at"][:10] for r in reports for x in r.get("latency", []) if x.get("measured_at")})
    heading = (f"Demo, seeds {', '.join(str(r['_seed']) for r in reports)}; {device.get('cpu')} "
               f"({', '.join(flags) or 'flags unknown'}), {device.get('cores_physical')} cores; "
               f"{' to '.join(dict.fromkeys([days[0], days[-1]])) if days else date.today().isoformat()}")
    lines = [heading, "", f"| | dense | pruned, mean +- sd over {len(reports)} seeds | per seed |", "|---|---:|---:|---|"]
    macs = [p["macs"] for p in pruned]
    lines.append(f"| MACs (per sample) | {dense['macs']:,} | {statistics.mean(macs):,.0f} "
                 f"({dense['macs'] / statistics.mean(macs):.2f}x fewer) | {', '.join(f'{m:,}' for m in macs)} |")
    params = [p["params"] for p in pruned]
    lines.append(f"| params | {dense['params']:,} | {statistics.mean(params):,.0f} | "
                 f"{', '.join(f'{m:,}' for m in params)} |")
    lines.append(f"| Fashion-MNIST test accuracy | {100 * dense['accuracy']:.2f}% | **{100 * am:.2f}% +- {100 * asd:.2f}** "
                 f"({100 * drop:+.2f} points) | {', '.join(f'{100 * a:.2f}%' for a in acc)} |")
    if all(d and p and "1" in d["latency_ms"] for d, p in lat):
        threads = first.get("threads", {}).get("threads")
        dm = statistics.mean(d["latency_ms"]["1"] for d, _ in lat)
        pm = statistics.mean(p["latency_ms"]["1"] for _, p in lat)
        speed = [p["speedup"]["1"]["speedup"] for _, p in lat]
        lines.append(f"| onnxruntime CPU latency, batch 1, median ({threads} thread{'s' if threads != 1 else ''}, "
                     f"interleaved) | {dm:.3f} ms | {pm:.3f} ms ({statistics.mean(speed):.2f}x faster) | "
                     f"{', '.join(f'{s:.2f}x' for s in speed)} |")
    onnx = [[e["parity"] for e in r.get("exports", []) if e["format"] == "onnx"] for r in reports]
    if all(onnx):  # runs with --no-export have none
        agree = [min(p["top1_agreement"] for p in ps) for ps in onnx]
        diff = [max(p["max_abs_diff"] for p in ps) for ps in onnx]
        lines.append(f"| ONNX vs PyTorch | | max abs diff {max(diff):.1e}, top-1 agreement {min(agree):.4f} | |")
    score = [sum(s["score_seconds"] for s in r["steps"]) for r in reports]
    sm, ssd = mean_sd(score)
    crit = first["criterion"]
    path = crit.get("options", {}).get("path")
    lines.append(f"| scoring, all steps ({crit['name']}{f', {path} path' if path else ''}) | | {sm:.1f} s +- {ssd:.1f} | "
                 f"{', '.join(f'{v:.1f} s' for v in score)} |")
    walls = [r["_wall"] for r in reports]
    source = "wall time" if all(walls) else "compress's own total (start-up not included)"
    walls = [w or r["timings"]["total_s"] for w, r in zip(walls, reports)]
    lines.append(f"| {source} | | {minutes(statistics.mean(walls))} | {', '.join(minutes(w) for w in walls)} |")
    stages = [r["timings"] for r in reports]
    keys = [("evaluate_dense_s", "dense evaluation"), ("prune_s", "pruning steps"), ("finetune_s", "final fine-tuning"),
            ("export_and_latency_s", "export and latency")]
    lines.append("| stages, mean: " + ", ".join(name for _, name in keys) + " | | "
                 + ", ".join(f"{statistics.mean(t.get(k, 0) for t in stages):.0f} s" for k, _ in keys) + " | |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", default="/tmp/demo-figures")
    ap.add_argument("--reports", nargs="+", help="compress output folders to tabulate instead of running")
    ap.add_argument("extra", nargs="*", help="options for compress, after --")
    a = ap.parse_args()
    if a.reports:
        folders = a.reports
    else:
        print(f"{cpu_model()}, {physical_cores()} cores: run nothing else meanwhile", file=sys.stderr)
        folders = [run(int(s), Path(a.out), a.extra) for s in a.seeds.split(",")]
    print(table([load(f) for f in folders]))


if __name__ == "__main__":
    main()
