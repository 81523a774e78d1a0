"""Writing output files atomically: a hidden temporary beside the target, fsynced, renamed only when complete.

A kill at any moment leaves either the old file or the new one, never a torn one."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from . import faults
from .errors import UserError


def staged(path, write):
    """Call write(tmp_path) for a hidden temporary beside `path`; returns the temporary, fsynced (removed on
    failure). Rename it into place with os.replace once everything that belongs together is written."""
    path = Path(path)
    if not path.parent.is_dir():
        raise UserError(f"cannot write {path}: folder {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs get the user's usual mode
        _fsync(tmp)
        return tmp
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.filename is None and e.errno is not None:  # a failed write() names no file: name the one written
            e.filename = str(path)
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def partial(out):
    """The hidden folder an output folder is written in, renamed to `out` when complete (and resumed from)."""
    out = Path(out)
    return out.parent / f".{out.name}.partial"


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_dir(folder):
    """fsync a folder, so that a rename in it survives a power cut."""
    try:
        _fsync(folder)
    except OSError:  # some filesystems refuse to fsync a folder; the rename is atomic all the same
        pass


def write_atomic(path, write):
    """Write one file atomically through write(tmp_path)."""
    tmp = staged(path, write)
    faults.point("write")
    os.replace(tmp, path)
    sync_dir(Path(path).parent)


def write_text(path, text):
    """A text file, atomically."""
    write_atomic(path, lambda tmp: Path(tmp).write_text(text))


def write_json(path, obj, indent=2):
    write_text(path, json.dumps(obj, indent=indent))


def save_torch(obj, path):
    """torch.save, atomically (checkpoints and resume state). Serialised in memory first, so that a full disk is an
    OSError naming the file rather than torch's own error about its zip writer."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_atomic(path, lambda tmp: Path(tmp).write_bytes(buf.getbuffer()))


def onnx_metadata(path):
    """singe-deploy's metadata in an ONNX file (model spec, variant), {} when absent or unreadable."""
    try:
        import onnx
    except ImportError:
        return {}
    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - onnxruntime reports unreadable files with a better message
        return {}
    return {p.key.split(".", 1)[1]: p.value for p in m.metadata_props if p.key.startswith("singe_deploy.")}
