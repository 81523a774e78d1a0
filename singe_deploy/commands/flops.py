"""`singe-deploy flops`: MACs, params and other ops of a model spec, a pruned model (.pt) or an ONNX file,
optionally counted a second way from the exported ONNX graph."""
from __future__ import annotations

import json

from ..errors import CheckFailed, UserError, first_line


def add_arguments(p):
    p.add_argument("spec", metavar="SPEC", help="model spec (builtin:resnet20, torchvision:NAME, timm:NAME, "
                   "file.py:factory), a pruned model saved by compress (pruned.pt) or an .onnx file")
    p.add_argument("--input-shape", metavar="1,C,H,W", help="input shape (default: the model's own)")
    p.add_argument("--num-classes", type=int, metavar="N", help="classes of the model's head (default: the model's)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--per-layer", action="store_true", help="list every layer")
    p.add_argument("--onnx-check", action="store_true",
                   help="export to ONNX and count the graph too; exit 1 when the MACs differ by more than 0.1%%")


def parse_shape(text):
    if text is None:
        return None
    try:
        shape = [int(v) for v in str(text).split(",")]
    except ValueError:
        shape = []
    if len(shape) < 2 or any(v < 1 for v in shape):
        raise UserError(f"--input-shape must be positive integers like 1,3,224,224, got '{text}'")
    return shape


def load(spec, shape, num_classes):
    """(model, full input shape) for a model spec or a pruned .pt file."""
    from ..models.specs import (
        PRUNED_FORMAT,
        default_input_shape,
        load_pruned,
        parse_spec,
        read_checkpoint,
    )

    if spec.endswith((".pt", ".pth")) and ".py:" not in spec:
        obj = read_checkpoint(spec)
        if not isinstance(obj, dict) or obj.get("format") != PRUNED_FORMAT:
            raise UserError(f"{spec} is not a pruned model saved by singe-deploy; pass the model spec instead "
                            "(weights do not change MACs)")
        return load_pruned(spec, obj=obj), shape or list(obj["input_shape"])
    from ..models.specs import build_model

    parse_spec(spec)
    shape = shape or [1, *default_input_shape(spec)]
    return build_model(spec, num_classes, shape[1] if len(shape) > 2 else 3), shape


def run(args):
    shape = parse_shape(args.input_shape)
    if args.num_classes is not None and args.num_classes < 1:
        raise UserError(f"--num-classes must be >= 1, got {args.num_classes}")
    if args.spec.endswith(".onnx"):
        from ..measure import onnx_flops

        if args.onnx_check:
            raise UserError(f"{args.spec} is already an ONNX graph; --onnx-check compares a model spec or a "
                            "pruned .pt with its export, drop it or pass the model")

        graph = onnx_flops.count(args.spec, shape)
        result = dict(spec=args.spec, source="onnx graph", flops=2 * graph.macs, other_ops=None,
                      convention=onnx_flops.CONVENTION, **graph.to_dict(args.per_layer))
        print(json.dumps(result, indent=1) if args.json else text_onnx(result))
        return 0
    from ..measure.flops import count, cross_check, disagreement

    model, shape = load(args.spec, shape, args.num_classes)
    try:
        costs = count(model, shape)
    except Exception as e:
        raise UserError(f"{args.spec} fails on input shape {','.join(map(str, shape))} ({first_line(e)}); "
                        "pass an --input-shape the model takes") from None
    result = dict(spec=args.spec, source="model", flops=2 * costs.macs, **costs.to_dict(args.per_layer))
    if args.per_layer:
        for layer in result["layers"]:
            layer["share"] = layer["macs"] / costs.macs if costs.macs else 0.0
    if args.onnx_check:
        result["onnx"] = cross_check(model, costs)
    print(json.dumps(result, indent=1) if args.json else text(result))
    check = result.get("onnx")
    if check and not check["agree"]:
        raise CheckFailed(disagreement(check, "listed above"))
    return 0


def _n(v):
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if v >= scale:
            return f"{v:,} ({v / scale:.3f} {unit})"
    return f"{v:,}"


def text(r):
    shape = "x".join(map(str, r["input_shape"]))
    lines = [f"{r['spec']} at {shape} (per sample)",
             f"  MACs       {_n(r['macs'])}   FLOPs = 2 x MACs = {r['flops'] / 1e9:.3f} G",
             f"  params     {_n(r['params'])}",
             f"  other ops  {_n(r['other_ops'])}   (norms, activations, adds, pooling: 1 per output element)"]
    if "layers" in r:
        lines += ["", layer_table(r["layers"])]
    check = r.get("onnx")
    if check:
        lines += ["", f"  ONNX graph (opset {check['opset']}): MACs {check['macs']:,} "
                  f"({100 * check['macs_rel_diff']:+.3f}%: {'agrees' if check['macs_agree'] else 'DIFFERS'}), "
                  f"params {check['params']:,}"]
        if check["folded_norms"]:
            lines.append(f"    the exporter folded {check['folded_norms']} norm layers into their convs: "
                         f"-{check['folded_params']:,} norm params, +{check['added_biases']:,} conv biases "
                         f"-> {check['params_expected']:,} expected, "
                         f"{'matches' if check['params_agree'] else 'does NOT match'}")
        if not check["macs_agree"]:
            lines.append("    where they differ:")
            lines += [f"      {d['layer']:40s} model {d['model']:>16,}  onnx {d['onnx']:>16,}"
                      for d in check["layer_differences"]]
    lines += ["", "  convention: " + r["convention"]]
    return "\n".join(lines)


def layer_table(layers):
    rows = [f"  {'layer':40s} {'type':18s} {'in->out':>11s} {'MACs':>15s} {'share':>6s} {'params':>11s} {'other ops':>11s}"]
    for layer in layers:
        ch = f"{layer['in_channels']}->{layer['out_channels']}" if layer.get("in_channels") is not None else ""
        share = f"{100 * layer['share']:.1f}%" if layer.get("macs") else ""
        rows.append(f"  {layer['name'][:40]:40s} {layer['type'][:18]:18s} {ch:>11s} {layer['macs']:>15,} "
                    f"{share:>6s} {layer['params']:>11,} {layer['other_ops']:>11,}")
    return "\n".join(rows)


def text_onnx(r):
    shape = "x".join(map(str, r["input_shape"]))
    lines = [f"{r['spec']} at {shape} (per sample, ONNX graph, opset {r['opset']})",
             f"  MACs       {_n(r['macs'])}   FLOPs = 2 x MACs = {r['flops'] / 1e9:.3f} G",
             f"  params     {_n(r['params'])}   (float initializers; norms folded into convs count as conv biases)"]
    if r["uncounted_ops"]:
        lines.append(f"  not counted: {len(r['uncounted_ops'])} MAC ops this counter does not read "
                     f"({', '.join(r['uncounted_ops'][:5])})")
    if "layers" in r:
        lines += [""] + [f"  {k[:50]:50s} {v:>16,}" for k, v in r["layers"].items()]
    lines += ["", "  convention: " + r["convention"]]
    return "\n".join(lines)

