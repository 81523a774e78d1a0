"""The load stage: a model and its data from specs, checked against each other (Source.from_config(cfg).load())."""
from __future__ import annotations

from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path

import torch

from .data.specs import make_data
from .errors import UserError, first_line
from .models.specs import default_input_shape, load_model, parse_spec, task_of

DEMO_MODEL, DEMO_DATA, DEMO_ASSET = "builtin:resnet20", "fashion-mnist", "resnet20_fashion_mnist.pt"
# the trained baselines singe-deploy ships (tools/train_baseline.py), used when --checkpoint is auto
BASELINES = {(DEMO_MODEL, DEMO_DATA): DEMO_ASSET, ("builtin:resnet56", "fashion-mnist"): "resnet56_fashion_mnist.pt"}


def asset_path(name):
    path = resources.files("singe_deploy").joinpath("assets", name)
    if not path.is_file():
        raise UserError(f"singe-deploy ships no asset '{name}'; reinstall the package or pass --checkpoint FILE")
    return Path(str(path))


@dataclass(frozen=True)
class Source:
    """What the load stage needs from a run's options: model and data specs, weights, batch and limits."""
    model: str = DEMO_MODEL
    checkpoint: str | None = "auto"
    pretrained: bool = False
    trust_checkpoint: bool = False
    data: str = DEMO_DATA
    data_dir: str | None = None
    input_shape: list | None = None  # 1,C,H,W; None: sample_shape decides
    num_classes: int | None = None
    batch_size: int = 128
    train_limit: int | None = None
    val_limit: int | None = None
    seed: int = 0
    augment: str = "auto"  # fine-tuning data augmentation: auto, on, off (data.make_data)
    holdout: float = 0.0  # training data set apart to judge steps by (accuracy budgets only)

    @classmethod
    def from_config(cls, cfg):
        given = {f.name: cfg.get(f.name, f.default) for f in fields(cls)}
        if cfg.get("max_accuracy_drop") is None:  # without a budget every training sample is fine-tuned on
            given["holdout"] = 0.0
        return cls(**given)

    @property
    def kind(self):
        return parse_spec(self.model)[0]

    def checkpoint_path(self):
        """The state dict to load: --checkpoint; for 'auto', the shipped baseline of this model and data, if any."""
        ck = self.checkpoint
        if ck in (None, "auto"):
            asset = BASELINES.get((self.model, self.data))
            return asset_path(asset) if asset and not self.pretrained else None
        if str(ck).lower() == "none":
            return None
        if str(ck).startswith("asset:"):
            return asset_path(ck.split(":", 1)[1])
        return Path(ck)

    def sample_shape(self):
        """(C, H, W) the model takes: see shape_and_why."""
        return self.shape_and_why()[0]

    def shape_and_why(self):
        """((C, H, W) the model takes, where it comes from, in words): --input-shape; else Fashion-MNIST's for builtin
        and file models on it; for an image folder its images' most common size (a zoo model's own size where the
        images are larger: photos are cropped to it as the model was trained); else the model's own default."""
        if self.input_shape:
            return tuple(self.input_shape[1:]), "--input-shape"
        if self.kind in ("builtin", "file") and self.data == "fashion-mnist":
            return (1, 28, 28), "Fashion-MNIST's images"
        default = default_input_shape(self.model)
        if self.data.startswith("imagefolder:"):
            from .data.specs import folder_image_size

            size, kinds = folder_image_size(self.data.split(":", 1)[1])
            if size is None:
                return default, f"{self.model}'s own size"
            mixed = f"; images of {kinds} sizes are resized to it" if kinds > 1 else ""
            if self.kind in ("builtin", "file") or max(size) <= max(default[1:]):
                return (default[0],) + size, f"the images' {'most common ' if kinds > 1 else ''}size{mixed}"
            return default, (f"{self.model}'s own size; the {size[0]}x{size[1]} images are cropped and resized to "
                             "it (--input-shape to choose)")
        if self.data == "fashion-mnist":
            return default, (f"{self.model}'s own size: Fashion-MNIST's 28x28 images are resized to "
                             f"{default[1]}x{default[2]} (--input-shape 1,{default[0]},28,28 runs them as they are)")
        return default, f"{self.model}'s own size"

    def _data(self, shape, classes=None):
        return make_data(self.data, self.batch_size, shape, self.data_dir, self.seed, self.train_limit,
                         self.val_limit, classes, augment=self.augment, holdout=self.holdout)

    def load(self, log=print):
        """(model, data, shape, checkpoint): every bad input (spec, file, shape, classes) is a UserError."""
        shape, why = self.shape_and_why()
        data = self._data(shape, self.num_classes)
        checkpoint = self.checkpoint_path()
        chosen = str(self.checkpoint).lower() == "none"  # random init asked for by name
        if data.real and checkpoint is None and not self.pretrained and self.kind != "file" and not chosen:
            log(f"warning: {self.model} starts from random weights (no --checkpoint, no --pretrained): its accuracy "
                "will be near chance; pass --checkpoint FILE (a state dict of your trained model) or --pretrained")
        classes = self.num_classes or (data.num_classes if data.real or self.kind == "builtin" else None)
        torch.manual_seed(self.seed)
        model = load_model(self.model, checkpoint, classes, shape[0], self.pretrained, self.trust_checkpoint)
        default = default_input_shape(self.model)
        if why.startswith("the images'") and shape != default and not _takes(model, shape):
            why = (f"{self.model}'s own size: it does not take the images' {shape[1]}x{shape[2]}, so they are resized "
                   "to it (--input-shape to choose)")
            shape = default
            data = self._data(shape, self.num_classes)
        log(f"input 1,{','.join(map(str, shape))} ({why})")
        data.shape_from = why
        outputs = check_forward(model, self.model, shape, data.num_classes if data.real else None)
        if not data.real and data.num_classes != outputs:  # random labels the model's head can score
            data = self._data(shape, outputs)
            data.shape_from = why
        return model, data, shape, checkpoint


@torch.no_grad()
def _takes(model, shape):
    try:
        model.eval()(torch.zeros((1,) + tuple(shape)))
        return True
    except Exception:  # noqa: BLE001 - any failure means this size is not the model's
        return False


@torch.no_grad()
def check_forward(model, spec, shape, classes):
    """The model's number of outputs on one zero sample of `shape`; a UserError if it fails or does not fit."""
    model.eval()
    try:
        out = model(torch.zeros((1,) + tuple(shape)))
    except Exception as e:
        raise UserError(f"{spec} fails on input shape 1,{','.join(map(str, shape))} ({first_line(e)}); "
                        "pass an --input-shape the model takes") from None
    dims = {"segmentation": 4, "detection": 3}.get(task_of(model))
    if dims and isinstance(out, torch.Tensor) and out.dim() == dims:  # maps (N, classes, H, W); anchors (N, A, k)
        return out.shape[1 if dims == 4 else 2]
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise UserError(f"{spec} must return (batch, classes) logits; it returned "
                        f"{getattr(out, 'shape', type(out).__name__)}")
    if classes and out.shape[1] != classes:
        raise UserError(f"{spec} has {out.shape[1]} outputs but the data has {classes} classes; "
                        "pass --num-classes or a checkpoint for these classes")
    return out.shape[1]
