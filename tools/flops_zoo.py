"""Count the torchvision classification zoo and compare with torchvision's published figures.

For every model (and every resolution its weights use): singe-deploy's MACs against `meta["_ops"]`
(torchvision's "GFLOPS" are MACs, given to 3 decimals) and params against `meta["num_params"]`.
--onnx also exports each model and counts the graph; --others runs fvcore, thop, ptflops (both
backends), torch-pruning's counter and torch's FlopCounterMode (on the meta device and on CPU
tensors under no_grad) where installed.

    python tools/flops_zoo.py --out docs/research/zoo          # all models, ours vs torchvision (about 1 min)
    python tools/flops_zoo.py --onnx --others --models resnet50,vit_b_16 --out /tmp/zoo

Writes OUT.json and OUT.md; exit 1 when a model misses torchvision's figure (0.5%, or the published
rounding) or the ONNX graph disagrees.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
import warnings
from pathlib import Path

import torch
import torchvision.models as tvm

from singe_deploy.errors import CheckFailed, UserError
from singe_deploy.measure.flops import count, cross_check

TOLERANCE = 0.005


def build(name, size, device):
    kwargs = {}
    if name in ("googlenet", "inception_v3"):  # as torchvision builds them for its weights
        kwargs.update(aux_logits=name == "inception_v3", init_weights=False)
    if name.startswith("vit_"):
        kwargs["image_size"] = size
    with torch.device(device), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tvm.get_model(name, **kwargs).eval()


def entries(names, all_weights):
    """(model, weights, resolution) for each distinct resolution the model's weights use."""
    for name in names:
        enum = tvm.get_model_weights(name)
        seen = set()
        for w in (list(enum) if all_weights else [enum.DEFAULT]):
            size = w.transforms().crop_size[0]
            if size not in seen:
                seen.add(size)
                yield name, w, size


def build_fast(name, size):
    """On the meta device (shapes only, no compute) where the builder allows it, else on the CPU."""
    try:
        return build(name, size, "meta"), "meta"
    except (NotImplementedError, RuntimeError):  # builders that compute with real tensors (regnet)
        return build(name, size, "cpu"), "cpu"


def ours(name, size):
    model, device = build_fast(name, size)
    return count(model, (1, 3, size, size)), device


def others(name, size):
    """MACs from other counters, None where one fails (the reason in a second dict)."""
    results, errors = {}, {}
    shape = (1, 3, size, size)

    def attempt(key, fn):
        sink = io.StringIO()
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                warnings.simplefilter("ignore")
                results[key] = int(fn())
        except Exception as e:  # a counter that cannot handle the model is a finding, not a crash
            results[key], errors[key] = None, f"{e.__class__.__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}"

    model, device = build_fast(name, size)
    x = torch.zeros(shape, device=device)

    cpu = build(name, size, "cpu")

    def fcm(on_cpu):
        from torch.utils.flop_counter import FlopCounterMode

        with torch.no_grad(), FlopCounterMode(display=False) as f:
            (cpu(torch.zeros(shape)) if on_cpu else model(x))
        return f.get_total_flops() / 2

    def thop():
        import thop

        return thop.profile(model, inputs=(x,), verbose=False)[0]

    def ptflops(backend):
        import ptflops

        return ptflops.get_model_complexity_info(model, shape[1:], as_strings=False, backend=backend,
                                                 print_per_layer_stat=False,
                                                 input_constructor=lambda s: {"x": torch.zeros((1,) + s, device=device)})[0]

    def tp():
        import torch_pruning

        return torch_pruning.utils.count_ops_and_params(model, x)[0]

    def fvcore():
        from fvcore.nn import FlopCountAnalysis

        with torch.no_grad():
            fa = FlopCountAnalysis(cpu, torch.zeros(shape))
            fa.unsupported_ops_warnings(False)
            fa.uncalled_modules_warnings(False)
            return fa.total()

    attempt("FlopCounterMode", lambda: fcm(False))
    attempt("FlopCounterMode_cpu", lambda: fcm(True))  # eval + no_grad on CPU: fused attention kernels
    attempt("fvcore", fvcore)
    attempt("thop", thop)
    attempt("ptflops", lambda: ptflops("pytorch"))
    attempt("ptflops_aten", lambda: ptflops("aten"))
    attempt("torch_pruning", tp)
    return results, errors


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", help="comma-separated names (default: the whole classification zoo)")
    ap.add_argument("--all-weights", action="store_true", help="every resolution any weights use, not just DEFAULT's")
    ap.add_argument("--onnx", action="store_true", help="export each model and count the ONNX graph too")
    ap.add_argument("--others", action="store_true", help="run fvcore, thop, ptflops, torch-pruning, FlopCounterMode")
    ap.add_argument("--out", default="flops_zoo", help="writes OUT.json and OUT.md")
    args = ap.parse_args(argv)
    names = args.models.split(",") if args.models else tvm.list_models(module=tvm)
    rows, failed = [], []
    for name, w, size in entries(names, args.all_weights):
        t = time.perf_counter()
        c, device = ours(name, size)
        pub = w.meta["_ops"]
        rel = c.macs / (pub * 1e9) - 1
        row = {"model": name, "weights": w.name, "resolution": size, "macs": c.macs, "params": c.params,
               "torchvision_gmacs": pub, "torchvision_params": w.meta["num_params"], "macs_rel_diff": rel,
               "macs_agree": abs(rel) <= TOLERANCE or round(c.macs / 1e9, 3) == round(pub, 3),
               "within": "0.5%" if abs(rel) <= TOLERANCE else "rounding" if round(c.macs / 1e9, 3) == round(pub, 3) else "no",
               "params_equal": c.params == w.meta["num_params"], "counted_on": device}
        if args.onnx:
            model = build(name, size, "cpu")
            try:
                check = cross_check(model, count(model, (1, 3, size, size)))
            except (CheckFailed, UserError) as e:  # an export that fails is a finding, not a crash
                check = {"macs": None, "agree": False, "params_agree": False, "params": None,
                         "params_expected": None, "layer_differences": [], "error": str(e)[:200]}
            row.update(onnx_error=check.get("error"), onnx_macs=check["macs"], onnx_agree=check["agree"], onnx_params_agree=check["params_agree"],
                       onnx_params=check["params"],
                       onnx_params_expected=check["params_expected"], onnx_layer_differences=check["layer_differences"])
        if args.others:
            row["others"], row["other_errors"] = others(name, size)
        row["seconds"] = round(time.perf_counter() - t, 2)
        ok = row["macs_agree"] and row["params_equal"] and row.get("onnx_agree", True)
        failed += [] if ok else [f"{name}@{size}"]
        rows.append(row)
        print(f"{name:24s} {size:4d} {c.macs / 1e9:10.4f} G (torchvision {pub:.3f}, {100 * rel:+.3f}%) "
              f"params {'=' if row['params_equal'] else '!='}"
              + (f" onnx {_g(check['macs'])} G {'ok' if check['agree'] else 'DIFFERS'}" if args.onnx else "")
              + f" {row['seconds']:.1f}s" + ("" if ok else "  <-- MISMATCH"), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "command": "python tools/flops_zoo.py " + " ".join(argv or sys.argv[1:])}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    out.with_suffix(".md").write_text(markdown(rows, meta))
    print(f"{len(rows) - len(failed)}/{len(rows)} agree; wrote {out}.json and {out}.md")
    if failed:
        print("mismatch: " + ", ".join(failed))
    return 1 if failed else 0


def _g(v):
    return "fails" if v is None else f"{v / 1e9:.4f}"


def markdown(rows, meta):
    other_keys = sorted({k for r in rows for k in r.get("others", {})})
    head = ["model", "res", "torchvision G", "singe-deploy G", "diff", "agrees", "params = torchvision"]
    if any("onnx_macs" in r for r in rows):
        head += ["ONNX graph G", "ONNX params as expected"]
    head += other_keys
    lines = [f"Produced by `{meta['command']}` (torch {meta['torch']}). MACs per sample, in G.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], str(r["resolution"]), f"{r['torchvision_gmacs']:.3f}", f"{r['macs'] / 1e9:.4f}",
                 f"{100 * r['macs_rel_diff']:+.3f}%", {"0.5%": "yes", "rounding": "yes, to the 3 published decimals"}.get(r["within"], "**no**"),
                 "yes" if r["params_equal"] else f"no ({r['params']:,})"]
        if "onnx_macs" in r:
            cells.append("export failed" if r["onnx_macs"] is None else
                         _g(r["onnx_macs"]) + ("" if r["onnx_agree"] else " (differs)"))
            cells.append("yes" if r["onnx_params_agree"] else "n/a" if r["onnx_params"] is None else
                         f"no ({r['onnx_params'] - r['onnx_params_expected']:+,})")
        cells += [_g(r.get("others", {}).get(k)) for k in other_keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
