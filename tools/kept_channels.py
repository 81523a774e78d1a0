"""Where each criterion kept its channels: the kept fraction of conv output channels by the layer's dense width.

    python tools/kept_channels.py RUN_FOLDER_OR_COMPARE_FOLDER ... [--json OUT.json]

Reads every run's report.json (its per-layer table), groups runs by model (with its checkpoint), criterion label,
target and flowchart, and prints mean +- std over seeds of: accuracy, params, and the kept fraction (pruned / dense
output channels, summed over the conv layers of that dense width). In a ResNet the widths are its stages, so the
table shows whether a criterion kept the early, high-resolution layers or the late ones. --json writes the per-run
figures.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from singe_deploy.commands.compare import RUN_NAME, label_of

CONV = ("Conv1d", "Conv2d", "Conv3d")


def kept(report):
    """{dense width: kept fraction} over the report's conv layers."""
    dense, pruned = {}, {}
    for layer in report["layers"]:
        if layer["type"] in CONV:
            dense[layer["dense_out"]] = dense.get(layer["dense_out"], 0) + layer["dense_out"]
            pruned[layer["dense_out"]] = pruned.get(layer["dense_out"], 0) + layer["pruned_out"]
    return {w: pruned[w] / dense[w] for w in sorted(dense)}


def reports(paths):
    for path in map(Path, paths):
        found = [path / "report.json"] if (path / "report.json").is_file() else sorted(path.glob("runs/*/report.json"))
        if not found:
            raise SystemExit(f"error: {path} holds no report.json (a compress output or a compare folder)")
        yield from found


def runs(paths):
    out = []
    for report in reports(paths):
        m = RUN_NAME.match(report.parent.name)
        rep = json.loads(report.read_text())
        label, seed = (m["label"], int(m["seed"])) if m else (rep["criterion"]["name"], None)
        flowchart = rep["schedule"]["flowchart"]
        weights = Path(rep["model"]["checkpoint"]).name if rep["model"].get("checkpoint") else "no checkpoint"
        out.append({"run": str(report.parent), "model": f"{rep['model']['spec']} ({weights})",
                    "criterion": label_of(label), "seed": seed,
                    "target": f"{rep['target']['reduction']:g}x {rep['target']['metric']}", "flowchart": flowchart,
                    "accuracy": rep["pruned"]["accuracy"], "params": rep["pruned"]["params"],
                    "kept": kept(rep)})
    return out


def spread(values, digits=4):
    """'mean +- sd' of the values given (None left out), or 'n/a'; tools/budget_study.py uses it too."""
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} +- {sd:.{digits}f}"


def table(rows):
    widths = sorted({w for r in rows for w in r["kept"]})
    groups = {}
    for r in rows:
        groups.setdefault((r["model"], r["target"], r["flowchart"], r["criterion"]), []).append(r)
    lines = ["| model | target | flowchart | criterion | runs | accuracy | params | "
             + " | ".join(f"kept, width {w}" for w in widths) + " |",
             "|---|---|---|---|---:|---:|---:|" + "---:|" * len(widths)]
    for (model, target, flowchart, crit), rs in sorted(groups.items()):
        kept_cols = [f"{statistics.mean(r['kept'][w] for r in rs if w in r['kept']):.2f}" for w in widths]
        accuracy, params = spread([r["accuracy"] for r in rs]), statistics.mean(r["params"] for r in rs) / 1e3
        lines.append(f"| {model} | {target} | {flowchart} | {crit} | {len(rs)} | {accuracy} | {params:.0f} K | "
                     + " | ".join(kept_cols) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", help="compress output folders or compare folders")
    ap.add_argument("--json", help="also write the per-run figures here")
    args = ap.parse_args(argv)
    rows = runs(args.paths)
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
