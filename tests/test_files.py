"""Atomic writes: a failure or a kill at any moment leaves the old file or the new one."""
import os
import subprocess
import sys

import pytest
import torch

from singe_deploy import files


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "state.pt"
    files.save_torch({"step": 1}, path)

    def broken(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space"):
        files.write_atomic(path, broken)
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_a_kill_between_writing_and_renaming_leaves_the_old_file(tmp_path):
    path = tmp_path / "state.pt"
    files.save_torch({"step": 1}, path)
    code = ("import sys, torch; from singe_deploy import files; "
            f"files.save_torch({{'step': 2}}, {str(path)!r})")
    r = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, SINGE_DEPLOY_FAULT="write:1"))
    assert r.returncode == -9
    assert torch.load(path, weights_only=True) == {"step": 1}
    files.save_torch({"step": 2}, path)
    assert torch.load(path, weights_only=True) == {"step": 2}


def test_written_files_get_the_usual_mode(tmp_path):
    path = tmp_path / "report.md"
    files.write_text(path, "# report")
    mask = os.umask(0)
    os.umask(mask)
    assert path.read_text() == "# report" and path.stat().st_mode & 0o777 == 0o666 & ~mask
