"""Data from specs: `fashion-mnist`, `imagefolder:DIR`, `synthetic`.

Every spec gives a `Data`: train and validation loaders that yield (images, labels) float batches
already shaped for the model, the number of classes, and whether the data is real (synthetic data
has no labels worth learning, so the pipeline skips fine-tuning and reports accuracy as null).
"""
from __future__ import annotations

import copy
import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError, first_line
from ..training import distributed

FASHION_DIRS = ("/usr/share/datasets/fashion-mnist",)
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "val": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MEAN, FASHION_STD = 0.2860, 0.3530
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class Data:
    spec: str
    train: object | None  # iterable of (x, y) batches
    val: object | None
    num_classes: int
    sample_shape: tuple  # (C, H, W) as the model receives it
    real: bool  # False for synthetic inputs: no fine-tuning, accuracy is null

    calib: object | None = None  # a fixed, unaugmented loader over training data
    sharded: bool = False  # under torchrun: the loaders yield this rank's share of each batch already
    skipped: object = None  # Skipped: unreadable images met while loading (image folders)
    shape_from: str | None = None  # where sample_shape came from, in words (set by source.Source.load)
    augmented: bool | None = None  # whether the training loader augments (make_data's --augment); None: no training data
    holdout: object | None = None  # training samples held out of fine-tuning, for accuracy budgets (make_data's holdout)

    def calibration(self, n):
        """The same n training batches every time it is called (for scoring)."""
        out = []
        for x, y in (self.calib or self.train):
            out.append((x, y))
            if len(out) >= n:
                break
        return out


class TensorLoader:
    """Batches from in-memory uint8 images, augmented on the batch, with a seeded order.

    Each pass (epoch) reshuffles with seed + epoch, so two runs with the same seed see the same
    data in the same order: criteria compared through the same pipeline get identical batches.
    """

    def __init__(self, images, labels, batch_size, shape, mean, std, shuffle=False, augment=False,
                 seed=0, drop_last=False, soft=None):
        self.images, self.labels = images, labels
        self.soft = soft  # per-sample teacher logits (distill.py): batches are then (x, y, logits)
        self.batch_size, self.shape = batch_size, tuple(shape)
        self.mean, self.std = mean, std
        self.shuffle, self.augment, self.seed, self.drop_last = shuffle, augment, seed, drop_last
        self.epoch = 0

    def __len__(self):
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        n = len(self.labels)
        gen = torch.Generator().manual_seed(self.seed * 1000003 + self.epoch)
        self.epoch += 1
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size]
            if self.drop_last and len(idx) < self.batch_size:
                break
            x = self.images[idx].float().div_(255.0)
            if x.dim() == 3:
                x = x.unsqueeze(1)
            if self.augment:
                x = _augment(x, gen)
            x = _fit(x, self.shape, self.mean, self.std)
            yield (x, self.labels[idx]) if self.soft is None else (x, self.labels[idx], self.soft[idx])

    def samples(self, batch_size=512):
        """Every sample once, in order and unaugmented, as the model takes it: (x, y) batches."""
        for start in range(0, len(self.labels), batch_size):
            x = self.images[start:start + batch_size].float().div_(255.0)
            yield _fit(x.unsqueeze(1) if x.dim() == 3 else x, self.shape, self.mean, self.std), \
                self.labels[start:start + batch_size]


def _augment(x, gen):
    """Random horizontal flip and random 2-pixel translation (pad and crop), per sample."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    pad = F.pad(x, (2, 2, 2, 2))
    dx = torch.randint(0, 5, (n,), generator=gen)
    dy = torch.randint(0, 5, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None]).clamp(max=h + 3)
    cols = (dx[:, None] + torch.arange(w)[None]).clamp(max=w + 3)
    bidx = torch.arange(n)[:, None, None]
    out = pad.permute(0, 2, 3, 1)[bidx, rows[:, :, None], cols[:, None, :]]
    return nchw(out.permute(0, 3, 1, 2))


def nchw(x):
    """x with the plain (N, C, H, W) strides. A one-channel batch permuted from NHWC counts as contiguous but keeps
    channels-last strides; convolutions then take oneDNN's channels-last path, whose backward corrupted the heap
    on one thread with the odd channel counts a pruned model has (torch 2.14.1; crashes with `--round-to 1`)."""
    standard = [1]
    for size in reversed(x.shape[1:]):
        standard.insert(0, standard[0] * size)
    return x if x.stride() == tuple(standard) else x.clone(memory_format=torch.contiguous_format)


def _fit(x, shape, mean, std):
    """Normalise, then repeat grey channels and resize to the model's (C, H, W)."""
    c, h, w = shape
    x = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    if x.shape[1] != c:
        if x.shape[1] != 1:
            raise UserError(f"the data has {x.shape[1]} channels but the model takes {c}; "
                            "pass --input-shape with the data's channel count")
        x = x.expand(-1, c, -1, -1).contiguous()
    if x.shape[2:] != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    return x


def read_idx(path):
    """Read one IDX file (gzipped or not) into a numpy array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f"cannot read {path}: {e}; reinstall the dataset") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 8:
        raise UserError(f"{path} is not a uint8 IDX file; reinstall the dataset")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise UserError(f"{path} is truncated; reinstall the dataset")
    return data.reshape(dims)


def find_fashion_mnist(data_dir=None):
    """The folder holding the four IDX files: data_dir, the Debian package's, or torchvision's cache."""
    candidates = [Path(data_dir)] if data_dir else []
    if not data_dir:
        candidates += [Path(d) for d in FASHION_DIRS]
        home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
        candidates += [Path("data/FashionMNIST/raw"), home / "datasets" / "FashionMNIST" / "raw"]
    for d in candidates:
        for suffix in (".gz", ""):
            if all((d / (f[:-3] + suffix)).exists() for pair in FASHION_FILES.values() for f in pair):
                return d, suffix
    where = str(data_dir) if data_dir else ", ".join(str(c) for c in candidates)
    raise UserError(f"Fashion-MNIST not found in {where}; install it with "
                    "'apt-get install dataset-fashion-mnist' or pass --data-dir DIR")


def load_fashion_mnist(data_dir=None):
    """(train_images, train_labels, val_images, val_labels) as uint8/int64 tensors."""
    d, suffix = find_fashion_mnist(data_dir)
    out = []
    for split in ("train", "val"):
        img, lab = (d / (f[:-3] + suffix) for f in FASHION_FILES[split])
        x, y = read_idx(img), read_idx(lab)
        if len(x) != len(y):
            raise UserError(f"{img} and {lab} disagree on the number of samples; reinstall the dataset")
        out += [torch.from_numpy(x.copy()), torch.from_numpy(y.astype(np.int64))]
    return tuple(out)


def first_samples(batches, n):
    """The first n samples of a list of batches (each a tensor, or a tuple of tensors sharing the batch dim)."""
    out, left = [], n
    for b in batches:
        if left <= 0:
            break
        cut = tuple(t[:left] for t in b) if isinstance(b, tuple) else b[:left]
        out.append(cut)
        left -= len(cut[0] if isinstance(cut, tuple) else cut)
    return out


HOLDOUT_SEED = 20261206  # fixed, so that runs with other seeds judge their steps on the same samples


def holdout_split(n, fraction):
    """(kept, held out) sorted index tensors: a seeded random `fraction` of n samples held out (at least one)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(HOLDOUT_SEED))
    k = min(n - 1, max(1, round(n * fraction)))
    if k < 1:
        raise UserError(f"{n} training sample(s) leave none to hold out; use more training data")
    return order[k:].sort().values, order[:k].sort().values


def _subset(x, y, limit):
    return (x[:limit], y[:limit]) if limit else (x, y)


def make_data(spec, batch_size=128, sample_shape=None, data_dir=None, seed=0, train_limit=None,
              val_limit=None, num_classes=None, workers=2, augment="auto", holdout=0.0):
    """Build a `Data` from a spec. sample_shape (C, H, W) is what the model takes; None = the data's own. augment
    (auto, on, off): whether the training loader augments; auto is off for Fashion-MNIST and on for image folders.
    holdout: the fraction of the training samples (after train_limit) set apart as `Data.holdout`, never fine-tuned
    or calibrated on; the same samples whatever the seed."""
    if augment not in ("auto", "on", "off"):
        raise UserError(f"--augment must be auto, on or off, got {augment!r}")
    if not 0 <= holdout < 1:
        raise UserError(f"--holdout must be a fraction in [0, 1), got {holdout:g}")
    if spec == "fashion-mnist":
        xt, yt, xv, yv = load_fashion_mnist(data_dir)
        xt, yt = _subset(xt, yt, train_limit)
        xv, yv = _subset(xv, yv, val_limit)
        shape = tuple(sample_shape or (1, 28, 28))
        common = dict(shape=shape, mean=(FASHION_MEAN,), std=(FASHION_STD,))
        held = None
        if holdout:
            keep, out = holdout_split(len(yt), holdout)
            held = TensorLoader(xt[out], yt[out], 256, **common)
            xt, yt = xt[keep], yt[keep]
        train = TensorLoader(xt, yt, batch_size, shuffle=True, augment=augment == "on", seed=seed,
                             drop_last=len(yt) > batch_size, **common)  # a set under one batch is one batch
        val = TensorLoader(xv, yv, 256, **common)
        calib = _Fixed(TensorLoader(xt, yt, batch_size, shuffle=True, seed=seed + 1, **common))
        return Data(spec, train, val, 10, shape, True, calib, augmented=train.augment, holdout=held)
    if spec == "synthetic":
        shape = tuple(sample_shape or (3, 224, 224))
        classes = num_classes or 1000
        gen = torch.Generator().manual_seed(seed)
        n = 4 * batch_size
        x = torch.randn((n,) + shape, generator=gen)
        y = torch.randint(0, classes, (n,), generator=gen)
        loader = _ListLoader([(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, n, batch_size)])
        return Data(spec, loader, loader, classes, shape, False)
    if spec.startswith("imagefolder:"):
        return _imagefolder(spec, spec.split(":", 1)[1], batch_size, sample_shape, seed,
                            train_limit, val_limit, workers, augment != "off", holdout)
    raise UserError(f"unknown data spec '{spec}'; use fashion-mnist, imagefolder:DIR or synthetic")


class _ListLoader(list):
    pass


class Stream:
    """Training batches pass after pass (each pass a new, seeded epoch of the loader), whose position can be saved
    and restored: a resumed run sees the batches the uninterrupted run would have seen next."""

    def __init__(self, loader):
        self.loader, self.it, self.pos, self.token = loader, None, 0, None

    def __iter__(self):
        return self

    def __next__(self):
        while True:
            if self.it is None:
                self.token, self.pos = _pass_token(self.loader), 0
                self.it = iter(self.loader)
            try:
                batch = next(self.it)
            except StopIteration:
                self.it = None
                if self.pos == 0:
                    raise UserError("the training data gives no batch; check --train-limit and the data "
                                    "folder") from None
                continue
            self.pos += 1
            return batch

    def state(self):
        """Where the stream is: the loader's state at the start of the current pass and the batches taken from it."""
        if self.it is None:
            return {"token": _pass_token(self.loader), "pos": 0, "started": False}
        return {"token": self.token, "pos": self.pos, "started": True}

    def restore(self, state):
        """Continue from state(): the pass is started again from the same loader state and its first `pos` batches
        are drawn and dropped (their augmentation draws random numbers too)."""
        _set_pass_token(self.loader, state["token"])
        self.it = None
        if state["started"]:
            self.token, self.it, self.pos = state["token"], iter(self.loader), 0
            for _ in range(state["pos"]):
                next(self.it)
            self.pos = state["pos"]
        return self


def _pass_token(loader):
    """What makes a loader's next pass what it is: its epoch counter, or its shuffling generator's state."""
    if hasattr(loader, "epoch"):
        return ("epoch", loader.epoch)
    gen = getattr(loader, "generator", None)
    if gen is not None:
        return ("generator", gen.get_state())
    return None


def rewind(loader, seed):
    """Make the loader's next pass the one a fresh run with `seed` would see first, whatever passes ran before."""
    if hasattr(loader, "epoch"):
        loader.epoch = 0
    elif getattr(loader, "generator", None) is not None:
        loader.generator.manual_seed(seed)


def _set_pass_token(loader, token):
    if token is None:
        return
    kind, value = token
    if kind == "epoch":
        loader.epoch = value
    else:
        loader.generator.set_state(value)


class _Fixed:
    """Iterates a TensorLoader always from its first epoch, so each pass yields the same batches."""

    def __init__(self, loader):
        self.loader = loader

    def __iter__(self):
        self.loader.epoch = 0
        return iter(self.loader)


def _imagefolder(spec, root, batch_size, sample_shape, seed, train_limit, val_limit, workers, augment=True,
                 holdout=0.0):
    from torchvision import transforms

    root = Path(root)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise UserError(f"{root / split} does not exist; imagefolder:DIR needs DIR/train/<class>/ "
                            "and DIR/val/<class>/ folders of images")
    c, h, w = tuple(sample_shape or (3, 224, 224))
    norm = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    to_c = [transforms.Grayscale(c)] if c in (1,) else []
    train_tf = transforms.Compose(to_c + [transforms.RandomResizedCrop((h, w)), transforms.RandomHorizontalFlip(),
                                          transforms.ToTensor(), norm if c == 3 else transforms.Normalize([0.5] * c, [0.25] * c)])
    val_tf = transforms.Compose(to_c + [transforms.Resize((int(h * 8 / 7), int(w * 8 / 7))), transforms.CenterCrop((h, w)),
                                        transforms.ToTensor(), norm if c == 3 else transforms.Normalize([0.5] * c, [0.25] * c)])
    skipped = Skipped()
    train_set = _folder(root / "train", train_tf if augment else val_tf, skipped)
    val_set = _folder(root / "val", val_tf, skipped)
    if train_set.classes != val_set.classes:
        raise UserError(f"{root}/train and {root}/val have different class folders; make them match")
    calib_set = copy.copy(train_set)  # the same files, listed once, read without augmentation
    calib_set.transform = val_tf
    if train_limit:
        train_set = torch.utils.data.Subset(train_set, range(min(train_limit, len(train_set))))
        calib_set = torch.utils.data.Subset(calib_set, range(min(train_limit, len(calib_set))))
    held = None
    if holdout:
        keep, out = holdout_split(len(train_set), holdout)
        held = torch.utils.data.Subset(calib_set, out.tolist())  # read as the validation images are
        train_set = torch.utils.data.Subset(train_set, keep.tolist())
        calib_set = torch.utils.data.Subset(calib_set, keep.tolist())
    if val_limit:
        val_set = torch.utils.data.Subset(val_set, range(min(val_limit, len(val_set))))
    _check_images(train_set, val_set)
    classes = len(val_set.dataset.classes if val_limit else val_set.classes)
    collate = _collate_present
    held = None if held is None else torch.utils.data.DataLoader(held, batch_size, num_workers=workers,
                                                                 collate_fn=collate)
    ctx = distributed.current()
    if ctx.active:  # each rank decodes only its share: a sampler per rank, batch_size / world per rank
        per_rank = max(1, batch_size // ctx.world)
        sampler = torch.utils.data.distributed.DistributedSampler(train_set, ctx.world, ctx.rank, shuffle=True,
                                                                  seed=seed, drop_last=True)
        train = _Epochs(torch.utils.data.DataLoader(train_set, per_rank, sampler=sampler, num_workers=workers,
                                                    drop_last=len(train_set) > batch_size, collate_fn=collate),
                        sampler)
        mine = torch.utils.data.Subset(val_set, range(ctx.rank, len(val_set), ctx.world))
        val = _Epochs(torch.utils.data.DataLoader(mine, per_rank, num_workers=workers, collate_fn=collate), None)
        return Data(spec, train, val, classes, (c, h, w), True, sharded=True, skipped=skipped, augmented=augment,
                    holdout=held)
    gen = torch.Generator().manual_seed(seed)
    train = torch.utils.data.DataLoader(train_set, batch_size, shuffle=True, generator=gen, num_workers=workers,
                                        drop_last=len(train_set) > batch_size, collate_fn=collate)
    val = torch.utils.data.DataLoader(val_set, batch_size, num_workers=workers, collate_fn=collate)
    # scoring and int8 calibration see the same unaugmented training batches every time, whatever ran before
    calib = _Reseeded(torch.utils.data.DataLoader(calib_set, batch_size, shuffle=True, num_workers=workers,
                                                  generator=torch.Generator(), collate_fn=collate), seed + 1)
    return Data(spec, train, val, classes, (c, h, w), True, calib, skipped=skipped, augmented=augment,
                holdout=held)


def folder_image_size(root, limit=256):
    """((H, W) most common among about `limit` training images of an image folder (the first of each class), how
    many sizes they have)."""
    from collections import Counter

    from PIL import Image

    sizes = Counter()
    classes = sorted(d for d in Path(root, "train").iterdir() if d.is_dir()) if Path(root, "train").is_dir() else []
    for d in classes:  # a few images of every class, without listing a large set whole
        for path in sorted(f for f in d.iterdir() if f.is_file())[:max(1, limit // len(classes))]:
            try:
                with Image.open(path) as im:
                    sizes[(im.height, im.width)] += 1
            except (OSError, ValueError, SyntaxError):
                continue  # named by the layout check when the data is loaded
    if not sizes:
        return None, 0
    return sizes.most_common(1)[0][0], len(sizes)


class Skipped:
    """Images that could not be read while loading, counted across loader workers (they are skipped)."""

    def __init__(self):
        import multiprocessing

        self.count = multiprocessing.Value("i", 0)
        self.first = multiprocessing.Array("c", 512)

    def add(self, path):
        with self.count.get_lock():
            if self.count.value == 0:
                self.first.value = str(path).encode()[:511]
            self.count.value += 1

    def summary(self):
        return {"count": self.count.value, "first": self.first.value.decode() or None}


def _folder(path, transform, skipped):
    """An ImageFolder whose unreadable images are skipped and counted, with one-line errors for bad layouts."""
    from torchvision import datasets

    class Folder(datasets.ImageFolder):
        def __getitem__(self, i):
            try:
                return super().__getitem__(i)
            except (OSError, ValueError, SyntaxError):  # PIL's errors for unreadable or truncated files
                skipped.add(self.samples[i][0])
                return None

    classes = sorted(d for d in Path(path).iterdir() if d.is_dir())
    if not classes:
        raise UserError(f"{path} has no class folders; imagefolder:DIR needs DIR/train/<class>/ and DIR/val/<class>/")
    for d in classes:
        if not any(f.suffix.lower() in datasets.folder.IMG_EXTENSIONS for f in d.rglob("*") if f.is_file()):
            raise UserError(f"class folder {d} holds no image; every class folder needs at least one image (or "
                            "remove the folder from train/ and val/)")
    try:
        return Folder(path, transform)
    except FileNotFoundError as e:
        raise UserError(f"{path}: {first_line(e)}; every class folder needs at least one image") from None


def _check_images(*sets, limit=20000):
    """Open every image's header (small sets only: a large one is checked as it loads, unreadable images skipped
    and counted): a file that is not an image is bad input, named."""
    from PIL import Image

    paths = [p for s in sets for p, _ in _samples(s)]
    if len(paths) > limit:
        return
    for path in paths:
        try:
            with Image.open(path) as im:
                im.size  # noqa: B018 - reading the header is the check
        except (OSError, ValueError, SyntaxError) as e:
            why = "not an image file" if "cannot identify image" in str(e) else first_line(e, 80)
            raise UserError(f"image {path} cannot be read ({why}); remove or replace it") from None


def _samples(s):
    if isinstance(s, torch.utils.data.Subset):
        return [s.dataset.samples[i] for i in s.indices]
    return s.samples


def _collate_present(batch):
    """default_collate over the samples that loaded (unreadable ones come back as None)."""
    from torch.utils.data import default_collate

    batch = [b for b in batch if b is not None]
    if not batch:
        return torch.zeros(0), torch.zeros(0, dtype=torch.long)
    return default_collate(batch)


class _Reseeded:
    """A DataLoader whose shuffle starts from the same seed on every pass: the same batches each time."""

    def __init__(self, loader, seed):
        self.loader, self.seed = loader, seed

    def __iter__(self):
        self.loader.generator.manual_seed(self.seed)
        return iter(self.loader)


class _Epochs:
    """A rank's DataLoader: a new sampler epoch (a new shuffle) on every pass; yields this rank's share."""

    sharded = True

    def __init__(self, loader, sampler):
        self.loader, self.sampler, self.epoch = loader, sampler, 0

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        if self.sampler is not None:
            self.sampler.set_epoch(self.epoch)
        self.epoch += 1
        return iter(self.loader)
