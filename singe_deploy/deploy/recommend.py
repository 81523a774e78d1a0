"""Which deployable to ship: the fastest file whose accuracy, as its own runtime computes it on the whole validation
set, stays within the accuracy budget (points below dense), or within NEAR_FP32 points of the pruned fp32 file when
no budget is given.

A quantized file is a candidate only where it is measured at least MIN_GAIN faster than the pruned fp32 file of its
format: a lower precision that does not buy speed on the target costs accuracy for nothing (ModelOpt keeps a
quantized form on the same rule). Every file slower than pruned fp32 is marked so in its row.
"""
from __future__ import annotations

from .quantize import QUANTIZED

NEAR_FP32 = 0.5  # points below pruned fp32 a file may give up when no budget is given
MIN_GAIN = 1.02  # a quantized form must be at least 2% faster than pruned fp32 to be worth its accuracy


def reference_batch(rows):
    """The batch size the choice is made at: 1 where it was timed, else the smallest timed."""
    batches = sorted({int(b) for r in rows for b in r.get("latency_ms", {})})
    return 1 if 1 in batches else (batches[0] if batches else None)


def recommend(rows, max_drop=None, batch=None):
    """The deployable to ship among `rows` (report.json's deployables, marked in place with
    `slower_than_pruned_fp32`), as a dict for report.json's `recommended`; None when no file was timed.
    max_drop: the accuracy budget in points below dense (None: within NEAR_FP32 points of pruned fp32)."""
    batch = batch if batch is not None else reference_batch(rows)
    if batch is None:
        return None
    key = str(batch)

    def ms(r):
        return r.get("latency_ms", {}).get(key)

    fp32 = {r["format"]: r for r in rows if r["variant"] == "pruned" and r["precision"] not in QUANTIZED}
    for r in rows:
        ref = fp32.get(r["format"])
        if r is not ref and ref is not None and ms(r) is not None and ms(ref) is not None:
            r["slower_than_pruned_fp32"] = ms(r) > ms(ref)
    dense = next((r["accuracy"] for r in rows if r["variant"] == "dense" and r["accuracy"] is not None), None)
    base = next((r["accuracy"] for r in fp32.values() if r["accuracy"] is not None), None)
    if max_drop is not None and dense is not None:
        bar, rule = dense - max_drop / 100, f"within the {max_drop:g}-point budget below dense ({100 * dense:.2f}%)"
    elif base is not None:
        bar, rule = base - NEAR_FP32 / 100, f"within {NEAR_FP32:g} points of pruned fp32 ({100 * base:.2f}%)"
    else:
        bar, rule = None, "no accuracy measured (synthetic data), so no quantized file"
    chosen, rejected = [], []
    for r in rows:
        why = _rejected(r, ms(r), ms(fp32.get(r["format"], {})), bar)
        (rejected.append({"path": r["path"] or r["name"], "why": why}) if why else chosen.append(r))
    if not chosen:
        return None
    best = min(chosen, key=lambda r: (ms(r), r["precision"] in QUANTIZED))
    dense_ms = next((ms(r) for r in rows if r["variant"] == "dense" and ms(r) is not None), None)
    out = {"path": best["path"] or best["name"], "name": best["name"], "format": best["format"],
           "precision": best["precision"], "batch_size": batch, "latency_ms": ms(best), "accuracy": best["accuracy"],
           "rule": rule, "rejected": rejected}
    if dense_ms:
        out["speedup_over_dense"] = dense_ms / ms(best)
    if dense is not None and best["accuracy"] is not None:
        out["accuracy_drop_points"] = round(100 * (dense - best["accuracy"]), 4)
    out["why"] = f"the fastest of {len(chosen)} candidate{'s' if len(chosen) > 1 else ''} at batch {batch}; {rule}"
    return out


def _rejected(r, mine, fp32_ms, bar):
    """Why a row is not a candidate, or None when it is."""
    if mine is None:
        return "not timed at this batch size"
    quantized = r["precision"] in QUANTIZED
    if r["accuracy"] is None:
        if quantized:
            return "accuracy not measured"
    elif bar is not None and r["accuracy"] < bar - 1e-12:
        return f"accuracy {100 * r['accuracy']:.2f}% is below {100 * bar:.2f}%"
    if quantized and fp32_ms is not None and fp32_ms / mine < MIN_GAIN:
        return f"{fp32_ms / mine:.2f}x the pruned fp32 file's speed, under the {MIN_GAIN:g}x a lower precision must buy"
    return None


def says(rec, folder=None):
    """The console's last line: the file to ship (under `folder`), and why."""
    return "ship " + describe(rec, folder)


def describe(rec, folder=None):
    """The file, its precision, latency and accuracy, and why it was chosen."""
    acc = "" if rec["accuracy"] is None else f", {100 * rec['accuracy']:.2f}%"
    path = f"{folder}/{rec['path']}" if folder else rec["path"]
    return f"{path} ({rec['precision']}, {rec['latency_ms']:.3f} ms at batch {rec['batch_size']}{acc}): {rec['why']}"
