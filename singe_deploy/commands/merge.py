"""singe-deploy report merge: reports and latency files from several devices in one table and one chart.

    singe-deploy report merge jetson.json laptop.json OUT/report.json --out fleet.md   # and fleet.png

One row per model x device x backend x batch size: dense and pruned median, p90 and throughput, the
speedup of pruned over dense where both were measured, the MACs ratio where a report gives it, and the
files the numbers come from. Where two files measured the same row, the newer measurement wins (by its
measured_at time; without one, the file named later), and the notes say which one was replaced.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import UserError
from ..files import staged

NA = "–"


def add_arguments(ap):
    ap.add_argument("files", nargs="+", metavar="FILE", help="report.json files (compress) and latency files (bench)")
    ap.add_argument("--out", required=True, metavar="FILE.md", help="the Markdown table; the chart goes beside it "
                    "as FILE.png")


def read(path):
    """(kind, data) of one input: 'report' or 'latency', validated against its schema."""
    from .. import schemas

    p = Path(path)
    if not p.is_file():
        raise UserError(f"{path} does not exist; pass report.json or latency files")
    try:
        data = json.loads(p.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e.__class__.__name__}); pass a report.json or a latency "
                        "file") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a singe-deploy report or latency file (top level is not an object)")
    kind = "latency" if data.get("kind") == "latency" else "report" if "pruned" in data and "dense" in data else None
    if kind is None:
        raise UserError(f"{path} is neither a singe-deploy report nor a latency file; pass report.json or the "
                        "output of singe-deploy bench --out")
    if schemas.available():
        found = schemas.errors(data, kind)
        if found:
            raise UserError(f"{path} is a {kind} file that breaks its schema at {found[0]}; regenerate it")
    return kind, data


def device_of(kind, data):
    """The device block of a latency file, or of a report (older reports: from their environment)."""
    if kind == "latency":
        return data["device"]
    env = data["environment"]
    if env.get("device"):
        return env["device"]
    gpus = [{"name": env["gpu"]}] if env.get("gpu") else []
    return {"name": env.get("hostname") or env.get("platform"), "cpu": env.get("machine", ""), "gpus": gpus}


def backend_label(e):
    parts = [e["backend"]]
    if e.get("provider") and e["provider"] not in ("cpu", "cuda"):
        parts.append(f"{e['provider']} EP")
    parts.append(e["device"])
    if e.get("cuda_graph") or "graph" in str(e.get("timer", "")).lower() and "replay" in str(e.get("timer", "")):
        parts.append("graph")
    if e["device"] == "cpu" and e.get("threads"):
        parts.append(f"{e['threads']} threads")
    return " ".join(parts)


def collect(files):
    """rows: {(model, device, backend, batch): {variant: entry}}, MACs ratio per model, sources, notes."""
    from ..measure.device import label

    rows, macs, sources, notes = {}, {}, [], []
    for number, f in enumerate(files, 1):
        kind, data = read(f)
        dev = label(device_of(kind, data))
        if kind == "report":
            model = data["model"]["spec"]
            if data["pruned"]["macs"]:
                macs[model] = data["dense"]["macs"] / data["pruned"]["macs"]
        sources.append((f, kind, dev, len(data["latency"])))
        for e in data["latency"]:
            name = e.get("model") or data.get("model", {}).get("spec") or "?"
            key = (name, dev, backend_label(e), e["batch_size"])
            slot = rows.setdefault(key, {})
            e = dict(e, source=number)
            old = slot.get(e["variant"])
            if old is not None:
                newer = e.get("measured_at", "") >= old.get("measured_at", "")
                other = files[old["source"] - 1]
                kept, lost = (f, other) if newer else (other, f)
                notes.append(f"{e['variant']} {name} on {dev}, {key[2]}, batch {key[3]}: measured in {kept} and in "
                             f"{lost}; the table shows {kept}'s{' (newer)' if 'measured_at' in e else ''}")
                if not newer:
                    continue
            slot[e["variant"]] = e
    if not rows:
        raise UserError("the files hold no latency entries; run singe-deploy bench, or compress with export on")
    return rows, macs, sources, notes


def _ms(e, key):
    return f"{e[key]:.3f}" if e else NA


def _sources(*entries):
    return ", ".join(f"[{n}]" for n in sorted({e["source"] for e in entries if e}))


def markdown(rows, macs, sources, notes):
    out = ["# Latency across devices", "",
           "Median and p90 per call in ms, throughput in samples/s; speedup = dense median / pruned median; MACs "
           "ratio = dense MACs / pruned MACs (per sample, from the compress report); from = the numbered sources "
           "below.", "",
           "| model | device | backend | batch | dense median | dense p90 | dense /s | pruned median | pruned p90 | "
           "pruned /s | speedup | MACs ratio | from |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for key in sorted(rows, key=lambda k: (k[0], k[1], k[2], k[3])):
        d, p = rows[key].get("dense"), rows[key].get("pruned")
        speed = f"{d['median_ms'] / p['median_ms']:.2f}x" if d and p else NA
        ratio = f"{macs[key[0]]:.2f}x" if key[0] in macs else NA
        out.append(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {_ms(d, 'median_ms')} | {_ms(d, 'p90_ms')} | "
                   f"{d['throughput_per_s']:.1f} | " if d else
                   f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {NA} | {NA} | {NA} | ")
        out[-1] += (f"{_ms(p, 'median_ms')} | {_ms(p, 'p90_ms')} | {p['throughput_per_s']:.1f} | " if p else
                    f"{NA} | {NA} | {NA} | ") + f"{speed} | {ratio} | {_sources(d, p)} |"
    out += ["", "Sources:", ""] + [f"{i}. `{f}`: {kind}, {dev}, {n} latency entries"
                                   for i, (f, kind, dev, n) in enumerate(sources, 1)]
    if notes:
        out += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


def chart(rows, path):
    """Grouped horizontal bars: dense and pruned median latency per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted(rows, key=lambda k: (k[0], k[1], k[2], k[3]))
    labels = [f"{k[0]} | {k[1]} | {k[2]} | b{k[3]}" for k in keys]
    width = 6 + 0.07 * max(len(label) for label in labels)
    fig, ax = plt.subplots(figsize=(width, 1.2 + 0.45 * len(keys)))
    for i, (variant, color) in enumerate((("dense", "#8c8c8c"), ("pruned", "#1f77b4"))):
        values = [rows[k][variant]["median_ms"] if variant in rows[k] else 0 for k in keys]
        ax.barh([j + (0.2 if i == 0 else -0.2) for j in range(len(keys))], values, height=0.4, color=color,
                label=variant)
    ax.set_yticks(range(len(keys)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("median latency per call (ms)")
    medians = [e["median_ms"] for r in rows.values() for e in r.values()]
    if max(medians) / min(medians) > 100:
        ax.set_xscale("log")
    ax.legend()
    ax.set_title("median latency, dense vs pruned")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args):
    out = Path(args.out)
    if out.suffix.lower() != ".md":
        raise UserError(f"--out {args.out} must end in .md (the chart is written beside it as .png)")
    if not out.parent.is_dir():
        raise UserError(f"cannot write {out}: folder {out.parent} does not exist")
    rows, macs, sources, notes = collect(args.files)
    png = out.with_suffix(".png")
    text = markdown(rows, macs, sources, notes)
    tmp_md = staged(out, lambda t: Path(t).write_text(text))
    try:
        tmp_png = staged(png, lambda t: chart(rows, t))
    except BaseException:
        Path(tmp_md).unlink(missing_ok=True)
        raise
    os.replace(tmp_md, out)
    os.replace(tmp_png, png)
    print(text, end="")
    print(f"wrote {out} and {png}")
    return 0
