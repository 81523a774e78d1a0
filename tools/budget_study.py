"""Tables of the accuracy-budget study (docs/research/accuracy-budget/index.md) from compress output folders.

    python tools/budget_study.py --budget b0 b1 b2 --fixed f0 f1 f2          # --max-accuracy-drop runs against fixed ones
    python tools/budget_study.py --margin m0 m1 m2                         # what the final fine-tuning wins back
    python tools/budget_study.py --sweep s --separate r1.5 r2 r3 r4        # one sweep against one run per point

Each argument is a finished `singe-deploy compress` output folder or a report file (`--trim OUT_DIR` writes the
trimmed copies the study keeps); times are the reports' own `timings.total_s`.
"""
import argparse
import json
from pathlib import Path

import kept_channels  # tools/ is on the path when run as a script


def load(path):
    """A report: a compress output folder's report.json, or a report file (the study keeps trimmed copies)."""
    path = Path(path)
    return json.loads((path if path.suffix == ".json" else path / "report.json").read_text())


KEEP = ("dense", "pruned", "reduction", "target", "steps", "deployables", "recommended", "accuracy_budget", "sweep",
        "timings", "environment", "criterion", "schedule")


def trim(folder, out):
    """Write a report's fields this study reads to `out` (the layer table and exports left out)."""
    Path(out).write_text(json.dumps({k: v for k, v in load(folder).items() if k in KEEP}, indent=1) + "\n")


def kept_step(r):
    return [s for s in r["steps"] if not s.get("rolled_back")][-1]


def speedup(r):
    """The pruned fp32 file's measured speedup over dense at the smallest batch timed, or None."""
    row = next((x for x in r.get("deployables", []) if x["name"] == "pruned"), None)
    if not row or not row.get("speedup"):
        return None
    batch = min(row["speedup"], key=int)
    return row["speedup"][batch]["speedup"]


def spread(values):
    return kept_channels.spread(values, digits=2)


def budget_table(budget, fixed):
    rows = ["| run | folder | MACs reduction | latency reduction (pruned fp32) | test drop, points | held-out drop at the "
            "last kept step | recommended | its speedup over dense | its drop, points (own runtime) | wall s |",
            "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    for kind, folders in (("budget", budget), ("fixed 2x", fixed)):
        for f in folders:
            r = load(f)
            b = r.get("accuracy_budget") or {}
            rec = r.get("recommended") or {}
            drop = 100 * (r["dense"]["accuracy"] - r["pruned"]["accuracy"])
            held = kept_step(r).get("estimated_drop") if b else None
            rows.append(f"| {kind} | {_name(f)} | "
                        f"{r['reduction']['macs']:.2f}x | {_x(speedup(r))} | {drop:.2f} | "
                        f"{'' if held is None else f'{held:.2f}'} | {rec.get('name', '')} | "
                        f"{_x(rec.get('speedup_over_dense'))} | {rec.get('accuracy_drop_points', '')} | "
                        f"{r['timings']['total_s']:.0f} |")
    for kind, folders in (("budget", budget), ("fixed 2x", fixed)):
        if not folders:
            continue
        rs = [load(f) for f in folders]
        rows.append(f"| {kind}, mean +- sd | | {spread([r['reduction']['macs'] for r in rs])}x | "
                    f"{spread([speedup(r) for r in rs])}x | "
                    f"{spread([100 * (r['dense']['accuracy'] - r['pruned']['accuracy']) for r in rs])} | | | "
                    f"{spread([(r.get('recommended') or {}).get('speedup_over_dense') for r in rs])}x | "
                    f"{spread([(r.get('recommended') or {}).get('accuracy_drop_points') for r in rs])} | "
                    f"{spread([r['timings']['total_s'] for r in rs])} |")
    return "\n".join(rows)


def margin_table(folders):
    rows = ["| folder | last kept step | MACs / dense | its held-out accuracy | its test accuracy | final test accuracy "
            "| final - held-out (the margin) | final - step test (recovery) | held-out - test, final | dense held-out "
            "- dense test |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for f in folders:
        r = load(f)
        s, b = kept_step(r), r["accuracy_budget"]
        final, held = r["pruned"]["accuracy"], b["holdout_accuracy"]
        rows.append(f"| {_name(f)} | {s['step']} | {s['macs'] / r['dense']['macs']:.3f} | "
                    f"{100 * s['holdout_accuracy']:.2f} | {100 * s['accuracy']:.2f} | {100 * final:.2f} | "
                    f"{100 * (final - s['holdout_accuracy']):+.2f} | {100 * (final - s['accuracy']):+.2f} | "
                    f"{100 * (held['pruned'] - final):+.2f} | {100 * (held['dense'] - r['dense']['accuracy']):+.2f} |")
    return "\n".join(rows)


def sweep_table(sweep, separate):
    r = load(sweep)
    rows = ["| point | MACs / dense | latency / dense | accuracy | on the front |", "|---:|---:|---:|---:|---|"]
    for q in r["sweep"]["points"]:
        lat = q["latency_ms"] / q["dense_latency_ms"] if q.get("latency_ms") else None
        rows.append(f"| {q['reduction']:g}x | {q['macs'] / r['dense']['macs']:.3f} | "
                    f"{'' if lat is None else f'{lat:.3f}'} | {100 * q['accuracy']:.2f}% | "
                    f"{'yes' if q['reduction'] in r['sweep']['front'] else 'no'} |")
    rows += ["", "| run | MACs / dense | latency / dense (pruned fp32, batch 1) | accuracy | wall s |",
             "|---|---:|---:|---:|---:|", f"| the sweep, all points | | | | {r['timings']['total_s']:.0f} |"]
    total = 0.0
    for f in separate:
        s = load(f)
        total += s["timings"]["total_s"]
        up = speedup(s)
        rows.append(f"| {_name(f)} | {s['pruned']['macs'] / s['dense']['macs']:.3f} | "
                    f"{'n/a' if up is None else f'{1 / up:.3f}'} | {100 * s['pruned']['accuracy']:.2f}% | "
                    f"{s['timings']['total_s']:.0f} |")
    if separate:
        rows.append(f"| separate runs, together | | | | {total:.0f} |")
    return "\n".join(rows)


def _name(path):
    path = Path(path)
    return path.stem if path.suffix == ".json" else path.name


def _x(v):
    return "n/a" if v is None else f"{v:.2f}x"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", nargs="*", default=[])
    ap.add_argument("--fixed", nargs="*", default=[])
    ap.add_argument("--margin", nargs="*", default=[])
    ap.add_argument("--sweep")
    ap.add_argument("--separate", nargs="*", default=[])
    ap.add_argument("--trim", help="write each given report, trimmed, to this folder as <folder name>.json")
    args = ap.parse_args()
    if args.trim:
        Path(args.trim).mkdir(parents=True, exist_ok=True)
        for f in args.budget + args.fixed + args.margin + args.separate + ([args.sweep] if args.sweep else []):
            trim(f, Path(args.trim) / f"{Path(f).name}.json")
    if args.budget or args.fixed:
        print(budget_table(args.budget, args.fixed), end="\n\n")
    if args.margin:
        print(margin_table(args.margin), end="\n\n")
    if args.sweep:
        print(sweep_table(args.sweep, args.separate))


if __name__ == "__main__":
    main()
