"""Final fine-tuning recipes compared from one pruned model: augmentation, learning rate, epochs, distillation weight,
and the teacher's logits computed once or per batch. Each recipe starts from the same pruned.pt and sees the same
batches in the same order (one seed), so what differs is the recipe.

    singe-deploy compress --epochs 0 --no-export --out /tmp/p0          # the model after the pruning steps
    python tools/finetune_recipes.py --pruned /tmp/p0/pruned.pt aug,lr=0.05,epochs=2 plain,lr=0.05,epochs=2,once

A recipe is comma-separated: aug or plain (augmented or not), lr=X, epochs=E, alpha=A (distillation weight; 0: no
teacher), once (the teacher's logits computed once, plain data only), seed=S. Each prints one row of a markdown
table: seconds (the logits included), ms per iteration and test accuracy on Fashion-MNIST. Run it with nothing else
on the machine.
"""
import argparse
import json
import time

import torch

from singe_deploy.training import distill
from singe_deploy.data.specs import make_data
from singe_deploy.models.specs import load_model, load_pruned
from singe_deploy.source import DEMO_ASSET, DEMO_MODEL, asset_path
from singe_deploy.training.loops import Recipe, evaluate, train_iters


def parse(text):
    r = {"aug": False, "lr": 0.05, "epochs": 2.0, "alpha": 0.5, "once": False, "seed": 0}
    for part in text.split(","):
        if part in ("aug", "plain"):
            r["aug"] = part == "aug"
        elif part == "once":
            r["once"] = True
        else:
            k, v = part.split("=")
            r[k] = int(v) if k == "seed" else float(v)
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pruned", required=True, help="a pruned.pt written by compress")
    ap.add_argument("--model", default=DEMO_MODEL)
    ap.add_argument("--checkpoint", default=None, help="the dense model's weights (default: the shipped baseline)")
    ap.add_argument("--amp", default="bf16")
    ap.add_argument("--channels-last", default="on")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--json", help="append each result to this JSON-lines file")
    ap.add_argument("recipes", nargs="+")
    a = ap.parse_args()
    print("| recipe | seconds | ms / iteration | test accuracy |")
    print("|---|---:|---:|---:|")
    for text in a.recipes:
        r = parse(text)
        torch.manual_seed(r["seed"])
        dense = load_model(a.model, a.checkpoint or asset_path(DEMO_ASSET), 10, 1).eval()
        model = load_pruned(a.pruned)
        data = make_data("fashion-mnist", a.batch_size, (1, 28, 28), seed=r["seed"],
                         augment="on" if r["aug"] else "off")
        recipe = Recipe(teacher=dense if r["alpha"] > 0 else None, distill_alpha=r["alpha"], amp=a.amp,
                        channels_last=a.channels_last)
        iters = round(r["epochs"] * len(data.train))
        t = time.perf_counter()
        loader = data.train
        if r["once"]:
            loader = distill.with_logits(data.train, recipe, log=lambda *x: None)
            if loader is None:
                raise SystemExit(f"{text}: logits are computed once only for unaugmented data ('plain')")
        train_iters(model, loader, iters, r["lr"], recipe=recipe, desc=text)
        seconds = time.perf_counter() - t
        acc = evaluate(model, data.val)
        print(f"| {text} | {seconds:.1f} | {1000 * seconds / iters:.1f} | {100 * acc:.2f}% |", flush=True)
        if a.json:
            with open(a.json, "a") as f:
                f.write(json.dumps(dict(r, recipe=text, seconds=seconds, iters=iters, accuracy=acc)) + "\n")


if __name__ == "__main__":
    main()
