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
        lines += ["## Accuracy per step", "", "| step | MACs / dense | params | accuracy | channels removed | "
                  "score s | plan s | fine-tune s |", "|---:|---:|---:|---:|---:|---:|---:|---:|",
                  f"| dense | 1.000 | {d['params']:,} | {_acc(d['accuracy'])} | | | | |"]
        for s in steps:
            lines.append(f"| {s['step']} | {_pct(s['macs'], d['macs'])} | {s['params']:,} | {_acc(s['accuracy'])} | "
                         f"{s['removed_channels']} | {s['score_seconds']:.1f} | {s['plan_seconds']:.1f} | "
                         f"{s['finetune_seconds']:.1f} |")
        lines.append(f"| fine-tuned | {_pct(p['macs'], d['macs'])} | {p['params']:,} | {_acc(p['accuracy'])} "
                     f"| | | | |")
        lines.append("")
        if p.get("accuracy") is not None:
            lines += ["tradeoff.png plots these steps, and each deployable's accuracy against its measured latency.",
                      ""]
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


def plot_tradeoff(r, path):
    """tradeoff.png: accuracy after each pruning step against its MACs, with dense and the fine-tuned model marked;
    beside it, each deployable's accuracy against its measured latency, the file to ship marked. Written atomically;
    returns whether there was an accuracy to plot (none on synthetic data)."""
    steps = [s for s in r.get("steps", []) if s.get("accuracy") is not None]
    if r["pruned"].get("accuracy") is None or r["dense"].get("accuracy") is None:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in r.get("deployables", []) if row.get("accuracy") is not None and row.get("latency_ms")]
    fig, axes = plt.subplots(1, 2 if rows else 1, figsize=(10 if rows else 5.5, 4), squeeze=False)
    dense_macs, ax = r["dense"]["macs"], axes[0][0]
    ax.plot([1.0] + [s["macs"] / dense_macs for s in steps], [r["dense"]["accuracy"]] + [s["accuracy"] for s in steps],
            "-o", color="C0", label="after each step's fine-tuning")
    ax.plot([1.0], [r["dense"]["accuracy"]], "s", color="k", label="dense")
    ax.plot([r["pruned"]["macs"] / dense_macs], [r["pruned"]["accuracy"]], "*", color="C3", markersize=14,
            label="after the final fine-tuning")
    ax.invert_xaxis()
    ax.set(xlabel="MACs / dense", ylabel="accuracy", title="pruning steps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
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
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return True
