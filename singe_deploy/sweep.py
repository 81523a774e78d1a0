"""`compress --sweep 1.5,2,3,4`: one entwined run whose steps stop at each MACs reduction, each step's model then
fine-tuned on its own: one model per reduction and the front of accuracy against measured latency, from one run.

Step k prunes step k-1's model further, to dense / X_k, with the usual short fine-tuning; only the final fine-tuning is
per point. Every point's fine-tuning starts from the same data order and random state (data.specs.rewind), so points
do not depend on each other's fine-tuning, and a sweep killed in the middle of one resumes to the same models: a point
whose pruned.pt is written is read back, the others are fine-tuned again from their step's model.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from .data.specs import rewind
from .deploy.export import export_onnx
from .files import write_json
from .models.specs import load_pruned, save_pruned
from .pruning.entwined import recipe_for, training_data
from .training.loops import evaluate, train_epochs

FOLDER = "sweep"


def point_dir(work, reduction):
    return Path(work) / FOLDER / f"macs-{reduction:g}x"


def save_step(work, reduction, model, spec, classes, input_shape):
    """A step's model, before its own fine-tuning: what the point is fine-tuned from (and again after a kill)."""
    folder = point_dir(work, reduction)
    folder.mkdir(parents=True, exist_ok=True)
    save_pruned(model, folder / "step.pt", spec, classes, input_shape[1], input_shape)


def finetune_points(work, reductions, records, data, schedule, teacher, seed, spec, classes, input_shape, export,
                    log=print):
    """Fine-tune every step's model on its own (schedule.epochs) and write its pruned.pt (and pruned.onnx with
    `export`) and point.json; returns (the points for report.json, the last point's model, seconds spent)."""
    recipe = recipe_for(schedule, teacher)
    train = training_data(data, recipe, schedule, log)
    points, model, spent = [], None, 0.0
    for x, rec in zip(reductions, records):
        folder = point_dir(work, x)
        done = folder / "point.json"
        if done.is_file() and (folder / "pruned.pt").is_file():  # finished before a kill
            point = json.loads(done.read_text())
            model = load_pruned(folder / "pruned.pt")
            (folder / "step.pt").unlink(missing_ok=True)  # a kill may have come between the two
            log(f"sweep {x:g}x: fine-tuned before, {point['accuracy']:.4f}")
        else:
            t = time.time()
            model = load_pruned(folder / "step.pt")
            rewind(train, seed)
            torch.manual_seed(seed)
            train_epochs(model, train, schedule.epochs, schedule.lr, desc=f"fine-tune {x:g}x", recipe=recipe)
            save_pruned(model, folder / "pruned.pt", spec, classes, input_shape[1], input_shape)
            if export:
                export_onnx(model.eval(), input_shape, folder / "pruned.onnx")
            point = {"reduction": x, "macs": rec["macs"], "params": rec["params"],
                     "accuracy_before_finetune": rec["accuracy"], "accuracy": evaluate(model, data.val),
                     "latency_ms": rec.get("latency_ms"), "dense_latency_ms": rec.get("dense_latency_ms"),
                     "pruned_pt": str(Path(FOLDER) / folder.name / "pruned.pt"),
                     "pruned_onnx": str(Path(FOLDER) / folder.name / "pruned.onnx") if export else None,
                     "finetune_seconds": round(time.time() - t, 2)}
            write_json(done, point)
            (folder / "step.pt").unlink()  # the point's own model is written; the step's was only its start
            log(f"sweep {x:g}x: {rec['macs']:,} MACs, accuracy {point['accuracy']:.4f} after fine-tuning "
                f"({point['finetune_seconds']:.0f} s)")
        spent += point["finetune_seconds"]
        points.append(point)
    return points, model, spent


def front(points):
    """The points no other point beats on both latency (MACs where untimed) and accuracy, fastest first."""
    def cost(p):
        return p["latency_ms"] / p["dense_latency_ms"] if p.get("latency_ms") else p["macs"]

    best, out = -1.0, []
    for p in sorted(points, key=cost):
        if p["accuracy"] > best:
            out.append(p)
            best = p["accuracy"]
    return out
