"""Train the committed baselines: builtin:resnet20 and builtin:resnet56 on Fashion-MNIST.

    python tools/train_baseline.py --epochs 20 --out singe_deploy/assets/resnet20_fashion_mnist.pt
    OMP_NUM_THREADS=1 python tools/train_baseline.py --model builtin:resnet56 --epochs 6 \
        --out singe_deploy/assets/resnet56_fashion_mnist.pt

Prints the test accuracy at the end; the README quotes it with this command.
"""
import argparse
import time

import torch

from singe_deploy.data.specs import make_data
from singe_deploy.models.specs import build_model
from singe_deploy.training.loops import evaluate, train_epochs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin:resnet20")
    ap.add_argument("--epochs", type=float, default=20)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    data = make_data("fashion-mnist", batch_size=args.batch_size, seed=args.seed)
    model = build_model(args.model, num_classes=10, in_channels=1)
    start = time.time()
    train_epochs(model, data.train, args.epochs, args.lr, desc="train")
    acc = evaluate(model, data.val)
    torch.save(model.state_dict(), args.out)
    print(f"{args.model} Fashion-MNIST test accuracy {acc:.4f} after {args.epochs:g} epochs, "
          f"{time.time() - start:.0f} s; saved {args.out}")


if __name__ == "__main__":
    main()
