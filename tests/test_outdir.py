"""Output folders: singe-deploy replaces only what it wrote, and refuses the rest before any work."""
import json
import os
from pathlib import Path

import pytest

from singe_deploy import outdir
from singe_deploy.errors import UserError
from singe_deploy.files import partial


def _finished(out):
    """A finished output folder as compress leaves it."""
    work, _ = outdir.begin(out)
    (work / "report.json").write_text("{}")
    outdir.publish(work, out)
    return out


def test_a_published_folder_carries_a_marker_listing_what_it_wrote(tmp_path):
    out = _finished(tmp_path / "run")
    marker = json.loads((out / outdir.MARKER).read_text())
    assert marker["tool"] == "singe-deploy" and marker["files"] == ["report.json"]
    assert outdir.foreign(out) == [] and not partial(out).exists()


def test_force_replaces_only_a_folder_singe_deploy_wrote(tmp_path):
    out = _finished(tmp_path / "run")
    assert outdir.check(out, force=True) == partial(out)
    with pytest.raises(UserError, match="exists; pass --force"):
        outdir.check(out, force=False)
    (out / "thesis.tex").write_text("mine")
    with pytest.raises(UserError, match=r"did not write \(thesis.tex\)"):
        outdir.check(out, force=True)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"did not write \(notes.txt\)"):
        outdir.check(mine, force=True)
    assert (mine / "notes.txt").read_text() == "mine" and (out / "thesis.tex").read_text() == "mine"


@pytest.mark.parametrize("where", [".", "..", "cwd", "parent", "home", "root"])
def test_the_current_folder_its_parents_home_and_root_are_never_replaced(tmp_path, monkeypatch, where):
    cwd = tmp_path / "project" / "sub"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HOME", str(tmp_path / "project"))
    path = {".": Path("."), "..": Path(".."), "cwd": cwd, "parent": tmp_path, "home": tmp_path / "project",
            "root": Path("/")}[where]
    with pytest.raises(UserError, match="--out"):
        outdir.check(path, force=True)


def test_a_file_and_a_symlink_are_refused(tmp_path):
    f = tmp_path / "model.onnx"
    f.write_text("x")
    with pytest.raises(UserError, match="is a file"):
        outdir.check(f, force=True)
    target = _finished(tmp_path / "real")
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(UserError, match="is a symlink"):
        outdir.check(link, force=True)
    assert f.read_text() == "x" and link.is_symlink()


def test_an_interrupted_run_is_kept_unless_resumed_or_forced(tmp_path):
    out = tmp_path / "run"
    work, _ = outdir.begin(out)
    (work / "state.pt").write_bytes(b"state")
    outdir.release(work)
    with pytest.raises(UserError, match="holds an interrupted run; add --resume"):
        outdir.check(out, force=False)
    assert outdir.check(out, force=False, resume=True) == work
    assert outdir.check(out, force=True) == work
    assert (work / "state.pt").read_bytes() == b"state"


def test_a_second_run_into_the_same_out_is_refused_while_the_first_holds_it(tmp_path):
    out = tmp_path / "run"
    work, _ = outdir.begin(out)
    with pytest.raises(UserError, match="another singe-deploy run is writing"):
        outdir.check(out, force=True)
    with pytest.raises(UserError, match="another singe-deploy run is writing"):
        outdir.begin(out)
    outdir.release(work)
    outdir.check(out, force=True)


def test_publish_moves_the_old_output_aside_until_the_new_one_is_in_place(tmp_path, monkeypatch):
    out = _finished(tmp_path / "run")
    work, _ = outdir.begin(out)
    (work / "report.json").write_text('{"new": 1}')
    real = os.rename
    calls = []

    def failing(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if Path(src) == work:
            raise OSError("disk gone")
        return real(src, dst)

    monkeypatch.setattr(os, "rename", failing)
    with pytest.raises(OSError):
        outdir.publish(work, out)
    monkeypatch.setattr(os, "rename", real)
    assert (out / "report.json").read_text() == "{}" and (work / "report.json").read_text() == '{"new": 1}'
    assert calls[0] == ("run", f".run.replaced-{os.getpid()}")
    outdir.publish(work, out)
    assert (out / "report.json").read_text() == '{"new": 1}' and not list(tmp_path.glob(".run.*"))


def test_files_added_to_the_output_during_a_run_stop_the_replacement(tmp_path):
    out = _finished(tmp_path / "run")
    work, _ = outdir.begin(out)
    (out / "mine.txt").write_text("mine")
    with pytest.raises(UserError, match=r"gained files .*\(mine.txt\).*the finished run is in"):
        outdir.publish(work, out)
    assert (out / "mine.txt").is_file() and work.is_dir()


def test_an_output_of_an_older_version_counts_as_ours(tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    (old / "report.json").write_text(json.dumps({"tool": {"name": "singe-deploy"}}))
    (old / "pruned.onnx").write_text("x")
    assert outdir.foreign(old) == []
    (old / "draft.docx").write_text("mine")
    assert outdir.foreign(old) == ["draft.docx"]


def test_a_resumed_work_folder_drops_the_temporaries_of_cut_short_writes_and_keeps_the_state(tmp_path):
    out = tmp_path / "run"
    work, _ = outdir.begin(out)
    (work / "state.pt").write_bytes(b"state")
    (work / ".state.pt.abc123.pt").write_bytes(b"half")  # a write killed before its rename
    outdir.release(work)
    outdir.begin(out, resume=True)
    assert sorted(p.name for p in work.iterdir()) == [outdir.MARKER, "state.pt"]
