import json

import pytest

from singe_deploy.cli import main

from .test_bench import FAST, _without_torch


@pytest.fixture(scope="module")
def fleet(compressed, tmp_path_factory):
    """Latency files from two named devices plus the compress report."""
    d = tmp_path_factory.mktemp("fleet")
    for name in ("jetson", "laptop"):
        assert main(["bench", str(compressed), "--device-name", name, "--batch-sizes", "1,4",
                     "--out", str(d / f"{name}.json")] + FAST) == 0
    return d


def _rows(md):
    return [line for line in md.splitlines() if line.startswith("| tests/conftest.py:tiny_factory")]


def test_merge_joins_devices_backends_and_batches(compressed, fleet, tmp_path, capsys):
    out = tmp_path / "fleet.md"
    files = [str(fleet / "jetson.json"), str(fleet / "laptop.json"), str(compressed / "report.json")]
    assert main(["report", "merge", *files, "--out", str(out)]) == 0
    md = out.read_text()
    rows = _rows(md)
    assert len(rows) == 2 * 2 + 2  # 2 devices x 2 batches from bench, 2 batches from the report's own device
    report = json.loads((compressed / "report.json").read_text())
    macs = report["dense"]["macs"] / report["pruned"]["macs"]
    jetson = [r for r in rows if "| jetson (" in r]
    assert [r.split(" | ")[3] for r in jetson] == ["1", "4"]
    for r in rows:
        cells = [c.strip() for c in r.strip("|").split("|")]
        dense, pruned, speed = float(cells[4]), float(cells[7]), cells[10]
        # cells are rounded: medians to 0.001 ms (a large share of a 0.014 ms median), the speedup to 0.01
        rounding = 0.0005 / dense + 0.0005 / pruned
        assert float(speed[:-1]) == pytest.approx(dense / pruned, rel=0.05 + rounding, abs=0.01)
        assert cells[11] == f"{macs:.2f}x"
    png = out.with_suffix(".png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fleet.md", "fleet.png"]  # no temporaries left
    assert "wrote" in capsys.readouterr().out


def test_a_row_with_one_variant_has_no_speedup(compressed, tmp_path):
    lat = tmp_path / "p.json"
    assert main(["bench", str(compressed / "pruned.onnx"), "--device-name", "solo", "--out", str(lat)] + FAST) == 0
    out = tmp_path / "f.md"
    assert main(["report", "merge", str(lat), "--out", str(out)]) == 0
    (row,) = _rows(out.read_text())
    assert row.split(" | ")[4:7] == ["–", "–", "–"] and row.rstrip(" |").endswith("| – | – | [1]")


def test_the_same_row_measured_twice_shows_the_newer_measurement_and_says_so(fleet, tmp_path):
    data = json.loads((fleet / "jetson.json").read_text())
    for name, when, scale in (("new", "2030-01-01T00:00:00Z", 2.0), ("old", "2020-01-01T00:00:00Z", 1.0)):
        for e in data["latency"]:
            e.update(measured_at=when, median_ms=e["median_ms"] * scale)
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
    out = tmp_path / "f.md"
    assert main(["report", "merge", str(tmp_path / "new.json"), str(tmp_path / "old.json"), "--out", str(out)]) == 0
    md = out.read_text()
    rows = _rows(md)
    assert len(rows) == 2 and all(r.rstrip().endswith("| [1] |") for r in rows)  # the first file: the newer one
    new = json.loads((tmp_path / "new.json").read_text())["latency"]
    assert f"{new[0]['median_ms']:.3f}" in md
    notes = md.split("Notes:")[1]
    assert notes.count("the table shows") == 4 and "new.json's (newer)" in notes


def test_merged_files_get_the_usual_file_mode(fleet, tmp_path):
    import os

    out = tmp_path / "f.md"
    mask = os.umask(0o022)
    try:
        assert main(["report", "merge", str(fleet / "jetson.json"), "--out", str(out)]) == 0
    finally:
        os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o644 and out.with_suffix(".png").stat().st_mode & 0o777 == 0o644


def test_merge_runs_without_torch(fleet, tmp_path):
    out = tmp_path / "f.md"
    r = _without_torch("report", "merge", str(fleet / "jetson.json"), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert len(_rows(out.read_text())) == 2


@pytest.mark.parametrize("inputs,out,match", [
    (["{d}/missing.json"], "f.md", "does not exist"),
    (["{d}/garbage.json"], "f.md", "not valid JSON"),
    (["{d}/list.json"], "f.md", "top level is not an object"),
    (["{d}/other.json"], "f.md", "neither a singe-deploy report nor a latency file"),
    (["{d}/bad_latency.json"], "f.md", "breaks its schema"),
    (["{f}/jetson.json"], "f.html", "must end in .md"),
    (["{f}/jetson.json"], "no/dir/f.md", "does not exist"),
])
def test_bad_input_exits_2_and_writes_nothing(fleet, tmp_path, capsys, inputs, out, match):
    (tmp_path / "garbage.json").write_text("{oops")
    (tmp_path / "list.json").write_text("[]")
    (tmp_path / "other.json").write_text('{"kind": "something"}')
    (tmp_path / "bad_latency.json").write_text('{"kind": "latency", "schema_version": 1, "latency": []}')
    before = set(tmp_path.iterdir())
    argv = [a.format(d=tmp_path, f=fleet) for a in inputs]
    assert main(["report", "merge", *argv, "--out", str(tmp_path / out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err
    assert set(tmp_path.iterdir()) == before
