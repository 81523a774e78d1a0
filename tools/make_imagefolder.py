"""Write Fashion-MNIST as an image folder (DIR/train/<class>/*.png, DIR/val/<class>/*.png), so that the guide's
`imagefolder:DIR` commands run as written on a machine without images of its own.

    python tools/make_imagefolder.py /tmp/fmnist-folder                 # 100 train, 20 val images per class
    python tools/make_imagefolder.py /tmp/fmnist-folder --train 600 --val 100

The images are the 28x28 grayscale originals; an existing DIR is refused (nothing is overwritten).
"""
import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from singe_deploy.data.specs import load_fashion_mnist
from singe_deploy.errors import UserError

CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot")


def write(out, images, labels, per_class):
    for c, name in enumerate(CLASSES):
        folder = out / name
        folder.mkdir(parents=True)
        for i, index in enumerate(np.flatnonzero(labels == c)[:per_class]):
            Image.fromarray(images[index]).save(folder / f"{i:05d}.png")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--train", type=int, default=100, help="training images per class (default 100)")
    ap.add_argument("--val", type=int, default=20, help="validation images per class, from the test set (default 20)")
    ap.add_argument("--data-dir", default=None, help="where Fashion-MNIST's idx files are (default: found)")
    args = ap.parse_args(argv)
    if args.train < 1 or args.val < 1:
        print(f"make_imagefolder: --train and --val must be at least 1, got {args.train} and {args.val}", file=sys.stderr)
        return 2
    if args.out.exists():
        print(f"make_imagefolder: {args.out} exists; name a new folder", file=sys.stderr)
        return 2
    try:
        xtr, ytr, xte, yte = load_fashion_mnist(args.data_dir)
    except UserError as e:
        print(f"make_imagefolder: {e}", file=sys.stderr)
        return 2
    tmp = args.out.with_name(f".{args.out.name}.partial")  # this tool's own leftover from a killed run
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp / "train", np.asarray(xtr), np.asarray(ytr), args.train)
    write(tmp / "val", np.asarray(xte), np.asarray(yte), args.val)
    tmp.rename(args.out)
    print(f"wrote {args.out}/train and {args.out}/val: {len(CLASSES)} classes, {args.train} and {args.val} images each")
    return 0


if __name__ == "__main__":
    sys.exit(main())
