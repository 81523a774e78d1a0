"""Output folders: what --out may name, what --force may replace, and the hidden work folder a run writes in.

singe-deploy replaces only what it wrote. Every folder it writes carries a marker (MARKER, listing the entries it
wrote); --force replaces a folder only when the marker is there and nothing else is. The current folder, its
parents, / and $HOME are never replaced, nor is a file or a symlink. A run writes in `.<name>.partial` beside the
output, locked against a second run, and renames it into place at the end: an existing output is moved aside first
and removed only once the new one is in place.
"""
from __future__ import annotations

import fcntl
import fnmatch
import json
import os
import shutil
from pathlib import Path

from . import __version__
from .errors import UserError
from .files import partial, sync_dir, write_json

MARKER = ".singe-deploy.json"
# what older versions wrote before the marker existed: such a folder counts as ours when it holds only these
LEGACY = ("report.json", "report.md", "config.yaml", "pruned.pt", "*.onnx", "*.onnx.data", "*.engine",
          "*.engine.json", "compare.json", "compare.md", "compare.png", "runs", "started.json", "state.pt",
          "checkpoint.pt", "*.png")
STATE_FILES = ("state.pt", "checkpoint.pt")
_locks = {}  # work folder -> open fd holding its lock, for the life of the process


def protected(path):
    """Why `path` may never be replaced (None when it may): the current folder, a parent of it, / or $HOME."""
    p = Path(path).resolve()
    cwd = Path.cwd().resolve()
    if p == cwd:
        return "it is the current folder"
    if p == Path(p.anchor):
        return "it is the filesystem root"
    if p == Path.home().resolve():
        return "it is your home folder"
    if p in cwd.parents:
        return "it holds the current folder"
    return None


def foreign(folder):
    """Entries of `folder` that singe-deploy did not write (all of them when it carries no marker)."""
    folder = Path(folder)
    names = sorted(e.name for e in folder.iterdir())
    marker = folder / MARKER
    if marker.is_file():
        try:
            listed = json.loads(marker.read_text()).get("files", [])
        except (ValueError, OSError, AttributeError):
            return [n for n in names if n != MARKER]
        if listed is None:  # a work folder: everything in it is the run's
            return []
        ours = set(listed)
        return [n for n in names if n != MARKER and n not in ours]
    legacy = _legacy(folder)
    return [n for n in names if not (legacy and any(fnmatch.fnmatch(n, p) for p in LEGACY))]


def _legacy(folder):
    """An output of a version before the marker: report.json written by singe-deploy, or compare.json, or a work
    folder's resume state."""
    try:
        if (folder / "report.json").is_file():
            return json.loads((folder / "report.json").read_text()).get("tool", {}).get("name") == "singe-deploy"
    except (ValueError, OSError, AttributeError):
        return False
    return (folder / "compare.json").is_file() or folder.name.endswith(".partial")


def _names(entries, limit=3):
    more = f" and {len(entries) - limit} more" if len(entries) > limit else ""
    return ", ".join(entries[:limit]) + more


def check(out, force, resume=False, what="output folder", resumable=None):
    """Bad input about --out, before any work; returns the work folder. Refuses: a name that is not a folder's
    ('.', '..'), a protected path, a symlink, a file, an existing folder without --force, an existing folder with
    anything singe-deploy did not write, a work folder another run holds, and an interrupted run's work folder
    that neither --resume nor --force was given for. resumable: whether the work folder holds a run to continue
    (default: its resume state)."""
    out = Path(out)
    why = protected(out)
    if why:
        raise UserError(f"--out {out}: {why}, which singe-deploy never replaces; pass a new folder inside it, "
                        f"e.g. --out {out / 'run1'}")
    if out.name in ("", ".", ".."):
        raise UserError(f"--out {out} names no folder of its own; pass a new folder, e.g. --out {out / 'run1'}")
    if out.is_symlink():
        raise UserError(f"--out {out} is a symlink (to {os.readlink(out)}); pass the folder itself or a new one")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder; choose another --out (the file is left alone)")
    home = out.resolve().parent
    while not home.exists():
        home = home.parent
    if not os.access(home, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: {home} cannot be written (read-only or not yours); choose another --out")
    work = partial(out)
    resumable = has_state(work) if resumable is None else resumable
    if out.is_dir() and not (resume and resumable):
        if not force:
            raise UserError(f"{what} {out} exists; pass --force to replace it (only if singe-deploy wrote it) or "
                            "choose another --out")
        theirs = foreign(out)
        if theirs:
            raise UserError(f"--force: {out} holds files singe-deploy did not write ({_names(theirs)}); it replaces "
                            "only its own output folders: move them out or choose another --out")
    if work.is_symlink() or (work.exists() and not work.is_dir()):
        raise UserError(f"{work} (the hidden work folder of --out {out}) is not a folder singe-deploy made; move it "
                        "away or choose another --out")
    if work.is_dir():
        _probe_lock(work, out)
        theirs = foreign(work) if any(work.iterdir()) else []
        if theirs:
            raise UserError(f"{work} holds files singe-deploy did not write ({_names(theirs)}); move them away or "
                            "choose another --out")
        if not resume and not force and resumable:
            raise UserError(f"{work} holds an interrupted run; add --resume to continue it, or --force to discard it "
                            "and start over")
    return work


def _lock(work, out):
    """An open descriptor of `work` holding its exclusive lock; UserError when another run holds it."""
    fd = os.open(work, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UserError(f"another singe-deploy run is writing --out {out} (its work folder {work} is locked); wait "
                        "for it to end or choose another --out") from None
    return fd


def _probe_lock(work, out):
    os.close(_lock(work, out))  # closing the descriptor releases the lock


def begin(out, resume=False):
    """Create (or on resume reopen) the work folder of `out`, lock it for this process and mark it as ours; returns
    (work folder, whether its parent folder was created)."""
    out = Path(out)
    work = partial(out)
    made_parent = not work.parent.exists()
    work.mkdir(parents=True, exist_ok=True)
    _locks[str(work)] = _lock(work, out)
    for e in work.iterdir():  # ours (check() refused anything else): a discarded run's files, or on resume the
        # temporaries of writes a kill cut short (files.staged names them .NAME.*)
        if not resume or (e.name.startswith(".") and e.name != MARKER):
            shutil.rmtree(e) if e.is_dir() and not e.is_symlink() else e.unlink()
    mark(work, work_folder=True)
    return work, made_parent


def mark(folder, command="compress", work_folder=False):
    """Write the marker: every entry now in `folder` is singe-deploy's (in a work folder: whatever it will hold)."""
    folder = Path(folder)
    files = None if work_folder else sorted(e.name for e in folder.iterdir()
                                            if e.name != MARKER and not e.name.startswith(f".{MARKER}"))
    write_json(folder / MARKER, {"tool": "singe-deploy", "version": __version__, "command": command,
                                 "files": files})


def has_state(work):
    return any((Path(work) / s).is_file() for s in STATE_FILES)


def discard(work, made_parent=False):
    """Remove a work folder that holds nothing worth keeping (nothing resumable), and the parent folder this run
    created when it is left empty."""
    work = Path(work)
    release(work)
    if work.is_dir() and not foreign(work):
        shutil.rmtree(work, ignore_errors=True)
    if made_parent and work.parent.is_dir() and not any(work.parent.iterdir()):
        work.parent.rmdir()


def release(work):
    fd = _locks.pop(str(work), None)
    if fd is not None:
        os.close(fd)


def publish(work, out, command="compress"):
    """Rename the finished work folder to `out`. An existing `out` is moved aside and removed only once the new one
    is in place; if it gained files that are not singe-deploy's while the run was going, nothing is replaced and the
    result stays in the work folder (UserError)."""
    work, out = Path(work), Path(out)
    mark(work, command)
    aside = None
    if out.exists() or out.is_symlink():
        theirs = foreign(out) if out.is_dir() and not out.is_symlink() else [out.name]
        if theirs:
            raise UserError(f"{out} gained files singe-deploy did not write while it ran ({_names(theirs)}); "
                            f"nothing was replaced: the finished run is in {work}")
        aside = out.parent / f".{out.name}.replaced-{os.getpid()}"
        os.rename(out, aside)
    try:
        os.rename(work, out)
    except BaseException:
        if aside is not None:
            os.rename(aside, out)
        raise
    sync_dir(out.parent)
    release(work)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
