"""Median speedups over dense across repeated `singe-deploy bench --interleave --out FILE` runs of the same files.

    python tools/speedup_table.py run1.json run2.json run3.json [--macs DIR=REPORT ...]

Prints a markdown table: one row per timed file, the median over the runs of each batch size's speedup, and the
runs' lowest and highest in brackets (the spread between runs, wider than one run's bootstrap interval).
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def table(paths):
    runs = [json.loads(Path(p).read_text()) for p in paths]
    rows, batches = {}, set()
    for data in runs:
        for e in data["latency"]:
            if "speedup" not in e:
                continue
            rows.setdefault(e["path"], {}).setdefault(e["batch_size"], []).append(e["speedup"]["speedup"])
            batches.add(e["batch_size"])
    batches = sorted(batches)
    lines = ["| file | " + " | ".join(f"speedup @ batch {b} (median of runs; lowest-highest)" for b in batches) + " |",
             "|---|" + "---:|" * len(batches)]
    for path, by_batch in rows.items():
        cells = []
        for b in batches:
            v = by_batch.get(b, [])
            cells.append(f"{statistics.median(v):.2f}x ({min(v):.2f}-{max(v):.2f})" if v else "")
        lines.append(f"| {path} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\n{len(runs)} runs; device: {runs[0]['device'].get('cpu', {})}"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    print(table(ap.parse_args().runs))
