"""Models from specs: `builtin:resnet20`, `torchvision:resnet50`, `timm:resnet50`, `file.py:factory`.

Checkpoints are state dicts read with `torch.load(weights_only=True)`; a file that needs unpickling
code is refused unless the caller passes trust=True (the CLI's --trust-checkpoint). A pruned model is
saved as its spec plus a state dict: loading builds the dense model and resizes each layer to the
saved tensors, so it needs no pickled code either.
"""
from __future__ import annotations

import difflib
import functools
import importlib.util
import inspect
import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError, first_line
from . import detection
from .attention import split_heads
from .resnet_cifar import resnet20, resnet56

BUILTINS = {"resnet20": resnet20, "resnet56": resnet56}
PRUNED_FORMAT = "singe-deploy/pruned-model/v1"


def parse_spec(spec):
    """Split 'kind:name'; 'path/to/file.py:factory' is kind 'file'."""
    if not isinstance(spec, str) or ":" not in spec:
        raise UserError(f"model spec '{spec}' has no kind; use builtin:resnet20, torchvision:NAME, "
                        "timm:NAME or path/to/file.py:factory")
    head, name = spec.rsplit(":", 1) if ".py:" in spec else spec.split(":", 1)
    if head.endswith(".py"):
        return "file", head, name
    if head not in ("builtin", "torchvision", "timm"):
        raise UserError(f"unknown model kind '{head}' in '{spec}'; use builtin:, torchvision:, timm: "
                        "or path/to/file.py:factory")
    return head, None, name


def _suggest(name, choices):
    close = difflib.get_close_matches(name, list(choices), n=3)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def torchvision_names():
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm)) + list(segmentation_names()) + list(detection.names())


@functools.cache
def segmentation_names():
    import torchvision.models as tvm

    return tuple(sorted(tvm.list_models(module=tvm.segmentation)))


def task_of(model):
    """'classification' (one class per image), 'segmentation' (maps: N, classes, H, W) or 'detection' (the dense
    part: N, anchors, scores and box deltas; see detection.py)."""
    return getattr(model, TASK, "classification")


def is_dense_output(model):
    """Whether the model predicts more than one class per image (segmentation maps, detection anchors)."""
    return task_of(model) != "classification"


TASK = "_singe_task"


def _main_output(module, inputs, output):
    """Forward hook: a segmentation model's {"out": ..., "aux": ...} becomes its "out" tensor, so counting,
    pruning, export and timing see one tensor; the state dict keeps torchvision's keys."""
    return output["out"] if isinstance(output, dict) else output


def default_input_shape(spec):
    """(C, H, W) the model expects when neither the data nor --input-shape says otherwise."""
    kind, _, name = parse_spec(spec)
    if kind == "torchvision":
        import torchvision.models as tvm

        try:
            size = tvm.get_model_weights(name).DEFAULT.transforms().crop_size[0]
        except Exception:  # models without weights enums
            size = 224
        return (3, size, size) if name not in detection.names() else (3,) + (detection.input_size(name),) * 2
    if kind == "timm":
        timm = _import_timm()
        cfg = timm.models.get_pretrained_cfg(name)
        size = getattr(cfg, "input_size", None) if cfg is not None else None
        return tuple(size) if size else (3, 224, 224)
    if kind == "builtin":
        return (3, 32, 32)
    return (3, 224, 224)


def _import_timm():
    try:
        import timm
    except ImportError:
        raise UserError("timm is not installed; run 'pip install timm' to use timm: specs") from None
    return timm


def build_model(spec, num_classes=None, in_channels=3, pretrained=False):
    """A fresh model for a spec (random init unless pretrained, which needs internet)."""
    kind, path, name = parse_spec(spec)
    if kind == "builtin":
        if name not in BUILTINS:
            raise UserError(f"unknown builtin model '{name}'{_suggest(name, BUILTINS)}; builtins: "
                            f"{', '.join(BUILTINS)}")
        return BUILTINS[name](num_classes=num_classes or 10, in_channels=in_channels)
    if kind == "torchvision":
        return _torchvision(name, num_classes, in_channels, pretrained)
    if kind == "timm":
        timm = _import_timm()
        if not timm.is_model(name):
            raise UserError(f"unknown timm model '{name}'{_suggest(name, timm.list_models())}")
        kwargs = {"in_chans": in_channels}
        if num_classes:
            kwargs["num_classes"] = num_classes
        return _with_network(lambda: timm.create_model(name, pretrained=pretrained, **kwargs), spec)
    return _from_file(path, name, num_classes, in_channels)


def _torchvision(name, num_classes, in_channels, pretrained):
    import torchvision.models as tvm

    names = torchvision_names()
    if name not in names:
        raise UserError(f"unknown torchvision model '{name}'{_suggest(name, names)}; "
                        "see torchvision.models.list_models()")
    if in_channels != 3:
        raise UserError(f"torchvision:{name} takes 3 input channels, not {in_channels}; fix --input-shape")
    segmentation, detecting = name in segmentation_names(), name in detection.names()
    if pretrained:
        model = _with_network(lambda: tvm.get_model(name, weights="DEFAULT"), f"torchvision:{name}")
        if segmentation:
            return _segmentation(model)
        if detecting:
            return detector(model)
        classes = _num_outputs(model)
        if num_classes and classes != num_classes:
            raise UserError(f"the pretrained torchvision:{name} has {classes} classes and the data has "
                            f"{num_classes}; fine-tune it for your classes and pass --checkpoint instead")
        return split_heads(model)
    kwargs = {"num_classes": num_classes} if num_classes else {}
    if name in ("inception_v3", "googlenet"):
        kwargs.update(aux_logits=False, init_weights=True)
    if segmentation:
        kwargs.update(weights_backbone=None, aux_loss=False)
        return _segmentation(tvm.get_model(name, weights=None, **kwargs))
    if detecting:
        return detector(tvm.get_model(name, weights=None, weights_backbone=None, **kwargs))
    return split_heads(tvm.get_model(name, weights=None, **kwargs))


def _segmentation(model):
    model.register_forward_hook(_main_output)
    setattr(model, TASK, "segmentation")
    return model


def detector(model):
    """A torchvision detector (any model built from its detection classes) as the dense network that prunes,
    exports and times; `detection.full_detector` gives the whole detector back."""
    setattr(model, TASK, detection.TASK)
    return detection.dense(model)


def _num_outputs(model):
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return last[-1].out_features if last else None


def _with_network(fn, spec):
    try:
        return fn()
    except (OSError, RuntimeError) as e:
        if "download" in str(e).lower() or "url" in str(e).lower() or isinstance(e, OSError):
            raise UserError(f"cannot download pretrained weights for {spec} ({e.__class__.__name__}); "
                            "drop --pretrained or pass --checkpoint FILE") from None
        raise


def _from_file(path, factory, num_classes, in_channels):
    file = Path(path)
    if not file.is_file():
        raise UserError(f"model file {file} does not exist; fix the path in the spec")
    mod_spec = importlib.util.spec_from_file_location(f"singe_user_{file.stem}", file)
    module = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(module)
    except Exception as e:
        raise UserError(f"importing {file} failed: {e.__class__.__name__}: {e}; fix that file") from None
    fn = getattr(module, factory, None)
    if not callable(fn):
        raise UserError(f"{file} has no callable '{factory}'{_suggest(factory, dir(module))}")
    params = inspect.signature(fn).parameters
    kwargs = {}
    if num_classes and "num_classes" in params:
        kwargs["num_classes"] = num_classes
    if "in_channels" in params:
        kwargs["in_channels"] = in_channels
    model = fn(**kwargs)
    if not isinstance(model, nn.Module):
        raise UserError(f"{file}:{factory} returned {type(model).__name__}, not a torch.nn.Module")
    return detector(model) if detection.is_detector(model) else model


def read_checkpoint(path, trust=False):
    """torch.load with weights_only unless trusted; one-line errors for missing or corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; fix the path")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as e:
        if not trust and "Unsupported global" in str(e):  # a class or function to import: pickled code
            raise UserError(f"checkpoint {path} holds pickled code, not just tensors; if you trust the "
                            "file, pass --trust-checkpoint (it runs that code)") from None
        raise UserError(f"checkpoint {path} is corrupt ({first_line(e)}); save it again with "
                        "torch.save(model.state_dict(), path)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise UserError(f"checkpoint {path} is corrupt ({first_line(e)}); save it again with "
                        "torch.save(model.state_dict(), path)") from None


def state_dict_of(obj, path):
    """The state dict inside what read_checkpoint returned."""
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                return obj[key]
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise UserError(f"checkpoint {path} holds no state dict; save it with torch.save(model.state_dict(), path)")


def load_weights(model, state, path, spec):
    """load_state_dict with a one-line explanation of any mismatch."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if shapes and not missing and not extra and _input_channels_differ(own, state, shapes):
        k = shapes[0]
        raise UserError(f"checkpoint {path} takes {state[k].shape[1]}-channel input ({k} is "
                        f"{tuple(state[k].shape)} in the file) but the model was built for {own[k].shape[1]} channels "
                        f"(--input-shape or the data's); pass --input-shape 1,{state[k].shape[1]},H,W or drop it")
    if missing or extra or shapes:
        first = (f"{shapes[0]} is {tuple(state[shapes[0]].shape)} in the file, {tuple(own[shapes[0]].shape)} "
                 "in the model" if shapes else f"first key: {(missing or extra)[0]}")
        raise UserError(f"checkpoint {path} does not fit {spec}: {len(missing)} missing, {len(extra)} unexpected, "
                        f"{len(shapes)} mis-shaped tensors ({first}); pass the spec and classes it was trained with")
    model.load_state_dict(state)
    return model


def _input_channels_differ(own, state, shapes):
    """Whether the only mis-shaped tensor is the first layer's weight, differing in its input channels alone."""
    first = next((k for k, v in own.items() if v.dim() >= 2), None)
    a, b = own[shapes[0]].shape, state[shapes[0]].shape
    return shapes == [first] and len(a) == len(b) and a[1] != b[1] and a[:1] + a[2:] == b[:1] + b[2:]


def load_model(spec, checkpoint=None, num_classes=None, in_channels=3, pretrained=False, trust=False):
    """Build a model for a spec and load a checkpoint: a state dict, or a pruned model saved by save_pruned."""
    if checkpoint is None:
        return build_model(spec, num_classes, in_channels, pretrained)
    obj = read_checkpoint(checkpoint, trust)
    if isinstance(obj, dict) and obj.get("format") == PRUNED_FORMAT:
        return load_pruned(checkpoint, obj=obj, spec=spec)
    if isinstance(obj, nn.Module) and trust:
        return obj
    model = build_model(spec, num_classes, in_channels, pretrained=False)
    return load_weights(model, state_dict_of(obj, checkpoint), checkpoint, spec)


def pruned_dict(model, spec, num_classes, in_channels, input_shape):
    """A (pruned) model as spec + state dict: what save_pruned writes and load_pruned reads."""
    return {"format": PRUNED_FORMAT, "spec": spec, "num_classes": num_classes, "in_channels": in_channels,
            "input_shape": list(input_shape), "state_dict": model.state_dict()}


def save_pruned(model, path, spec, num_classes, in_channels, input_shape):
    """Save a (pruned) model as spec + state dict, loadable with weights_only=True (atomically)."""
    from ..files import save_torch

    save_torch(pruned_dict(model, spec, num_classes, in_channels, input_shape), path)


def load_pruned(path, obj=None, spec=None):
    """Rebuild a model saved by save_pruned: dense model from its spec, layers resized to the file."""
    obj = obj if obj is not None else read_checkpoint(path)
    if not isinstance(obj, dict) or obj.get("format") != PRUNED_FORMAT:
        raise UserError(f"{path} is not a pruned model saved by singe-deploy; load it as a state dict")
    if spec and parse_spec(spec)[2] != parse_spec(obj["spec"])[2]:
        raise UserError(f"{path} is a pruned {obj['spec']}, not {spec}; pass --model {obj['spec']}")
    model = build_model(obj["spec"], obj["num_classes"], obj["in_channels"])
    resize_to(model, obj["state_dict"])
    return load_weights(model, obj["state_dict"], path, obj["spec"])


def resize_to(model, state):
    """Give every parameter and buffer the shape it has in `state` and fix the layers' size attributes."""
    own = model.state_dict(keep_vars=True)  # the file's keys (a module may name its tensors itself: attention.py)
    where = {id(t): (m, n) for m in model.modules()
             for n, t in list(m._parameters.items()) + list(m._buffers.items()) if t is not None}
    for key, value in state.items():
        current = own.get(key)
        if not isinstance(current, torch.Tensor) or current.shape == value.shape or id(current) not in where:
            continue
        owner, attr = where[id(current)]
        fresh = torch.empty(value.shape, dtype=current.dtype)
        if isinstance(current, nn.Parameter):
            setattr(owner, attr, nn.Parameter(fresh, requires_grad=current.requires_grad))
        else:
            owner.register_buffer(attr, fresh)
    return fix_size_attributes(model)


def fix_size_attributes(model):
    """Make every layer's size attributes (in/out channels, features, embed width, a ViT's hidden_dim) agree
    with its tensors, after pruning or resizing: forward passes that read them (reshapes) keep working."""
    for m in model.modules():
        _fix_size_attributes(m)
    return model


def has_head_attributes(m):
    """An attention block shaped like timm's Attention: one qkv Linear, and num_heads, head_dim and attn_dim."""
    return isinstance(getattr(m, "qkv", None), nn.Linear) and all(
        isinstance(getattr(m, a, None), int) for a in ("num_heads", "head_dim", "attn_dim"))


def _fix_size_attributes(m):
    if isinstance(m, nn.modules.conv._ConvNd):
        w = m.weight
        if m.transposed:
            new_in, new_out = w.shape[0], w.shape[1] * m.groups
        else:
            depthwise = m.groups > 1 and m.groups == m.in_channels and w.shape[1] == 1
            if depthwise:
                m.groups = w.shape[0] // (m.out_channels // m.in_channels)
            new_out, new_in = w.shape[0], w.shape[1] * m.groups
        m.in_channels, m.out_channels = new_in, new_out
    elif isinstance(m, nn.Linear):
        m.out_features, m.in_features = m.weight.shape
    elif isinstance(m, nn.modules.batchnorm._NormBase):
        ref = m.weight if m.weight is not None else m.running_mean
        m.num_features = ref.shape[0]
    elif isinstance(m, nn.LayerNorm) and m.weight is not None:
        m.normalized_shape = tuple(m.weight.shape)
    elif isinstance(m, nn.GroupNorm) and m.weight is not None:
        m.num_channels = m.weight.shape[0]
    elif isinstance(m, nn.MultiheadAttention) and m._qkv_same_embed_dim:
        m.embed_dim = m.kdim = m.vdim = m.in_proj_weight.shape[1]
        m.head_dim = m.embed_dim // m.num_heads
    elif type(m).__name__ == "VisionTransformer" and hasattr(m, "conv_proj"):  # torchvision's reads hidden_dim
        m.hidden_dim = m.conv_proj.weight.shape[0]
    elif has_head_attributes(m) and m.qkv.weight.shape[0] % (3 * m.head_dim) == 0:
        # timm's Attention after whole heads went: the head count follows q/k/v's width
        m.num_heads = m.qkv.weight.shape[0] // (3 * m.head_dim)
        m.attn_dim = m.num_heads * m.head_dim
