"""Writing output files atomically: a hidden temporary beside the target, renamed only when complete."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import UserError


def staged(path, write):
    """Call write(tmp_path) for a hidden temporary beside `path`; returns the temporary (removed on failure).
    Rename it into place with os.replace once everything that belongs together is written."""
    path = Path(path)
    if not path.parent.is_dir():
        raise UserError(f"cannot write {path}: folder {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs get the user's usual mode
        return tmp
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


def write_atomic(path, write):
    """Write one file atomically through write(tmp_path)."""
    os.replace(staged(path, write), path)


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
