"""singe-deploy check: hold a report, a latency file or an .onnx file to a budget; exit 1 on any miss.

    singe-deploy check --budget budget.yaml OUT/report.json
    singe-deploy check --budget budget.yaml OUT/pruned.onnx     # runs the export checks itself
    singe-deploy check --budget budget.yaml latency.json        # latency measured on a device

Budget keys (YAML): max_macs, max_params, min_accuracy, max_accuracy_drop, min_macs_reduction,
max_latency_ms, max_parity_abs_diff, min_top1_agreement, onnx_opset, max_size_mb. See docs/guide/ci.md for their forms.
min_accuracy and max_size_mb take a number (the pruned fp32 model) or one per precision ({fp32: 0.93, int8: 0.92}),
read from the report's deployables; a latency rule may name a precision.
On an .onnx file the checks are: the ONNX checker, an onnxruntime load and run (finite outputs),
MACs/params counted from the graph, parity of onnxruntime against the ONNX reference evaluator, and
latency measured with onnxruntime when the budget has max_latency_ms. A key the artifact cannot answer
(accuracy of an .onnx file) is a miss, not a pass.
"""
from __future__ import annotations

import difflib
import json
import math
from pathlib import Path

from ..config import accuracy_points, shipped
from ..deploy.quantize import PRECISIONS
from ..errors import CheckFailed, UserError, first_line

STATS = {"median": "median_ms", "p90": "p90_ms"}
RULE_KEYS = {"backend", "device", "batch_size", "stat", "ms", "variant", "provider", "precision"}
PER_PRECISION = {"min_accuracy": (0, 1, "a fraction (0.93 for 93%)"), "max_size_mb": (0, None, "megabytes")}
SCALARS = {  # key -> (lower bound, upper bound, what)
    "max_macs": (0, None, "MACs per sample"),
    "max_params": (0, None, "parameters"),
    "min_accuracy": (0, 1, "a fraction (0.93 for 93%)"),
    "max_accuracy_drop": (0, 1, "a fraction of accuracy (0.01 for one point)"),
    "min_macs_reduction": (1, None, "dense MACs / pruned MACs"),
    "min_top1_agreement": (0, 1, "a fraction"),
}
KEYS = list(SCALARS) + ["max_latency_ms", "max_parity_abs_diff", "onnx_opset", "max_size_mb"]


def add_arguments(ap):
    ap.add_argument("artifact", metavar="ARTIFACT", help="report.json (compress), a latency file (bench) or an .onnx")
    ap.add_argument("--budget", metavar="FILE", help="YAML budget (keys in docs/guide/ci.md), or the name of a "
                    f"shipped one ({', '.join(shipped('budgets'))})")
    ap.add_argument("--max-accuracy-drop", type=float, metavar="P",
                    help="report.json: at most P points (0-100) of accuracy below dense; with --budget it replaces "
                         "the file's max_accuracy_drop")
    ap.add_argument("--input-shape", metavar="1,C,H,W", help=".onnx only: when its H/W are not fixed")
    ap.add_argument("--parity-samples", type=int, default=8, metavar="N",
                    help=".onnx only: random samples for parity (default: 8)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")


# budget --------------------------------------------------------------------------------------------------

def _number(key, value, low, high, what, where):
    if isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise UserError(f"budget key '{key}' in {where} must be a number ({what}), got {value!r}")
    if value < 0:
        raise UserError(f"budget key '{key}' in {where} must not be negative, got {value!r}")
    if low is not None and value < low or high is not None and value > high:
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        raise UserError(f"budget key '{key}' in {where} must be {bounds} ({what}), got {value!r}")
    return value


def _latency_rules(value, where):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [{"ms": value}]
    if not isinstance(value, list) or not value:
        raise UserError(f"budget key 'max_latency_ms' in {where} must be a number of ms or a list of rules like "
                        "{backend: onnxruntime, device: cpu, batch_size: 1, stat: median, ms: 5}")
    rules = []
    for i, rule in enumerate(value):
        if not isinstance(rule, dict):
            raise UserError(f"max_latency_ms rule {i + 1} in {where} must be a mapping with 'ms', got {rule!r}")
        unknown = set(rule) - RULE_KEYS
        if unknown:
            raise UserError(f"max_latency_ms rule {i + 1} in {where} has unknown key(s) {', '.join(sorted(unknown))};"
                            f" use {', '.join(sorted(RULE_KEYS))}")
        if "ms" not in rule:
            raise UserError(f"max_latency_ms rule {i + 1} in {where} needs 'ms' (the limit in milliseconds)")
        ms = _number("max_latency_ms", rule["ms"], None, None, "milliseconds", where)
        if ms == 0:
            raise UserError(f"max_latency_ms rule {i + 1} in {where}: 'ms' must be > 0")
        stat = rule.get("stat", "median")
        if stat not in STATS:
            raise UserError(f"max_latency_ms rule {i + 1} in {where}: stat must be median or p90, got {stat!r}")
        variant = rule.get("variant", "pruned")
        if variant not in ("dense", "pruned"):
            raise UserError(f"max_latency_ms rule {i + 1} in {where}: variant must be dense or pruned")
        batch = rule.get("batch_size", 1)
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise UserError(f"max_latency_ms rule {i + 1} in {where}: batch_size must be a positive integer")
        if "precision" in rule and rule["precision"] not in PRECISIONS:
            raise UserError(f"max_latency_ms rule {i + 1} in {where}: precision must be one of {', '.join(PRECISIONS)}")
        for k in ("backend", "device", "provider"):
            if k in rule and not isinstance(rule[k], str):
                raise UserError(f"max_latency_ms rule {i + 1} in {where}: {k} must be a name, got {rule[k]!r}")
        rules.append(dict(rule, ms=ms, stat=stat, variant=variant, batch_size=batch))
    return rules


def load_budget(path):
    """The budget in a YAML file, validated: unknown keys, wrong types and negative values are bad input."""
    from ..config import read_yaml

    raw = read_yaml(path, "budget file", "budget keys", folder="budgets")
    if not raw:
        raise UserError(f"budget file {path} is empty; give at least one of {', '.join(KEYS)}")
    budget = {}
    for key, value in raw.items():
        if key not in KEYS:
            close = difflib.get_close_matches(str(key), KEYS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"unknown budget key '{key}' in {path}{hint}; use {', '.join(KEYS)}")
        if key in PER_PRECISION and isinstance(value, dict):
            bad = [k for k in value if k not in PRECISIONS]
            if bad:
                raise UserError(f"budget key '{key}' in {path}: unknown precision '{bad[0]}'; use "
                                f"{', '.join(PRECISIONS)}")
            budget[key] = {k: _number(f"{key}.{k}", v, *PER_PRECISION[key], path) for k, v in value.items()}
        elif key in SCALARS or key in PER_PRECISION:
            budget[key] = _number(key, value, *(SCALARS.get(key) or PER_PRECISION[key]), path)
        elif key == "max_latency_ms":
            budget[key] = _latency_rules(value, path)
        elif key == "max_parity_abs_diff":
            if isinstance(value, dict):
                budget[key] = {str(k): _number(f"{key}.{k}", v, None, None, "a max |diff|", path)
                               for k, v in value.items()}
            else:
                budget[key] = {"*": _number(key, value, None, None, "a max |diff|", path)}
        else:  # onnx_opset
            spec = value if isinstance(value, dict) else {"min": value, "max": value}
            if set(spec) - {"min", "max"} or any(isinstance(v, bool) or not isinstance(v, int) or v < 1
                                                 for v in spec.values()):
                raise UserError(f"budget key 'onnx_opset' in {path} must be an opset number like 18 or "
                                "{min: 17, max: 18}")
            budget[key] = spec
    return budget


# what the artifact says ------------------------------------------------------------------------------------

def facts_from_report(kind, data):
    """Everything a budget can ask, read from a report or a latency file (None = not recorded)."""
    if kind == "latency":
        return {"macs": None, "params": None, "accuracy": None, "dense_accuracy": None, "dense_macs": None,
                "exports": [], "latency": data["latency"], "deployables": [], "what": "a latency file"}
    return {"macs": data["pruned"]["macs"], "params": data["pruned"]["params"],
            "accuracy": data["pruned"]["accuracy"], "dense_accuracy": data["dense"]["accuracy"],
            "dense_macs": data["dense"]["macs"],
            "exports": [dict(e, variant=e.get("variant", "pruned")) for e in data["exports"]],
            "latency": data["latency"], "deployables": data.get("deployables", []), "what": "this report"}


def facts_from_onnx(path, budget, args):
    """Run the export checks on an .onnx file; returns (facts, problems found while checking)."""
    from ..measure import onnx_flops
    from .bench import input_shape as shape_for

    try:
        import onnx
    except ImportError:
        raise UserError("checking an .onnx file needs the onnx package; pip install onnx") from None
    try:
        model = onnx.load(str(path))
    except Exception as e:  # noqa: BLE001 - protobuf raises several types for a corrupt file
        raise UserError(f"{path} is not a readable ONNX file ({first_line(e, 100)}); pass a valid .onnx") from None
    problems = []
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # noqa: BLE001 - ValidationError and shape-inference errors
        problems.append(("onnx checker", "passes", first_line(e, 120)))
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None)
    from ..measure import bench

    try:
        runner = bench.OnnxRuntime(path, None, "cpu")
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001
        problems.append(("onnxruntime load", "loads", first_line(e, 120)))
        return {"macs": None, "params": None, "opset": opset, "accuracy": None, "dense_accuracy": None,
                "dense_macs": None, "exports": [], "latency": [], "deployables": [], "what": "an .onnx file"}, problems
    batches = sorted({r["batch_size"] for r in budget.get("max_latency_ms", [])} | {1})
    shape = shape_for(runner.input_shape, args.input_shape, [1], path)
    import numpy as np

    x = np.random.default_rng(0).standard_normal([max(2, args.parity_samples)] + shape[1:]).astype(runner.dtype)
    declared = runner.input_shape[0]
    fixed = declared if isinstance(declared, int) and declared > 0 else None  # a graph with a fixed batch
    if fixed:
        x = x[:fixed]
    try:
        out = runner.infer(x)
        if not np.isfinite(out).all():
            problems.append(("onnxruntime run", "finite outputs", "NaN or inf in the outputs on random inputs"))
    except Exception as e:  # noqa: BLE001
        problems.append(("onnxruntime run", "runs", first_line(e, 120)))
        out = None
    count = onnx_flops.count(path, shape)
    exports = []
    if out is not None and ("max_parity_abs_diff" in budget or "min_top1_agreement" in budget):
        exports.append({"format": "onnx", "variant": "pruned", "path": Path(path).name,
                        "parity": _reference_parity(model, runner, x, out)})
    latency = []  # onnxruntime on this CPU; rules for other backends find no entry and miss
    if "max_latency_ms" in budget:
        for b in batches:
            if fixed and b != fixed:
                continue
            latency.append(dict(bench.measure(runner, shape, b, min_iters=20, min_seconds=0.5), variant="pruned",
                                provider="cpu"))
    from ..files import onnx_metadata

    precision = onnx_metadata(path).get("precision", "fp32")
    deployables = [{"variant": "pruned", "precision": precision, "size_bytes": Path(path).stat().st_size,
                    "accuracy": None}]
    return {"macs": count.macs, "params": count.params, "opset": opset, "accuracy": None, "dense_accuracy": None,
            "dense_macs": None, "exports": exports, "latency": [dict(e, precision=precision) for e in latency],
            "deployables": deployables, "what": "an .onnx file"}, problems


def _reference_parity(model, runner, x, out):
    """onnxruntime against the ONNX reference evaluator (onnx.reference) on the same random inputs."""
    import numpy as np
    from onnx.reference import ReferenceEvaluator

    from ..measure.agreement import top1_agreement

    ref = ReferenceEvaluator(model)
    expected = np.asarray(ref.run(None, {runner.input: x})[0])
    diff = float(np.abs(expected.astype(np.float64) - out).max())
    top1 = float(top1_agreement(expected, out).mean())
    return {"max_abs_diff": diff, "top1_agreement": top1, "reference": "onnx.reference", "samples": len(x)}


# the checks ---------------------------------------------------------------------------------------------

def evaluate(budget, facts):
    """One row per check: (check, budget, actual, ok). ok is False for a miss and for a missing figure."""
    rows = []

    def row(name, limit, actual, ok):
        rows.append({"check": name, "budget": limit, "actual": actual, "ok": bool(ok)})

    missing = f"not recorded in {facts['what']}"
    for key, fact, cmp in (("max_macs", "macs", "<="), ("max_params", "params", "<="),
                           ("min_accuracy", "accuracy", ">=")):
        if key in budget and not isinstance(budget[key], dict):  # a mapping per precision: below
            v = facts[fact]
            row(key, f"{cmp} {budget[key]:,}" if fact != "accuracy" else f">= {budget[key]:.4f}",
                missing if v is None else (f"{v:,}" if fact != "accuracy" else f"{v:.4f}"),
                v is not None and (v <= budget[key] if cmp == "<=" else v >= budget[key]))
    if "max_accuracy_drop" in budget:
        a, d = facts["accuracy"], facts["dense_accuracy"]
        drop = None if a is None or d is None else d - a
        row("max_accuracy_drop", f"<= {budget['max_accuracy_drop']:.4f}",
            missing if drop is None else f"{drop:.4f}", drop is not None and drop <= budget["max_accuracy_drop"])
    if "min_macs_reduction" in budget:
        r = facts["dense_macs"] / facts["macs"] if facts["dense_macs"] and facts["macs"] else None
        row("min_macs_reduction", f">= {budget['min_macs_reduction']:g}x", missing if r is None else f"{r:.3f}x",
            r is not None and r >= budget["min_macs_reduction"])
    for fmt, limit in budget.get("max_parity_abs_diff", {}).items():
        exps = [e for e in facts["exports"] if fmt in ("*", e["format"])]
        worst = max((e["parity"]["max_abs_diff"] for e in exps), default=None)
        name = "max_parity_abs_diff" + ("" if fmt == "*" else f" ({fmt})")
        row(name, f"<= {limit:g}", f"no {'' if fmt == '*' else fmt + ' '}export with parity in {facts['what']}"
            if worst is None else f"{worst:.3g}", worst is not None and worst <= limit)
    if "min_top1_agreement" in budget:
        worst = min((e["parity"]["top1_agreement"] for e in facts["exports"]), default=None)
        row("min_top1_agreement", f">= {budget['min_top1_agreement']:g}",
            missing if worst is None else f"{worst:.4f}", worst is not None and worst >= budget["min_top1_agreement"])
    if "onnx_opset" in budget:
        spec = budget["onnx_opset"]
        opsets = [facts["opset"]] if facts.get("opset") else [e["opset"] for e in facts["exports"]
                                                             if e["format"] == "onnx" and e.get("opset")]
        low, high = spec.get("min"), spec.get("max")
        want = f"{low}" if low == high else f"{low or 1}..{high or 'any'}"
        ok = bool(opsets) and all(spec.get("min", 0) <= o <= spec.get("max", 10**9) for o in opsets)
        row("onnx_opset", want, ", ".join(map(str, sorted(set(opsets)))) or missing, ok)
    for key, limits in budget.items():
        if key not in PER_PRECISION or (key == "min_accuracy" and not isinstance(limits, dict)):
            continue
        for precision, limit in (limits if isinstance(limits, dict) else {"fp32": limits}).items():
            found = [d for d in facts.get("deployables", []) if d.get("variant") == "pruned"
                     and d.get("precision") == precision]
            if key == "min_accuracy":
                v = found[0]["accuracy"] if found else None
                row(f"min_accuracy ({precision})", f">= {limit:.4f}", f"{v:.4f}" if v is not None else
                    f"no pruned {precision} accuracy in {facts['what']}", v is not None and v >= limit)
            else:
                v = found[0]["size_bytes"] / 1e6 if found and found[0].get("size_bytes") else None
                row(f"max_size_mb ({precision})", f"<= {limit:g} MB", f"{v:.3f} MB" if v is not None else
                    f"no pruned {precision} file in {facts['what']}", v is not None and v <= limit)
    for rule in budget.get("max_latency_ms", []):
        row(*_latency_row(rule, facts))
    return rows


def _latency_row(rule, facts):
    match = [e for e in facts["latency"] if e["variant"] == rule["variant"] and e["batch_size"] == rule["batch_size"]
             and all(k not in rule or str(e.get(k, "")) == rule[k] for k in ("backend", "device", "provider"))
             and (e.get("precision", "fp32") == rule["precision"] if "precision" in rule
                  else not e.get("quantized"))]  # no precision named: the model as exported, not its int8/fp16 files
    where = ", ".join(f"{rule[k]}" for k in ("backend", "provider", "device", "precision") if k in rule)
    name = f"max_latency_ms ({rule['variant']}, {where + ', ' if where else ''}batch {rule['batch_size']}, " \
           f"{rule['stat']})"
    if not match:
        return name, f"<= {rule['ms']:g} ms", f"no such latency entry in {facts['what']}", False
    worst = max(e[STATS[rule["stat"]]] for e in match)
    return name, f"<= {rule['ms']:g} ms", f"{worst:.3f} ms", worst <= rule["ms"]


def check(artifact, budget, args):
    """Rows for one artifact: problems found by the export checks first, then the budget."""
    p = Path(artifact)
    if not p.exists():
        raise UserError(f"{artifact} does not exist; pass a report.json, a latency file or an .onnx file")
    if p.suffix.lower() == ".onnx":
        facts, problems = facts_from_onnx(p, budget, args)
        rows = [{"check": c, "budget": b, "actual": a, "ok": False} for c, b, a in problems]
        if facts["macs"] is not None:
            rows.append({"check": "graph MACs/params", "budget": "counted", "ok": True,
                         "actual": f"{facts['macs']:,} MACs, {facts['params']:,} params"})
        return rows + evaluate(budget, facts)
    from .merge import read

    kind, data = read(artifact)
    rows = []
    if kind == "report" and "checks" in data:  # the report's own checks: parity, graph MACs, target
        failures = data["checks"].get("failures") or []
        rows.append({"check": "compress checks", "budget": "passed", "ok": bool(data["checks"].get("passed")),
                     "actual": "passed" if data["checks"].get("passed") else "; ".join(failures)[:200] or "failed"})
    return rows + evaluate(budget, facts_from_report(kind, data))


def table(rows):
    out = ["| check | budget | actual | result |", "|---|---|---|---|"]
    out += [f"| {r['check']} | {r['budget']} | {r['actual']} | {'ok' if r['ok'] else 'MISS'} |" for r in rows]
    return "\n".join(out)


def _budget(args):
    """The budget file's, with --max-accuracy-drop (points) in place of its max_accuracy_drop (a fraction)."""
    drop = args.max_accuracy_drop
    if args.budget is None and drop is None:
        raise UserError("give a budget: --budget FILE (keys in docs/guide/ci.md) or --max-accuracy-drop P (points)")
    budget = load_budget(args.budget) if args.budget is not None else {}
    if drop is not None:
        budget["max_accuracy_drop"] = accuracy_points(drop) / 100
    return budget


def run(args):
    if args.parity_samples < 1:
        raise UserError(f"--parity-samples must be >= 1, got {args.parity_samples}")
    budget = _budget(args)
    rows = check(args.artifact, budget, args)
    misses = [r for r in rows if not r["ok"]]
    if args.json:
        print(json.dumps({"artifact": args.artifact, "budget": args.budget, "ok": not misses, "checks": rows},
                         indent=2))
    else:
        print(table(rows))
    if misses:
        if not args.json:
            print(f"\n{len(misses)} of {len(rows)} checks missed:\n{table(misses)}")
        raise CheckFailed(f"{len(misses)} of {len(rows)} budget checks missed for {args.artifact}")
    return 0
