"""Train the committed baselines: builtin:resnet20 and builtin:resnet56 on Fashion-MNIST.

    python tools/train_baseline.py --epochs 20 --out singe_deploy/assets/resnet20_fashion_mnist.pt
    OMP_NUM_THREADS=1 python tools/train_baseline.py --model builtin:resnet56 --epochs 6 \
        --out singe_deploy/assets/resnet56_fashion_mnist.pt
    python tools/train_baseline.py --model torchvision:mobilenet_v2 --input-shape 3,64,64 --epochs 0.64 \
        --batch-size 64 --lr 0.05 --out mbv2_64.pt     # a studies' model, not shipped (docs/research/singe-paths)

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
    ap.add_argument("--input-shape", default=None, help="C,H,W: Fashion-MNIST resized (and its channel repeated)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    shape = tuple(int(v) for v in args.input_shape.split(",")) if args.input_shape else None
    data = make_data("fashion-mnist", batch_size=args.batch_size, sample_shape=shape, seed=args.seed)
    model = build_model(args.model, num_classes=10, in_channels=shape[0] if shape else 1)
    start = time.time()
    train_epochs(model, data.train, args.epochs, args.lr, desc="train")
    acc = evaluate(model, data.val)
    torch.save(model.state_dict(), args.out)
    print(f"{args.model} Fashion-MNIST test accuracy {acc:.4f} after {args.epochs:g} epochs, "
          f"{time.time() - start:.0f} s; saved {args.out}")


if __name__ == "__main__":
    main()
