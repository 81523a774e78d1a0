"""`--nproc N`: start N workers with PyTorch's own launcher (torchrun), and read back their exit codes.

The launcher runs in this process (torch.distributed.run), standalone on this machine; each worker runs
`python -m singe_deploy` with the same arguments and, seeing WORLD_SIZE, does its rank's share. Workers
record their exit code in a folder the launcher gives them, so bad input still exits 2 and a failed
check 1. For several machines, run torchrun yourself on each (README: multi-node).
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

EXIT_DIR = "SINGE_DEPLOY_EXIT_DIR"


def launched():
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def record_exit(code):
    folder = os.environ.get(EXIT_DIR)
    if folder and launched():
        Path(folder, f"rank{os.environ.get('RANK', '0')}").write_text(str(code))


def torchrun(nproc, argv):
    """Run `singe-deploy ARGV` on nproc local workers; returns the run's exit code (2 when any rank
    had bad input, else 1 when any failed, else 0)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    from ..measure.device import physical_cores

    folder = tempfile.mkdtemp(prefix="singe-deploy-ranks-")
    saved = {k: os.environ.get(k) for k in (EXIT_DIR, "OMP_NUM_THREADS")}
    os.environ[EXIT_DIR] = folder
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, physical_cores() // nproc)))
    quiet = [logging.getLogger(n) for n in ("torch.distributed.run", "torch.distributed.elastic")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.CRITICAL)  # the workers print their own errors; no launcher summary
    args = get_args_parser().parse_args(["--standalone", "--nproc-per-node", str(nproc), "--max-restarts", "0",
                                         "--module", "singe_deploy"])
    args.training_script_args = list(argv)  # given apart: torchrun's parser would read our flags as its own
    failed = False
    try:
        run(args)
    except ChildFailedError:
        failed = True
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        codes = [int(f.read_text() or 1) for f in Path(folder).glob("rank*")]
        shutil.rmtree(folder, ignore_errors=True)
    if 2 in codes:
        return 2
    if failed or any(codes) or len(codes) < nproc:
        return 1
    return 0
