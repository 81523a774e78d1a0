import json

import pytest
import torch.nn as nn

from singe_deploy.models.specs import load_pruned

from .conftest import load_tool, tiny_factory


def test_kept_fractions_match_the_pruned_model_file(compressed, capsys, tmp_path):
    tool = load_tool("kept_channels")
    dense = {n: m.out_channels for n, m in tiny_factory().named_modules() if isinstance(m, nn.Conv2d)}
    pruned = {n: m.out_channels for n, m in load_pruned(compressed / "pruned.pt").named_modules()
              if isinstance(m, nn.Conv2d)}
    want = {}
    for name, width in dense.items():
        kept, total = want.get(width, (0, 0))
        want[width] = (kept + pruned[name], total + width)
    (run,) = tool.runs([compressed])
    assert run["kept"] == pytest.approx({w: k / t for w, (k, t) in want.items()})
    assert min(run["kept"].values()) < 1  # something was pruned, so the check above could fail
    tool.main([str(compressed), "--json", str(tmp_path / "k.json")])
    table = capsys.readouterr().out.splitlines()
    assert table[0].endswith("| kept, width 16 | kept, width 24 |") and "| l1 | 1 |" in table[2]
    assert json.loads((tmp_path / "k.json").read_text())["runs"][0]["criterion"] == "l1"


def test_a_folder_without_reports_is_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match="holds no report.json"):
        load_tool("kept_channels").main([str(tmp_path)])
