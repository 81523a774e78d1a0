"""Merge compare.json files of the same set-up (runs split by seed or target across processes) into one table.

    python tools/merge_compare.py docs/research/r56-short/compare-r56-*.json --out docs/research/r56-short/compare-r56
    python tools/merge_compare.py OUT/compare.json OUT2/.cut.partial --out merged   # and an interrupted compare

An input may also be a compare output folder, or the hidden .NAME.partial folder an interrupted compare leaves:
its finished runs count, rows as compare writes them, with the options of its started.json (folders cut short
before compare wrote one: of its entwined runs' config.yaml).

Refuses files whose options differ (other than what each run was split by: criteria, reductions, seeds,
distillation; and, for runs without export, the export, parity and latency options, which cannot change their
results); a run named twice (same criterion, target, seed and flowchart) is kept once, from the first file that
has it. Files run with and without --distill are labelled as `compare --distill-both` labels its runs
(singe:distill=true), so the table keeps them apart.
Writes OUT.json (the merged runs) and OUT.md (compare's table plus each run's accuracy by seed).

    python tools/merge_compare.py --coverage docs/research/*/compare-*.json

prints instead which settings (the options that differ among the files), flowcharts and targets each criterion
was run at, and with how many seeds, over files of any set-ups; runs are counted once.

    python tools/merge_compare.py --standing singe docs/research/*/compare-*.json

prints, over the same cells, where one criterion stands in each: its mean, its rank, the best other criterion,
the gap in points, on how many shared seeds it is ahead of that one, and random's mean.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from singe_deploy.commands import compare
from singe_deploy.commands.compare import PER_RUN, RUN_NAME, folder, label_of, markdown, reduction, row
from singe_deploy.config import defaults

DEFAULTS = defaults()
COMPARE_DEFAULTS = dict(DEFAULTS, **compare.DEFAULTS)  # what a compare run without flags uses

SPLIT = ("criteria", "macs_reductions", "seeds", "one_shot", "rankings", "distill", "out", "force", "resume",
         "config")
# export, parity and latency options: compare runs without export, so they cannot change a result
EXPORT_ONLY = ("parity_atol", "parity_rtol", "parity_top1", "parity_batches", "parity_samples", "batch_sizes",
               "threads", "latency_iters", "latency_seconds", "opset", "trt_precision", "trt_tf32", "trt_workspace_gb",
               "trt_timing_cache", "cuda_graph")


def _labelled(run, distill):
    """The run as compare --distill-both names it (criterion singe:distill=true, folder singe+distill-true-...)."""
    if "distill=" in run["criterion"]:
        return run
    label = f"{run['criterion']}:distill={str(bool(distill)).lower()}"
    return dict(run, criterion=label, name=run["name"].replace(folder(run["criterion"]), folder(label), 1))


def _value(options, key):
    """An option's value in a file, its default where the file predates it (new options default to the old
    behaviour); None and empty lists are the same."""
    value = options.get(key, DEFAULTS.get(key))
    return None if value in (None, [], ()) else value


def finished_runs(path):
    """The runs a compare folder holds (finished, or cut short: its .NAME.partial folder), as compare.json has them."""
    path = Path(path)
    started = path / compare.STARTED  # only in a cut-short folder; an interrupted growth holds an old compare.json
    if (path / "compare.json").is_file() and not started.is_file():
        return json.loads((path / "compare.json").read_text())
    rows, options = [], json.loads(started.read_text())["options"] if started.is_file() else None
    for report in sorted((path / "runs").glob("*/report.json")):
        m = RUN_NAME.match(report.parent.name)
        if not m:
            continue
        metric, label = ("macs" if m["tag"] == "x" else "latency"), label_of(m["label"])
        opts = {"criterion": label.split(":")[0], "label": label, "seed": int(m["seed"]),
                f"{metric}_reduction": float(m["x"])}
        rows.append(row(json.loads(report.read_text()), report.parent.name, m["flowchart"], opts))
        if options is None and m["flowchart"] == "entwined":  # one-shot runs change steps and finetune_iters
            cfg = yaml.safe_load((report.parent / "config.yaml").read_text())
            options = {k: v for k, v in cfg.items() if k not in PER_RUN}
    if options is None:
        raise SystemExit(f"error: {path} has no {compare.STARTED} and no finished entwined run (runs/*/report.json); "
                         "nothing to merge")
    return {"runs": rows, "options": options}


def _load(path):
    data = finished_runs(path) if Path(path).is_dir() else json.loads(Path(path).read_text())
    if not {"runs", "options"} <= set(data):
        raise SystemExit(f"error: {path} is not a compare result (compare.json or merged .json: runs and options)")
    return data


def merge(paths):
    runs, options, sources, repeated = {}, None, [], 0
    files = [(path, _load(path)) for path in paths]
    both = len({bool(d["options"].get("distill")) for _, d in files}) > 1
    for path, data in files:
        skip = SPLIT + (EXPORT_ONLY if not data["options"].get("export", True) else ())
        opts = {k: v for k, v in data["options"].items() if k not in skip}
        if options is None:
            options = opts
        else:  # an option a later version added is absent from older files: absent is its default
            diff = sorted(k for k in set(opts) | set(options) if _value(opts, k) != _value(options, k))
            if diff:
                raise SystemExit(f"error: {path} was run with other options ({', '.join(diff)}); merge like with like")
        for run in data["runs"]:
            if both:
                run = _labelled(run, data["options"].get("distill"))
            if run["name"] in runs:
                repeated += 1
                continue
            runs[run["name"]] = dict(run, source=str(path))
        sources.append(str(path))
    tuned = sorted({r["training"] for r in runs.values() if r.get("training")})
    if len(tuned) > 1:  # files older than the field say nothing and merge with either
        raise SystemExit(f"error: the runs were fine-tuned on {' and '.join(tuned)}; merge like with like")
    return list(runs.values()), options, sources, repeated


def _cells(paths, unrecorded="unrecorded"):
    """Runs of files of any set-ups by cell: {(model, setting, fine-tuned on, flowchart, target): {criterion: {seed:
    accuracy}}}, a run met twice counted once (the first), and the criteria in compare's order. A setting is the
    options that differ among the files, where not at compare's defaults; `unrecorded` stands for where runs older
    than the record were fine-tuned."""
    files = [(path, _load(path)) for path in paths]
    keys = sorted({k for _, d in files for k in d["options"] if k not in SPLIT + EXPORT_ONLY})
    at = COMPARE_DEFAULTS  # an option absent from a file is at its default
    opts = [{k: _value(dict(at, **d["options"]), k) for k in keys} for _, d in files]
    varying = [k for k in keys if len({json.dumps(o[k]) for o in opts}) > 1]
    cells, criteria = {}, {}
    for (_, data), o in zip(files, opts):
        shown = [f"{k}={o[k]}" for k in varying if k != "model" and o[k] != _value(at, k)]
        for r in data["runs"]:  # a labelled criterion (singe:ranking=cost) is the criterion in another setting
            name, *pairs = r["criterion"].split(":")
            key = (str(o["model"]), " ".join(shown + pairs) or "compare's defaults", r.get("training") or unrecorded,
                   r["flowchart"], f"{reduction(r):g}x")
            cells.setdefault(key, {}).setdefault(name, {}).setdefault(r["seed"], r["accuracy"])
            criteria[name] = None
    names = [c for c in compare.CRITERIA if c in criteria] + sorted(c for c in criteria if c not in compare.CRITERIA)
    return cells, names


HEAD = "| model | setting | fine-tuned on | flowchart | target | "


def coverage(paths, unrecorded="unrecorded"):
    """Which settings, flowcharts and targets each criterion has been run at, and with how many seeds, over
    files of any set-ups."""
    cells, names = _cells(paths, unrecorded)
    lines = [HEAD + " | ".join(names) + " |", "|---|---|---|---|---:|" + "---:|" * len(names)]
    for key in sorted(cells):
        cells_of = [str(len(cells[key][c])) if c in cells[key] else "" for c in names]
        lines.append("| " + " | ".join(key) + " | " + " | ".join(cells_of) + " |")
    return "\n".join(lines)


def _mean(accs):
    values = [a for a in accs.values() if a is not None]
    return sum(values) / len(values) if values else None


def standing(paths, name, unrecorded="unrecorded"):
    """Where criterion `name` stands in every cell (see _cells) that has it and another criterion: its mean
    accuracy, its rank among the criteria there, the best other one, the gap in points (100 x accuracy), on how
    many seeds the two share it is ahead of that one, and random's mean where random ran."""
    cells, _ = _cells(paths, unrecorded)
    lines = [HEAD + f"{name} (seeds) | rank | best other | gap, points | ahead on seeds | random |",
             "|---|---|---|---|---:|---:|---:|---|---:|---:|---:|"]
    for key in sorted(cells):
        means = {c: m for c, a in cells[key].items() if (m := _mean(a)) is not None}
        if name not in means or len(means) < 2:
            continue
        others = sorted((c for c in means if c != name), key=lambda c: -means[c])
        best, own = others[0], cells[key][name]
        shared = [s for s in own if s in cells[key][best] and None not in (own[s], cells[key][best][s])]
        ahead = sum(own[s] > cells[key][best][s] for s in shared)
        rank = 1 + sum(means[c] > means[name] for c in others)
        rand = f"{means['random']:.4f}" if "random" in means and name != "random" else ""
        lines.append("| " + " | ".join(key) + f" | {means[name]:.4f} ({len(own)}) | {rank} of {len(means)} | "
                     f"{best} {means[best]:.4f} | {100 * (means[name] - means[best]):+.2f} | {ahead}/{len(shared)} | "
                     f"{rand} |")
    return "\n".join(lines)


def by_seed(rows):
    seeds = sorted({r["seed"] for r in rows})
    lines = ["| flowchart | target | criterion | " + " | ".join(f"seed {s}" for s in seeds) + " | params (mean) |",
             "|---|---:|---|" + "---:|" * (len(seeds) + 1)]
    keys = dict.fromkeys((r["flowchart"], r["macs_reduction"], r["criterion"]) for r in rows)
    for f, x, c in sorted(keys, key=lambda k: (k[0], k[1], k[2])):
        rs = {r["seed"]: r for r in rows if (r["flowchart"], r["macs_reduction"], r["criterion"]) == (f, x, c)}
        accs = [f"{rs[s]['accuracy']:.4f}" if s in rs and rs[s]["accuracy"] is not None else "" for s in seeds]
        params = sum(r["params"] for r in rs.values()) / len(rs)
        lines.append(f"| {f} | {x:g}x | {c} | " + " | ".join(accs) + f" | {params:,.0f} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", help="compare.json files or compare folders (finished or cut short)")
    ap.add_argument("--out", help="OUT.json and OUT.md are written")
    ap.add_argument("--coverage", action="store_true",
                    help="print which settings each criterion was run at, with how many seeds (files of any set-ups)")
    ap.add_argument("--standing", metavar="CRITERION",
                    help="print where CRITERION stands in every setting, flowchart and target (files of any set-ups): "
                         "its rank, the best other criterion and the gap")
    ap.add_argument("--unrecorded-as", default="unrecorded", metavar="WHERE",
                    help="with --coverage or --standing: where runs fine-tuned before compare recorded it ran (e.g. "
                         "'cpu fp32'), so that they share cells with later runs of the same setting")
    args = ap.parse_args(argv)
    if args.coverage:
        print(coverage(args.files, args.unrecorded_as))
        return 0
    if args.standing:
        print(standing(args.files, args.standing, args.unrecorded_as))
        return 0
    if not args.out:
        ap.error("--out is required to merge")
    rows, options, sources, repeated = merge(args.files)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"options": options, "sources": sources, "runs": rows}, indent=1))
    note = f"Merged from {len(sources)} files" + (f"; {repeated} repeated runs kept once" if repeated else "") + "."
    out.with_suffix(".md").write_text(markdown(rows, options) + "\n" + note + "\n\n## By seed\n\n" + by_seed(rows) + "\n")
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
