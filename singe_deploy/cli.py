"""singe-deploy: the command line. Bad input exits 2 with one line, a failed check exits 1."""
from __future__ import annotations

import argparse
import difflib
import errno
import os
import sys
import warnings

from . import __version__
from .errors import CheckFailed, UserError, first_line


def _parser():
    ap = argparse.ArgumentParser(prog="singe-deploy", description="Prune a vision model with SInGE, export it, "
                                 "check it and measure it.")
    ap.add_argument("--version", action=_Version, nargs=0, help="the versions of singe-deploy and of the libraries "
                    "it runs on, then exit")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    from .config import add_arguments

    c = sub.add_parser("compress", help="score, prune, fine-tune, export and report (no options: the demo)",
                       description="Score channels, prune them in an entwined prune/fine-tune flowchart, export, "
                       "check parity, measure latency and write a report. With no options it runs the demo: the "
                       "shipped builtin:resnet20 Fashion-MNIST baseline pruned to 2x fewer MACs.")
    add_arguments(c)
    from .commands import flops as flops_command

    f = sub.add_parser("flops", help="MACs, params and other ops of a model, a pruned .pt or an .onnx file",
                       description="Count MACs (multiply-accumulates), params and other ops per sample, per layer "
                       "if asked, and with --onnx-check count them again from the exported ONNX graph.")
    flops_command.add_arguments(f)
    from .commands.compare import add_compare_arguments

    k = sub.add_parser("compare", help="every criterion through the same flowchart, seeds and data order",
                       description="Run compress (without export) for each criterion x MACs reduction x seed, "
                       "and with --one-shot also as one-shot pruning, then write compare.json, compare.md (mean +- "
                       "std, best marked) and compare.png. Defaults: a short schedule (2 steps, 30 iterations, "
                       "0.2 final epochs, no distillation) that takes under 20 minutes on 2 cores for the demo model.")
    add_compare_arguments(k)
    from .commands import bench as bench_command
    from .commands import check, merge

    b = sub.add_parser("bench", help="latency of .onnx files, engines or pruned models on this device",
                       description=bench_command.__doc__.split("\n\n")[0] + " onnxruntime needs neither torch "
                       "nor torch-pruning; the latency file carries a device block for report merge.")
    bench_command.add_arguments(b)
    r = sub.add_parser("report", help="join reports and latency files from several devices (report merge)")
    rs = r.add_subparsers(dest="report_command", metavar="ACTION", required=True)
    m = rs.add_parser("merge", help="one Markdown table and a PNG chart from reports and latency files",
                      description=merge.__doc__.split("\n\n")[0])
    merge.add_arguments(m)
    from .commands import quantize as quantize_command

    q = sub.add_parser("quantize", help="an int8 or fp16 ONNX file from an fp32 one, its accuracy measured",
                       description=quantize_command.__doc__.split("\n\n")[0])
    quantize_command.add_arguments(q)
    c2 = sub.add_parser("check", help="check a report.json or an .onnx file against a budget (exit 1 on a miss)",
                        description=check.__doc__.split("\n\n")[0])
    check.add_arguments(c2)
    ap.commands = {"compress": c, "flops": f, "compare": k, "bench": b, "report": m, "quantize": q, "check": c2}
    return ap


LIBRARIES = ("torch", "torchvision", "torch-pruning", "onnx", "onnxruntime")


def version_text():
    """singe-deploy's version and those of the libraries it runs on, read from the installed metadata (nothing
    imported, so it answers even where torch is broken)."""
    from importlib import metadata

    def installed(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    return f"singe-deploy {__version__} (" + ", ".join(f"{n} {installed(n)}" for n in LIBRARIES) + ")"


class _Version(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit()


def _parse(argv):
    """The parsed arguments; an unknown option gets the sub-command's usage and the closest option (exit 2)."""
    ap = _parser()
    args, extra = ap.parse_known_args(argv)
    if not extra:
        return args
    parser = ap.commands.get(args.command, ap)
    unknown = next((a for a in extra if a.startswith("-")), extra[0])
    options = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
    close = difflib.get_close_matches(unknown.split("=")[0], options, n=1, cutoff=0.6)
    where = f"singe-deploy {args.command} --help" if args.command else "singe-deploy --help"
    hint = f"did you mean {close[0]}?" if close else f"see '{where}'"
    usage = parser.format_usage()
    if usage.count("\n") > 4:  # compress's options fill a screen: name them, not list them
        usage = f"usage: {parser.prog} [OPTIONS] (every option: {where})\n"
    sys.stderr.write(usage)
    parser.exit(2, f"{parser.prog}: error: unrecognized argument {unknown.split('=')[0]}; {hint}\n")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    code = _main(argv)
    from .training import launch

    launch.record_exit(code)  # under torchrun: the launcher reads every rank's exit code
    return code


def _main(argv):
    args = _parse(argv)
    if args.command is None:
        _parser().print_help()
        return 2
    try:
        if args.command == "compress":
            from .config import resolve
            from .training import launch

            cfg = resolve(args)
            if cfg["nproc"] > 1 and not launch.launched():
                return launch.torchrun(cfg["nproc"], argv)
            from .compress import run

            try:
                run(cfg)
            finally:
                from .training import distributed

                distributed.shutdown()  # under torchrun: leave the process group (imports go distributed -> launch)
        elif args.command == "compare":
            from .commands.compare import run

            run(args)
        elif args.command == "flops":
            from .commands.flops import run

            return run(args)
        elif args.command == "bench":
            from .commands.bench import run

            return run(args)
        elif args.command == "report":
            from .commands.merge import run

            return run(args)
        elif args.command == "quantize":
            from .commands.quantize import run

            return run(args)
        elif args.command == "check":
            from .commands.check import run

            return run(args)
        return 0
    except UserError as e:
        print(f"singe-deploy: error: {e}", file=sys.stderr)
        return 2
    except CheckFailed as e:
        print(f"singe-deploy: check failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        _ignore_interrupts()  # a second Ctrl-C while this one is handled ends nothing more
        print("singe-deploy: interrupted", file=sys.stderr)
        return 130
    except MemoryError as e:
        return _out_of_memory(e, args)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            return _unexpected(e)
        where = f" writing {e.filename}" if e.filename else ""
        print(f"singe-deploy: error: {os.strerror(e.errno).lower()}{where}; free space or choose another --out",
              file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - one line; the traceback goes to a file, not over the user's screen
        if _is_oom(e):
            return _out_of_memory(e, args)
        from .training import launch

        lost = ("closed by peer", "timed out", "timeout", "connection reset")
        if launch.launched() and any(w in str(e).lower() for w in lost):  # a peer failed: its own error says why
            print(f"singe-deploy: error: rank {os.environ.get('RANK', '?')} stopped because another rank failed or "
                  f"did not answer ({first_line(e, 120)})", file=sys.stderr)
            return 1
        return _unexpected(e)


def _unexpected(e):
    """A bug, most likely: one line, and the traceback in a file (SINGE_DEPLOY_TRACEBACK=1 prints it instead)."""
    if os.environ.get("SINGE_DEPLOY_TRACEBACK"):
        raise e
    where = getattr(e, "kept", None) or _traceback_file(e)
    print(f"singe-deploy: error: {e.__class__.__name__}: {first_line(e, 200)} (unexpected; the traceback is in "
          f"{where}: please report it)", file=sys.stderr)
    return 1


def _ignore_interrupts():
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _is_oom(e):
    return e.__class__.__name__ == "OutOfMemoryError" or "out of memory" in str(e).lower()


def _out_of_memory(e, args):
    size = getattr(args, "batch_size", None) or (128 if args.command in ("compress", "compare") else None)
    hint = f"--batch-size {max(1, int(size) // 2)}" if size else "a smaller --batch-size"
    print(f"singe-deploy: error: out of memory ({first_line(e, 100)}); try {hint}"
          + (" and --resume to continue from the last checkpoint" if args.command == "compress" else ""),
          file=sys.stderr)
    return 2


def _traceback_file(e):
    import tempfile
    import traceback

    fd, path = tempfile.mkstemp(prefix="singe-deploy-traceback-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        f.write("".join(traceback.format_exception(e)))
    return path


def entry():
    warnings.filterwarnings("ignore", module=r"torch_pruning(\.|$)")  # tracing notes, not for users
    sys.exit(main())


if __name__ == "__main__":
    entry()
