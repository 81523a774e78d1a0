"""`singe-deploy compare`: every criterion through the same compress flowchart (same data order, schedule
and seeds), so that the gain of a criterion is told apart from the gain of the schedule.

Each criterion x MACs reduction x seed (x flowchart with --one-shot) is one compress run without export,
written to DIR/runs/NAME/; DIR/compare.json lists them, DIR/compare.md gives mean +- std per criterion and
target with the best marked, DIR/compare.png plots accuracy against MACs reduction. The folder is written
as .DIR.partial and renamed at the end; --resume reruns only the runs that did not finish, and picks a run
that was interrupted after a pruning step up again from that step (compress --resume). --resume on a finished
folder adds the runs it lacks (more seeds, criteria or flowcharts), keeping the earlier ones in the table. Either
way --resume refuses other shared options than the folder was started with.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from pathlib import Path

from .. import outdir
from ..config import OPTIONS, add_arguments
from ..config import PER_RUN as WHERE_TO_WRITE
from ..errors import CheckFailed, UserError
from ..files import write_atomic, write_json, write_text

# the compare command's own defaults: a short schedule, accuracy after the last step only, so that
# 7 criteria x 2 targets x 3 seeds fit in 20 minutes on 2 CPU cores for the demo model (config files and
# flags override them); no distillation on this schedule, where it lost at 3x (docs/training.md); augmented
# fine-tuning, as every comparison in docs/research/criteria.md and docs/research/benchmarks.md ran (compress's
# --augment auto turns it off for Fashion-MNIST since 2026-12-06, measured on compress's schedule only)
DEFAULTS = {"steps": 2, "finetune_iters": 30, "epochs": 0.2, "calib_batches": 2, "export": False, "step_eval": False,
            "distill": False, "augment": "on"}
PER_RUN = ("criterion", "macs_reduction", "params_reduction", "latency_reduction", "latency_budget_ms",
           "seed") + WHERE_TO_WRITE
ONE_PROCESS = ("nproc", "dist_backend", "dist_timeout", "dist_sync_bn")  # compare runs its compress runs in this process
# a comparison holds the targets fixed: runs that choose their own end point (a budget) or many (a sweep) are compress's
NOT_COMPARED = ONE_PROCESS + ("max_accuracy_drop", "holdout", "sweep")
STARTED = "started.json"  # an unfinished comparison's shared options, checked by --resume
CRITERIA = ("singe", "l1", "l2", "taylor", "hessian", "bn", "random")
FLOWCHARTS = ("entwined", "one-shot")


def add_compare_arguments(p):
    p.add_argument("--criteria", default=",".join(CRITERIA), metavar="NAME[:KEY=VALUE...][,...]",
                   help=f"criteria to compare (default: {','.join(CRITERIA)}); an entry may set options of its own, "
                   "e.g. singe:variant=completeness:path=unit (KEY is a compress option, singe_ implied for SInGE's)")
    p.add_argument("--rankings", metavar="NAME[,NAME]",
                   help="run every criterion with each of these rankings (global, raw, cost, local)")
    p.add_argument("--distill-both", action="store_true",
                   help="run every criterion with and without distillation from the dense model (--distill), to "
                   "separate its effect from the criterion's")
    p.add_argument("--macs-reduction", default="2,3", metavar="X[,X]", help="MACs reductions (default: 2,3)")
    p.add_argument("--latency-reduction", metavar="X[,X]",
                   help="measured latency reductions instead of MACs ones (timed as compress --latency-reduction does, "
                   "one latency table for every run): criteria and rankings compared at equal measured latency")
    p.add_argument("--seeds", default="0,1,2", metavar="N[,N]", help="seeds (default: 0,1,2)")
    p.add_argument("--one-shot", action="store_true", help="also run each as one-shot pruning (S=1, K=0)")
    p.add_argument("--flowcharts", metavar="NAME[,NAME]",
                   help=f"the flowcharts to run ({', '.join(FLOWCHARTS)}; default: entwined, plus one-shot with "
                   "--one-shot); 'one-shot' alone adds only the one-shot runs, e.g. to a folder whose entwined runs "
                   "came from another comparison")
    p.add_argument("--out", metavar="DIR", help="output folder (default: singe-deploy-out/compare-<time>)")
    p.add_argument("--force", action="store_true", help="replace the output folder if it exists")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted comparison into the same --out, or add runs (seeds, criteria, "
                        "flowcharts) to a finished one")
    shared = [o for o in OPTIONS if o.name not in PER_RUN + NOT_COMPARED]
    add_arguments(p, shared, DEFAULTS)


def _list(text, kind, flag):
    try:
        values = [kind(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        raise UserError(f"{flag} must be a comma-separated list, got '{text}'")
    return values


def entry(text):
    """(label, options) of one --criteria entry: 'NAME' or 'NAME:KEY=VALUE:...' (KEY a compress option; for singe,
    'singe_' may be left out)."""
    from ..config import BY_NAME, _convert

    name, *pairs = text.split(":")
    if name not in CRITERIA:
        raise UserError(f"unknown criterion '{name}' in --criteria; choose from {', '.join(CRITERIA)}")
    opts = {"criterion": name}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        full = f"{name}_{key}" if f"{name}_{key}" in BY_NAME else key
        if not eq or full not in BY_NAME or full in PER_RUN + NOT_COMPARED:
            raise UserError(f"--criteria entry '{text}': '{pair}' is not KEY=VALUE with KEY a compress option; fix it")
        opts[full] = _convert(BY_NAME[full], value, f"--criteria entry '{text}':")
    return text, opts


def plan(criteria, reductions, seeds, flowcharts=("entwined",), rankings=None, distill=None, metric="macs"):
    """(run name, flowchart, per-run options) for every run, in a fixed order. Each criterion is a name or an
    entry with options (see entry); `flowcharts` among FLOWCHARTS; with `rankings`, every criterion runs with each
    of them, and with `distill` (a list of False/True) with and without distillation from the dense model.
    `metric`: what the reductions reduce, macs or latency."""
    flowcharts = [f for f in FLOWCHARTS if f in flowcharts]  # entwined first, whatever the order given
    entries = [entry(c) for c in criteria]
    for key, values in (("ranking", rankings), ("distill", distill)):
        if values:
            crossed = [(f"{label}:{key}={str(v).lower()}" if key not in opts else label, dict({key: v}, **opts))
                       for label, opts in entries for v in values]
            entries = list(dict((label, (label, opts)) for label, opts in crossed).values())
    runs = []
    for flowchart in flowcharts:
        for x in reductions:
            for label, copts in entries:
                for seed in seeds:
                    opts = dict(copts, seed=seed, label=label, **{f"{metric}_reduction": x})
                    if flowchart == "one-shot":
                        opts.update(steps=1, finetune_iters=0)
                    tag = "x" if metric == "macs" else "lat"
                    runs.append((f"{folder(label)}-{tag}{x:g}-s{seed}-{flowchart}", flowchart, opts))
    return runs


def folder(label):
    """The file-name form of a criterion label: singe:distill=true -> singe+distill-true."""
    return label.replace(":", "+").replace("=", "-")


# a run's folder name, as plan() writes it: LABEL-{x|lat}X-sSEED-FLOWCHART
RUN_NAME = re.compile(r"^(?P<label>.+)-(?P<tag>x|lat)(?P<x>[0-9.]+)-s(?P<seed>-?\d+)"
                      rf"-(?P<flowchart>{'|'.join(FLOWCHARTS)})$")


def label_of(name):
    """The criterion label from its file-name form (folder() backwards): singe+ranking-cost -> singe:ranking=cost."""
    head, *pairs = name.split("+")
    return ":".join([head] + [p.replace("-", "=", 1) for p in pairs])


def _options(opts):
    return {k: v for k, v in opts.items() if k != "label"}


def run(args, log=print):
    from ..compress import STATE
    from ..compress import run as compress
    from ..config import TARGETS, resolve, validate
    from ..files import partial
    from ..training.launch import launched

    if launched():
        raise UserError("compare runs in one process; run each compress under torchrun (or with --nproc) instead")
    criteria = _list(args.criteria, str, "--criteria")
    rankings = _list(args.rankings, str, "--rankings") if getattr(args, "rankings", None) else None
    from ..pruning.entwined import RANKINGS

    if rankings and any(r not in RANKINGS for r in rankings):
        raise UserError(f"--rankings must be among {', '.join(RANKINGS)}, got {args.rankings}")
    metric = "latency" if getattr(args, "latency_reduction", None) else "macs"
    flag = f"--{metric}-reduction"
    reductions = _list(getattr(args, f"{metric}_reduction"), float, flag)
    if any(not x > 1 for x in reductions):
        raise UserError(f"{flag} values must be > 1, got {getattr(args, f'{metric}_reduction')}")
    seeds = _list(args.seeds, int, "--seeds")
    shared = argparse.Namespace(**{k: v for k, v in vars(args).items() if k not in PER_RUN})
    base = resolve(shared, DEFAULTS)
    out = Path(args.out) if args.out else Path("singe-deploy-out") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    work = partial(out)
    extend = args.resume and not args.force and (out / "compare.json").is_file() and not work.exists()
    if not extend:
        outdir.check(out, args.force, args.resume, resumable=work.is_dir() and any(work.iterdir()))
    distill = [False, True] if getattr(args, "distill_both", False) else None
    runs = plan(criteria, reductions, seeds, _flowcharts(args), rankings, distill, metric)
    base.update({k: None for k in TARGETS})  # each run has its own
    for name, flowchart, opts in runs:  # every run's options are checked before the first one starts
        validate(dict(base, **_options(opts)))
    options = {k: base[k] for k in base if k not in PER_RUN}
    # a finished comparison grows by the runs it lacks, an interrupted one resumes (an interrupted growth: both),
    # each only under the options it was started with
    source = out if extend else work
    earlier = json.loads((source / "compare.json").read_text()) if (source / "compare.json").is_file() else {}
    started = json.loads((work / STARTED).read_text()) if not extend and (work / STARTED).is_file() else {}
    if earlier or started:
        was = started.get("metric") or ("latency" if "latency_reductions" in earlier else "macs")
        if was != metric:
            raise UserError(f"{source} compares at {was} targets; --resume adds runs there only with "
                            f"--{was}-reduction, or choose another --out")
        _same_options(source, (started or earlier).get("options", {}), options)
    if extend:
        out.rename(work)
    outdir.begin(out, resume=args.resume)
    try:
        (work / "runs").mkdir(parents=True, exist_ok=True)
        if not started:
            write_json(work / STARTED, {"metric": metric, "options": options}, indent=1)
        # every run starts from the same baseline: its accuracy is measured once (or taken from the earlier runs)
        rows, dense = [], (earlier.get("runs") or [{}])[0].get("dense_accuracy")
        for i, (name, flowchart, opts) in enumerate(runs, 1):
            folder = work / "runs" / name
            if not (folder / "report.json").is_file():
                again = args.resume and (partial(folder) / STATE).is_file()
                log(f"[{i}/{len(runs)}] {name}" + (": resuming from its last pruning step" if again else ""))
                cfg = validate(dict(base, **_options(opts), out=str(folder), force=True, resume=again))
                try:
                    compress(cfg, log=lambda *a, **k: None, dense_accuracy=dense, resume_hint=False)
                except CheckFailed:  # a missed target is a result, recorded with the run
                    pass
                except KeyboardInterrupt:
                    log(f"interrupted; to continue, rerun the same command plus --resume --out {out}")
                    raise
            else:
                log(f"[{i}/{len(runs)}] {name}: done earlier")
            rows.append(row(json.loads((folder / "report.json").read_text()), name, flowchart, opts))
            dense = rows[-1]["dense_accuracy"]
        if earlier:  # runs of the earlier command(s) that this one did not name stay in the table
            named = {r["name"] for r in rows}
            rows = [r for r in earlier["runs"] if r["name"] not in named] + rows
            criteria = _union(earlier.get("criteria", []), criteria)
            reductions = _union(earlier.get(f"{metric}_reductions", []), reductions)
            seeds = _union(earlier.get("seeds", []), seeds)
        result = {"runs": rows, "criteria": criteria, f"{metric}_reductions": reductions, "seeds": seeds,
                  "options": options}
        write_json(work / "compare.json", result, indent=1)
        write_text(work / "compare.md", markdown(rows, base))
        write_atomic(work / "compare.png", lambda tmp: plot(rows, tmp))
        (work / STARTED).unlink(missing_ok=True)  # compare.json holds the same options now
        outdir.publish(work, out, command="compare")
        log(f"wrote {out}/ (compare.md, compare.json, compare.png, runs/)")
        return result, out
    finally:
        outdir.release(work)  # a later command in this process may take the folder


def _flowcharts(args):
    given = getattr(args, "flowcharts", None)
    chosen = _list(given, str, "--flowcharts") if given else ["entwined"]
    if any(f not in FLOWCHARTS for f in chosen):
        raise UserError(f"--flowcharts must be among {', '.join(FLOWCHARTS)}, got {given}")
    return chosen + (["one-shot"] if args.one_shot else [])


def _union(first, then):
    return list(first) + [v for v in then if v not in first]


def _same_options(out, before, options):
    differ = [f"{k} {before[k]!r} there, {options[k]!r} now" for k in sorted(before.keys() & options.keys())
              if before[k] != options[k]]
    if differ:
        raise UserError(f"--resume adds runs to {out} only under its own options ({'; '.join(differ)}); "
                        "rerun with those options or choose another --out")


def row(rep, name, flowchart, opts):
    steps = rep.get("steps", [])
    lat = rep["target"].get("latency") or {}
    return {"name": name, "criterion": opts.get("label", opts["criterion"]),
            "macs_reduction": opts.get("macs_reduction"), "latency_reduction": opts.get("latency_reduction"),
            "latency_ms": lat.get("measured_ms"), "dense_latency_ms": lat.get("dense_ms"), "seed": opts["seed"],
            "flowchart": flowchart, "accuracy": rep["pruned"]["accuracy"],
            "accuracy_before_finetune": rep["pruned"].get("accuracy_before_finetune"),
            "dense_accuracy": rep["dense"]["accuracy"], "macs": rep["pruned"]["macs"],
            "params": rep["pruned"]["params"], "achieved_reduction": rep["target"]["achieved"],
            "target_hit": rep["target"]["hit"], "score_seconds": round(sum(s["score_seconds"] for s in steps), 3),
            "seconds": rep.get("timings", {}).get("total_s"), "training": training(rep)}


def training(rep):
    """Where and in what precision a run was fine-tuned ("cpu fp32", "cuda bf16"): runs that differ in it are
    not one experiment."""
    t = rep.get("schedule", {}).get("training") or {}
    return f"{t['device'].split(':')[0]} {t['precision']}" if t.get("device") else None


def _stats(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def reduction(r):
    """A run's target reduction: of latency when it had a latency target, else of MACs."""
    return r.get("latency_reduction") or r["macs_reduction"]


def by_latency(rows):
    """Whether the runs had latency targets (a comparison has one kind)."""
    return any(r.get("latency_reduction") for r in rows)


def summary(rows):
    """(flowchart, reduction, criterion) -> mean/std of accuracy, MACs, params, latency and score time."""
    groups = {}
    for r in rows:
        groups.setdefault((r["flowchart"], reduction(r), r["criterion"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        acc, acc_std = _stats([r["accuracy"] for r in rs])
        out[key] = {"accuracy": acc, "accuracy_std": acc_std, "n": len(rs),
                    "macs": statistics.fmean(r["macs"] for r in rs), "params": statistics.fmean(r["params"] for r in rs),
                    "score_seconds": statistics.fmean(r["score_seconds"] for r in rs),
                    "latency_ms": _stats([r.get("latency_ms") for r in rs])[0],
                    "targets_hit": sum(r["target_hit"] for r in rs)}
    return out


def markdown(rows, cfg):
    s = summary(rows)
    lines = [f"# Criteria compared: {cfg['model']} on {cfg['data']}", "",
             f"Same flowchart for every criterion: steps {cfg['steps']}, {cfg['finetune_iters']} fine-tuning "
             f"iterations per step, {cfg['epochs']:g} final epochs, lr {cfg['lr']:g}, {cfg['calib_batches']} "
             f"calibration batches of {cfg['batch_size']}, ranking {cfg['ranking']} (unless an entry names its own), "
             f"round_to {cfg['round_to']}; "
             "the same seeds give every criterion the same data order. One-shot = 1 step, no fine-tuning between "
             "steps (the final fine-tuning is the same). Accuracy is mean +- std over seeds; **bold** = best of "
             "its flowchart and target.", ""]
    dense = _stats([r["dense_accuracy"] for r in rows])[0]
    if dense is not None:
        lines += [f"Dense accuracy: {dense:.4f}.", ""]
    tuned = sorted({r["training"] for r in rows if r.get("training")})
    if tuned:
        lines += [f"Fine-tuned on: {', '.join(tuned)}.", ""]
    latency = by_latency(rows)
    what, extra = ("lower measured latency", " latency ms |") if latency else ("fewer MACs", "")
    for flowchart in dict.fromkeys(r["flowchart"] for r in rows):
        for x in dict.fromkeys(reduction(r) for r in rows):
            keys = [k for k in s if k[0] == flowchart and k[1] == x]
            if not keys:
                continue
            best = max((s[k]["accuracy"] for k in keys if s[k]["accuracy"] is not None), default=None)
            lines += [f"## {flowchart}, {x:g}x {what}", "",
                      f"| criterion | accuracy | runs | MACs | params |{extra} targets hit | score s |",
                      "|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if latency else "")]
            for k in sorted(keys, key=lambda k: -(s[k]["accuracy"] or 0)):
                v = s[k]
                acc = "n/a" if v["accuracy"] is None else f"{v['accuracy']:.4f} +- {v['accuracy_std']:.4f}"
                if v["accuracy"] is not None and v["accuracy"] == best:
                    acc = f"**{acc}**"
                ms = f" {v['latency_ms']:.3f} |" if latency and v["latency_ms"] is not None else " n/a |" * latency
                lines.append(f"| {k[2]} | {acc} | {v['n']} | {v['macs']:,.0f} | {v['params']:,.0f} |{ms} "
                             f"{v['targets_hit']}/{v['n']} | {v['score_seconds']:.2f} |")
            lines.append("")
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summary(rows)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {c: f"C{i}" for i, c in enumerate(dict.fromkeys(k[2] for k in s))}  # one colour per criterion
    for flowchart, style in (("entwined", "-o"), ("one-shot", "--s")):
        for criterion in colors:
            keys = sorted((k for k in s if k[0] == flowchart and k[2] == criterion and s[k]["accuracy"] is not None),
                          key=lambda k: k[1])
            if keys:
                ax.errorbar([k[1] for k in keys], [s[k]["accuracy"] for k in keys],
                            yerr=[s[k]["accuracy_std"] for k in keys], fmt=style, capsize=3, color=colors[criterion],
                            label=f"{criterion} ({flowchart})")
    latency = by_latency(rows)
    ax.set_xlabel(f"{'measured latency' if latency else 'MACs'} reduction (dense / pruned)")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
