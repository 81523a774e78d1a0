"""Try singe-deploy's fault cases as a user would meet them and print one Markdown table: the case, the command,
the exit code, the message, and what was on disk before and after (docs/reliability.md).

    python tools/fault_cases.py [--only NAME,NAME] [--keep DIR]

Each case runs in a fresh folder under a temporary directory holding a file and a folder of the user's (which must
survive every case). Compress runs use a short schedule on Fashion-MNIST. The full-disk and read-only cases mount a
small tmpfs and need root; they are skipped, saying so, without it.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FAST = ["--criterion", "l2", "--steps", "2", "--finetune-iters", "10", "--epochs", "0.2", "--train-limit", "2048",
        "--val-limit", "256", "--calib-batches", "1", "--batch-sizes", "1", "--latency-iters", "3",
        "--latency-seconds", "0", "--parity-batches", "1"]
CLI = [sys.executable, "-m", "singe_deploy"]


def listing(root):
    """Every path under root but singe-deploy's hidden temporaries, as a short string."""
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*") if ".partial/" not in str(p.relative_to(root)))
    return ", ".join(n for n in names if n.count("/") < 2) or "(empty)"


def run(args, cwd, env=None, **kw):
    e = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run(CLI + args, cwd=cwd, env=e, capture_output=True, text=True, timeout=600, **kw)


def popen(args, cwd):
    return subprocess.Popen(CLI + args, cwd=cwd, env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as from a terminal


def until(p, prefix):
    for line in p.stdout:
        if line.startswith(prefix):
            return line
    return None


def message(r):
    err = [x for x in r.stderr.strip().splitlines() if x]
    out = [x for x in r.stdout.strip().splitlines() if "failed;" in x or x.startswith(("interrupted", "wrote"))]
    text = (err[-1] if err else "") + (f" / stdout: {out[-1]}" if out else "")
    return text.replace("|", "\\|")[:300]


def mounted(path, options):
    path.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                                           capture_output=True).returncode:
        return False
    return True


def cases(d):
    """(name, command shown, function returning the last CompletedProcess); d is the case's folder."""
    out = str(d / "run")

    def finished():
        r = run(["compress", "--out", out, "--no-export"] + FAST, d)
        assert r.returncode == 0, r.stderr
        return out

    def kill_after(line, sig, *extra):
        p = popen(["compress", "--out", out] + FAST + list(extra), d)
        until(p, line)
        time.sleep(0.3)
        p.send_signal(sig)
        rest, err = p.communicate(timeout=300)
        return subprocess.CompletedProcess(p.args, p.returncode, rest, err)

    def twice_ctrl_c():
        p = popen(["compress", "--out", out] + FAST, d)
        until(p, "step 1/2")
        p.send_signal(signal.SIGINT)
        time.sleep(0.05)
        p.send_signal(signal.SIGINT)
        rest, err = p.communicate(timeout=300)
        return subprocess.CompletedProcess(p.args, p.returncode, rest, err)

    def two_at_once():
        first = popen(["compress", "--out", out] + FAST, d)
        until(first, "dense ")
        second = run(["compress", "--out", out, "--force"] + FAST, d)
        first.communicate(timeout=600)
        return second

    def resumed(first):
        first()
        return run(["compress", "--out", out, "--resume"] + FAST, d)

    def imagefolder(kind):
        import numpy as np
        from PIL import Image

        for split in ("train", "val"):
            for cls in ("a", "b"):
                (d / "imgs" / split / cls).mkdir(parents=True)
                for i in range(4):
                    Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(d / "imgs" / split / cls / f"{i}.png")
        if kind == "empty":
            (d / "imgs" / "train" / "c").mkdir()
            (d / "imgs" / "val" / "c").mkdir()
        else:
            (d / "imgs" / "val" / "b" / "broken.png").write_bytes(b"\x89PNG garbage")
        return run(["compress", "--out", out, "--model", "builtin:resnet20", "--data", f"imagefolder:{d / 'imgs'}",
                    "--input-shape", "1,3,16,16"] + FAST, d)

    def full_disk():
        small = d / "small"
        if not mounted(small, "size=1200k"):
            return None
        return run(["compress", "--out", str(small / "run")] + FAST, d)

    def read_only():
        ro = d / "ro"
        if not mounted(ro, "ro,size=64k"):
            return None
        return run(["compress", "--out", str(ro / "run")] + FAST, d)

    def symlinked():
        target = finished()
        os.symlink(target, d / "link")
        return run(["compress", "--out", str(d / "link"), "--force"] + FAST, d)

    def env_run(fault):
        return run(["compress", "--out", out, "--checkpoint-minutes", "0"] + FAST, d, env={"SINGE_DEPLOY_FAULT": fault})

    return [
        ("--out . with --force", "compress --out . --force",
         lambda: run(["compress", "--out", ".", "--force"] + FAST, d)),
        ("--out a folder of the user's", "compress --out mine --force",
         lambda: run(["compress", "--out", "mine", "--force"] + FAST, d)),
        ("--out an existing file", "compress --out notes.txt --force",
         lambda: run(["compress", "--out", "notes.txt", "--force"] + FAST, d)),
        ("--out the parent folder", "compress --out .. --force",
         lambda: run(["compress", "--out", "..", "--force"] + FAST, d)),
        ("--out $HOME", "compress --out ~ --force", lambda: run(["compress", "--out", str(Path.home()), "--force"]
                                                                + FAST, d)),
        ("--out /", "compress --out / --force", lambda: run(["compress", "--out", "/", "--force"] + FAST, d)),
        ("--out a symlink to an output", "compress --out link --force", symlinked),
        ("--out an existing output, no --force", "compress --out run (twice)",
         lambda: (finished(), run(["compress", "--out", out] + FAST, d))[1]),
        ("--out an existing output with --force", "compress --out run --force (after a run)",
         lambda: (finished(), run(["compress", "--out", out, "--force", "--no-export"] + FAST, d))[1]),
        ("training set smaller than a batch", "compress --train-limit 10 --batch-size 128 --no-export",
         lambda: run(["compress", "--out", out, "--no-export"] + FAST + ["--train-limit", "10", "--batch-size",
                                                                       "128"], d)),
        ("opset below the exporter's", "compress --opset 11", lambda: run(["compress", "--out", out, "--opset", "11"]
                                                                           + FAST, d)),
        ("fine-tuning diverges", "compress --lr 1e9 --checkpoint-minutes 0",
         lambda: run(["compress", "--out", out, "--lr", "1e9", "--checkpoint-minutes", "0"] + FAST, d)),
        ("empty class folder", "compress --data imagefolder:imgs (imgs/train/c empty)", lambda: imagefolder("empty")),
        ("unreadable image", "compress --data imagefolder:imgs (imgs/val/b/broken.png)",
         lambda: imagefolder("broken")),
        ("corrupt checkpoint", "compress --checkpoint bad.pt",
         lambda: ((d / "bad.pt").write_bytes(b"PK\x03\x04 torn"),
                  run(["compress", "--out", out, "--checkpoint", "bad.pt"] + FAST, d))[1]),
        ("missing data folder", "compress --data-dir nowhere", lambda: run(["compress", "--out", out, "--data-dir",
                                                                            "nowhere"] + FAST, d)),
        ("--resume with nothing to resume", "compress --out run --resume",
         lambda: run(["compress", "--out", out, "--resume"] + FAST, d)),
        ("SIGKILL in a checkpoint write", "SINGE_DEPLOY_FAULT=write:14 compress ...", lambda: env_run("write:14")),
        ("... then --resume", "compress ... --resume", lambda: resumed(lambda: env_run("write:14"))),
        ("SIGKILL in fine-tuning, then --resume", "SINGE_DEPLOY_FAULT=finetune:15, then --resume",
         lambda: resumed(lambda: env_run("finetune:15"))),
        ("SIGKILL in the export, then --resume", "SINGE_DEPLOY_FAULT=export:1, then --resume",
         lambda: resumed(lambda: env_run("export:1"))),
        ("--resume with other options", "SIGKILL, then --resume --lr 0.1",
         lambda: (env_run("finetune:15"), run(["compress", "--out", out, "--resume", "--lr", "0.1"] + FAST, d))[1]),
        ("a new run over an interrupted one", "SIGKILL, then the same command without --resume",
         lambda: (env_run("finetune:15"), run(["compress", "--out", out] + FAST, d))[1]),
        ("Ctrl-C after step 1", "SIGINT after 'step 1/2'", lambda: kill_after("step 1/2", signal.SIGINT)),
        ("Ctrl-C twice", "SIGINT twice, 50 ms apart, after 'step 1/2'", twice_ctrl_c),
        ("SIGTERM before anything is resumable", "SIGTERM after 'dense'",
         lambda: kill_after("dense ", signal.SIGTERM, "--checkpoint-minutes", "5")),
        ("two runs into one --out at once", "compress --out run & compress --out run --force", two_at_once),
        ("read-only output folder", "compress --out ro/run (ro: a read-only mount)", read_only),
        ("full disk", "compress --out small/run (small: a 1.2 MB tmpfs)", full_disk),
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="comma-separated case names (substrings)")
    ap.add_argument("--keep", help="keep every case's folder under DIR")
    args = ap.parse_args()
    base = Path(args.keep or tempfile.mkdtemp(prefix="fault-cases-"))
    rows = ["| case | command | exit | message | on disk before | after |", "|---|---|---:|---|---|---|"]
    for i, (name, shown, _) in enumerate(cases(base)):  # the names; each case runs with its own folder
        if args.only and not any(o in name for o in args.only.split(",")):
            continue
        d = base / f"case{i:02d}"
        d.mkdir(parents=True)
        (d / "notes.txt").write_text("the user's")
        (d / "mine").mkdir()
        (d / "mine" / "thesis.tex").write_text("the user's")
        before = listing(d)
        t = time.time()
        r = cases(d)[i][2]()
        after = listing(d)
        lost = not ((d / "notes.txt").is_file() and (d / "mine" / "thesis.tex").is_file())
        for m in ("small", "ro"):
            subprocess.run(["umount", str(d / m)], capture_output=True)
        code = "skipped (needs root)" if r is None else r.returncode
        rows.append(f"| {name} | `{shown}` | {code} | {'' if r is None else message(r)} | {before} | {after}"
                    f"{' **USER FILES LOST**' if lost else ''} |")
        print(rows[-1], f"({time.time() - t:.0f} s)", file=sys.stderr, flush=True)
    print("\n".join(rows))
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
