"""report.json (validated against the report schema) and report.md for people."""
from __future__ import annotations

import os
import platform
import sys

import torch

from . import __version__, schemas
from .deploy import recommend
from .files import write_atomic
from .measure.bench import says


def schema():
    return schemas.load("report")


def validate(report):
    """Raise CheckFailed naming the first field that breaks the schema."""
    return schemas.validate(report, "report")


def environment(threads=None):
    env = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
           "machine": platform.machine(), "cpu_count": os.cpu_count(), "threads": threads}
    for mod in ("torch_pruning", "onnx", "onnxruntime", "torchvision"):
        found = installed_version(mod)
        if found:
            env[mod] = found
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    from .measure.device import describe

    env["device"] = describe(threads=threads)
    if "tensorrt" in sys.modules:  # only when a trt target loaded it
        env["tensorrt"] = installed_version("tensorrt")
    return env


# distributions that install a module, first match wins (a module's own __version__ can lag its release)
DISTRIBUTIONS = {"torch_pruning": ("torch-pruning",), "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
                 "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu13")}


def installed_version(module):
    """The installed release of a module from package metadata; its __version__ where no metadata names it;
    None when it is not installed."""
    from importlib import metadata

    for dist in DISTRIBUTIONS.get(module, (module,)):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    try:
        return getattr(__import__(module), "__version__", "unknown")
    except ImportError:
        return None


def tool():
    return {"name": "singe-deploy", "version": __version__}


def _pct(a, b):
    return f"{a / b:.3f}" if b else "n/a"


def _acc(a):
    return "n/a" if a is None else f"{100 * a:.2f}%"


def _target_timing(t):
    """The latency target's own check (timed interleaved at the end of pruning), when there was one."""
    if not t or "dense_ms" not in t:
        return []
    line = (f"The latency target was checked during pruning on the latency table's timer: dense {t['dense_ms']:.3f} "
            f"ms, pruned {t['measured_ms']:.3f} ms, {t['achieved']:.2f}x (target {t['reduction']:g}x).")
    if t.get("budget_ms"):
        line += (f" The {t['budget_ms']:g} ms budget is held as that ratio to the dense model's {t['table_dense_ms']:.3f}"
                 f" ms when the table was timed, so that the machine's drift moves both alike: at this check the "
                 f"machine ran the dense model {_drift(t['dense_ms'] / t['table_dense_ms'])}, which makes the budget "
                 f"{t['budget_ms_at_check']:.3f} ms; in milliseconds the pruned model is "
                 f"{_drift(t['measured_ms'] / t['budget_ms'])} than {t['budget_ms']:g} ms.")
    return [line]


def _target(t):
    """'macs / 2' or 'latency <= 25 ms (1.55x of dense)'."""
    if t.get("budget_ms"):
        return f"{t['metric']} <= {t['budget_ms']:g} ms" + (f" ({t['reduction']:.3g}x of dense)" if t["reduction"] else "")
    if t["reduction"] is None:
        return "none (as far as --max-accuracy-drop allows)"
    return f"{t['metric']} / {t['reduction']:g}"


def _drift(ratio):
    """'4.2% slower' / '1.0% faster' for a ratio of times."""
    return f"{abs(ratio - 1) * 100:.1f}% {'slower' if ratio >= 1 else 'faster'}"


def _alignment(a):
    """' Channel counts kept to multiples of 16 (measured: ...).' for the report's first paragraph."""
    if not a:
        return ""
    text = f" Channel counts kept to multiples of {a['round_to']}"
    if a.get("scores"):
        scores = ", ".join(f"{k}: {v:.3f}" for k, v in a["scores"].items())
        return text + (f" (--round-to auto, measured on {a['key']['backend']}, {a['key']['device']}: time at each "
                       f"alignment's multiples / the line through all counts, {scores})."
                       if a.get("key") else " (--round-to auto).")
    return text + (f" ({a['why']})." if a.get("why") else f" ({a.get('source', 'option')}).")


def _threads(t):
    """' Latency timed with 1 thread (--threads auto: ...).' for the report's first paragraph."""
    if not t or not t.get("threads"):
        return ""
    n = t["threads"]
    text = f" Latency timed with {n} thread{'s' * (n > 1)}"
    if t.get("ms"):
        times = ", ".join(f"{c}: {ms:.3f} ms" for c, ms in zip(t["counts"], t["ms"]))
        return text + f" (--threads auto, the dense model at each count, {times})."
    return text + f" ({t.get('source', 'option')})."


def markdown(r):
    """A person's view of a compress report."""
    d, p = r["dense"], r["pruned"]
    lines = [f"# singe-deploy report: {r['model']['spec']}", "",
             f"Criterion **{r['criterion']['name']}** ({_opts(r['criterion'].get('options', {}))}), "
             f"target {_target(r['target'])}, "
             f"{'met' if r['target']['hit'] else 'MISSED'}; input {tuple(r['model']['input_shape'])}"
             + (f" ({r['model']['input_shape_from']})" if r["model"].get("input_shape_from") else "") + ", data "
             f"{r.get('data', {}).get('spec', 'n/a')}." + _alignment(r.get("alignment"))
             + _threads(r.get("threads")), "",
             "## Costs", "", "| | dense | pruned | pruned / dense |", "|---|---:|---:|---:|",
             f"| MACs | {d['macs']:,} | {p['macs']:,} | {_pct(p['macs'], d['macs'])} |",
             f"| params | {d['params']:,} | {p['params']:,} | {_pct(p['params'], d['params'])} |",
             f"| other ops | {d['other_ops']:,} | {p['other_ops']:,} | {_pct(p['other_ops'], d['other_ops'])} |",
             f"| accuracy | {_acc(d['accuracy'])} | {_acc(p['accuracy'])} | |", "",
             f"Counting convention: {r['convention']}", ""]
    if r.get("failed"):
        f = r["failed"]
        lines[2:2] = [f"**This run did not finish: the {f['stage']} stage failed** ({f['error']}). What it computed "
                      f"is below; to continue, {f['resume']}.", ""]
    failures = r.get("checks", {}).get("failures", [])
    lines += (["## Checks", ""] + [f"- FAILED: {x}" for x in failures] + [""]) if failures else \
        ["## Checks", "", "All checks passed.", ""]
    steps = r.get("steps", [])
    if steps:
        budget = r.get("accuracy_budget")
        held = budget.get("holdout_accuracy") or {} if budget else {}
        extra = " held-out accuracy |" if budget else ""
        lines += ["## Accuracy per step", "", "The trade-off curve: each step after its own fine-tuning, the latency "
                  "timed against the dense model's in the same run.", "",
                  "| step | MACs / dense | params | latency / dense | accuracy |" + extra + " channels removed | "
                  "score s | plan s | fine-tune s |", "|---:" * (9 + bool(budget)) + "|",
                  f"| dense | 1.000 | {d['params']:,} | 1.000 | {_acc(d['accuracy'])} |"
                  + (f" {_acc(held.get('dense'))} |" if budget else "") + " | | | |"]
        for s in steps:
            ms = step_latency(s)
            name = f"{s['step']}" + (" (rolled back)" if s.get("rolled_back") else "")
            lines.append(f"| {name} | {_pct(s['macs'], d['macs'])} | {s['params']:,} | "
                         f"{'' if ms is None else f'{ms[1] / ms[0]:.3f}'} | {_acc(s['accuracy'])} | "
                         + (f"{_acc(s.get('holdout_accuracy'))} | " if budget else "")
                         + f"{s['removed_channels']} | {s['score_seconds']:.1f} | {s['plan_seconds']:.1f} | "
                         f"{s['finetune_seconds']:.1f} |")
        lines.append(f"| fine-tuned | {_pct(p['macs'], d['macs'])} | {p['params']:,} | | {_acc(p['accuracy'])} |"
                     + (f" {_acc(held.get('pruned'))} |" if budget else "") + " | | | |")
        lines.append("")
        if budget:
            lines += _budget_lines(budget)
        if p.get("accuracy") is not None:
            lines += ["tradeoff.png plots these steps, and each deployable's accuracy against its measured latency.",
                      ""]
    if r.get("sweep"):
        lines += _sweep_lines(r["sweep"], d)
    if r.get("latency"):
        lines += ["## Latency", "", "| backend | device | variant | precision | batch | median ms | p90 ms | p99 ms | "
                  "mean ms | std ms | CV | throughput/s | speedup |",
                  "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for x in r["latency"]:
            speed = says(x["speedup"]) if x.get("speedup") else ""
            cv = f"{100 * _cv(x):.1f}%"
            lines.append(f"| {x['backend']} | {x['device']} | {x['variant']} | {x.get('precision', '')} | "
                         f"{x['batch_size']} | "
                         f"{x['median_ms']:.3f} | {x['p90_ms']:.3f} | {x['p99_ms']:.3f} | {x['mean_ms']:.3f} | "
                         f"{x['std_ms']:.3f} | {cv} | {x['throughput_per_s']:.1f} | {speed} |")
        lines += ["", (f"Beside the speedups: the pruned model has {d['macs'] / max(p['macs'], 1):.2f}x fewer MACs. "
                       f"Timer: {r['latency'][0].get('timer', 'host clock')}. Speedup = dense median / this median, "
                       "with its 95% interval (bootstrap over the timed rounds); an interval that holds 1.0 is no "
                       "measurable speedup. CV = std / mean of the timed calls: their spread, which the interval "
                       "already counts.")]
        lines += _target_timing(r.get("target", {}).get("latency")) + [""]
    if r.get("deployables"):
        batches = sorted({int(b) for row in r["deployables"] for b in row["latency_ms"]})
        lines += ["## Deployables", "", ("Each file as its runtime runs it: accuracy on the whole validation set, "
                                         "top-1 agreement with PyTorch (fp32), costs, size, median latency and "
                                         "speedup over dense."), "",
                  "| deployable | format | precision | accuracy | top-1 agreement | MACs | params | MB | "
                  + " | ".join(f"ms @ batch {b} | speedup @ {b}" for b in batches) + " |",
                  "|---|---|---|---:|---:|---:|---:|---:|" + "---:|---|" * len(batches)]
        for row in r["deployables"]:
            agree = "" if row["top1_agreement"] is None else f"{row['top1_agreement']:.4f}"
            size = "" if row["size_bytes"] is None else f"{row['size_bytes'] / 1e6:.2f}"
            ms = " | ".join((f"{row['latency_ms'][str(b)]:.3f}" if str(b) in row["latency_ms"] else "") + " | "
                            + (says(row["speedup"][str(b)]) if str(b) in row.get("speedup", {}) else "")
                            for b in batches)
            slower = " (slower than pruned fp32)" if row.get("slower_than_pruned_fp32") else ""
            lines.append(f"| {row['name']}{slower} | {row['format']} | {row['precision']} | {_acc(row['accuracy'])} "
                         f"| {agree} | {row['macs']:,} | {row['params']:,} | {size} | {ms} |")
        lines.append("")
        rec = r.get("recommended")
        if rec:
            lines += [f"**To ship**: {recommend.describe(rec)}.", ""]
            lines += [f"- not {x['path']}: {x['why']}" for x in rec["rejected"]] + ([""] if rec["rejected"] else [])
    if r.get("exports"):
        lines += ["## Exports", "", "| format | variant | file | reference | max abs diff | top-1 agreement | "
                  "MACs counted on the graph |", "|---|---|---|---|---:|---:|---:|"]
        for e in r["exports"]:
            q, g = e["parity"], e.get("graph_count")
            graph = f"{g['macs']:,} ({100 * g['macs_rel_diff']:+.3f}%)" if g else ""
            variant = e.get("variant", "") + (f" ({e['precision']})" if e.get("precision") else "")
            lines.append(f"| {e['format']} | {variant} | {e['path']} | {q['reference']} | "
                         f"{q['max_abs_diff']:.2e} | {q['top1_agreement']:.4f} | {graph} |")
        lines += ["", "The graph count is an independent check of the MACs above: Conv, ConvTranspose, Gemm and "
                  "MatMul read from the exported ONNX graph with shapes inferred (`singe-deploy flops FILE.onnx`).", ""]
    layers = r.get("layers", [])
    if layers:
        lines += ["## Channels per layer", "", "| layer | type | in (dense → pruned) | out (dense → pruned) | "
                  "MACs dense | MACs pruned |", "|---|---|---|---|---:|---:|"]
        for l in layers:
            lines.append(f"| {l['name']} | {l['type']} | {l['dense_in']} → {l['pruned_in']} | "
                         f"{l['dense_out']} → {l['pruned_out']} | {l['dense_macs']:,} | {l['pruned_macs']:,} |")
        lines.append("")
    return "\n".join(lines)


def _cv(x):
    return x.get("cv", x["std_ms"] / x["mean_ms"] if x["mean_ms"] else 0.0)


def _opts(o):
    return ", ".join(f"{k}={v}" for k, v in o.items()) or "defaults"


def layer_table(dense, pruned):
    """Per-layer channels and costs of conv/linear/norm layers, dense beside pruned."""
    after = {l.name: l for l in pruned.layers}
    rows = []
    for l in dense.layers:
        if l.in_channels is None or l.name not in after:
            continue
        q = after[l.name]
        rows.append({"name": l.name, "type": l.type, "dense_in": l.in_channels, "pruned_in": q.in_channels,
                     "dense_out": l.out_channels, "pruned_out": q.out_channels, "dense_macs": l.macs,
                     "pruned_macs": q.macs, "dense_params": l.params, "pruned_params": q.params})
    return rows


def step_latency(step):
    """(dense ms, ms) of a step as it was timed (a MACs or params run's step timer, or a latency target's own
    measurement, else its table's prediction), or None."""
    if step.get("latency_ms") is not None:
        return step["dense_latency_ms"], step["latency_ms"]
    ms = step.get("latency_measured_ms") or step.get("latency_predicted_ms")
    return None if ms is None else (step["dense"], ms)


def _sweep_lines(sweep, d):
    """report.md's table of a sweep's points."""
    lines = ["## Sweep", "", "One model per MACs reduction from one entwined run, each fine-tuned on its own; sweep.png "
             "draws them. Latency is each step's, timed against the dense model in the same run.", "",
             "| asked | MACs / dense | latency / dense | accuracy before fine-tuning | accuracy | on the front | "
             "file |", "|---:|---:|---:|---:|---:|---|---|"]
    for q in sweep["points"]:
        lat = f"{q['latency_ms'] / q['dense_latency_ms']:.3f}" if q.get("latency_ms") else ""
        lines.append(f"| {q['reduction']:g}x | {_pct(q['macs'], d['macs'])} | {lat} | "
                     f"{_acc(q['accuracy_before_finetune'])} | {_acc(q['accuracy'])} | "
                     f"{'yes' if q['reduction'] in sweep['front'] else 'no'} | {q['pruned_onnx'] or q['pruned_pt']} |")
    return lines + [""]


def _points(p):
    return f"{p:g} point{'' if p == 1 else 's'}"


def _budget_lines(b):
    """report.md's paragraph on an accuracy budget: where the steps stopped, and the two accuracies' drops."""
    held = b.get("holdout_accuracy") or {}
    drop = "not measured" if b["drop_points"] is None else f"{b['drop_points']:.2f} points"
    verdict = {True: "within the budget", False: "OVER the budget", None: "not measured yet"}[b["within"]]
    gap = (f" On the {b['holdout_samples']:,} held-out training samples the pruned model scored {_acc(held['pruned'])} "
           f"and the dense model {_acc(held['dense'])} (it was trained on them)." if held else "")
    won_back = (f", allowing {b['recovery_margin_points']:g} points that the final fine-tuning wins back"
                if b["recovery_margin_points"] else "")
    return [f"Accuracy budget: at most {_points(b['max_drop_points'])} below dense ({_acc(b['reference_accuracy'])}); "
            f"steps were judged on held-out training data{won_back}. {b['steps_beyond_floor']} step(s) kept beyond the "
            f"{'target' if b['floor'] else 'dense model'}; {b['stop'] or 'the run ended there'}. The evaluation set's "
            f"drop after the final fine-tuning: {drop}, {verdict}.{gap}", ""]


def plot_tradeoff(r, path):
    """tradeoff.png: accuracy after each pruning step against its measured latency (its MACs where steps were not
    timed), with dense, the fine-tuned model, a rolled-back step and the accuracy budget marked;
    beside it, each deployable's accuracy against its measured latency, the file to ship marked. Written atomically;
    returns whether there was an accuracy to plot (none on synthetic data)."""
    steps = [s for s in r.get("steps", []) if s.get("accuracy") is not None]
    if r["pruned"].get("accuracy") is None or r["dense"].get("accuracy") is None:
        return False
    plt = _pyplot()

    rows = [row for row in r.get("deployables", []) if row.get("accuracy") is not None and row.get("latency_ms")]
    fig, axes = plt.subplots(1, 2 if rows else 1, figsize=(10 if rows else 5.5, 4), squeeze=False)
    ax, dense_acc = axes[0][0], r["dense"]["accuracy"]
    timed = [step_latency(s) for s in steps]
    by_latency = bool(steps) and all(t is not None for t in timed)  # else by MACs
    xs = [t[1] / t[0] for t in timed] if by_latency else [s["macs"] / r["dense"]["macs"] for s in steps]
    kept = [(x, s["accuracy"]) for x, s in zip(xs, steps) if not s.get("rolled_back")]
    ax.plot([1.0] + [x for x, _ in kept], [dense_acc] + [a for _, a in kept], "-o", color="C0",
            label="test accuracy after each step's fine-tuning")
    budget = r.get("accuracy_budget")
    if budget:  # what the steps were judged by, against the budget line
        held = [(x, s["holdout_accuracy"]) for x, s in zip(xs, steps) if s.get("holdout_accuracy") is not None]
        ax.plot([x for x, _ in held], [a for _, a in held], "o", color="C1", markerfacecolor="none",
                label="held-out accuracy of each step (judged)")
        ax.axhline(dense_acc - budget["max_drop_points"] / 100, color="C2", linestyle="--", linewidth=1,
                   label=f"budget: {_points(budget['max_drop_points'])} below dense")
    rolled = [(x, s.get("holdout_accuracy", s["accuracy"])) for x, s in zip(xs, steps) if s.get("rolled_back")]
    if rolled:
        ax.plot([x for x, _ in rolled], [a for _, a in rolled], "x", color="C3", markersize=9, linestyle="none",
                label="rolled back (held-out over the budget)")
    ax.plot([1.0], [dense_acc], "s", color="k", label="dense")
    final_x = kept[-1][0] if kept else 1.0  # the final fine-tuning keeps the last kept step's shapes
    ax.plot([final_x], [r["pruned"]["accuracy"]], "*", color="C3", markersize=14, label="after the final fine-tuning")
    ax.invert_xaxis()
    ax.set(xlabel="measured latency / dense" if by_latency else "MACs / dense", ylabel="accuracy",
           title="pruning steps")
    _dress(ax)
    if rows:
        batch = recommend.reference_batch(rows)  # the batch the file to ship was chosen at
        ax = axes[0][1]
        ship = (r.get("recommended") or {}).get("name")
        for i, row in enumerate(rows):
            ms = row["latency_ms"].get(str(batch))
            if ms is None:
                continue
            marker = "*" if row["name"] == ship else ("s" if row["variant"] == "dense" else "o")
            ax.plot([ms], [row["accuracy"]], marker, color=f"C{i}", markersize=14 if marker == "*" else 7,
                    label=row["name"] + (" (to ship)" if row["name"] == ship else ""))
        ax.set(xlabel=f"measured latency at batch {batch}, ms", ylabel="accuracy", title="deployables")
        _dress(ax)
    return _save(plt, fig, path)


def plot_sweep(r, path):
    """sweep.png: each sweep point's accuracy after its own fine-tuning against its latency measured against the
    dense model's (MACs where untimed), the front joined, dense and the run's model marked; returns whether written."""
    sweep = r.get("sweep")
    if not sweep:
        return False
    plt = _pyplot()

    points = sweep["points"]
    timed = all(q.get("latency_ms") for q in points)

    def x(q):
        return q["latency_ms"] / q["dense_latency_ms"] if timed else q["macs"] / r["dense"]["macs"]

    fig, ax = plt.subplots(figsize=(5.5, 4))
    on_front = sorted((q for q in points if q["reduction"] in sweep["front"]), key=x)
    ax.plot([x(q) for q in on_front], [q["accuracy"] for q in on_front], "-", color="C0", alpha=0.5,
            label="front (no point both faster and more accurate)")
    for q in points:
        ax.plot([x(q)], [q["accuracy"]], "o", color="C0")
        got = r["dense"]["macs"] / q["macs"]
        ax.annotate(f"{got:.2f}x fewer MACs" + ("" if abs(got / q["reduction"] - 1) < 0.05 else
                                                f" (asked {q['reduction']:g}x)"),
                    (x(q), q["accuracy"]), textcoords="offset points", xytext=(-6, 4), ha="right", fontsize=7)
    ax.plot([1.0], [r["dense"]["accuracy"]], "s", color="k", label="dense")
    last = points[-1]
    ax.plot([x(last)], [last["accuracy"]], "*", color="C3", markersize=14, label="the run's pruned.pt")
    ax.invert_xaxis()
    ax.set(xlabel="measured latency / dense" if timed else "MACs / dense", ylabel="accuracy after fine-tuning",
           title="sweep: one model per reduction")
    _dress(ax)
    return _save(plt, fig, path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _dress(ax):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _save(plt, fig, path):
    """The figure written to `path` atomically, then closed; True."""
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return True
