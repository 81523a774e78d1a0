"""The docs a user reads first: a short README, guide pages that open with commands that parse as written, and a
guide snippet that is the tool it names. The site itself (links, anchors, navigation) is built with --strict in
.ci/run."""
import re
import shlex

import pytest

from singe_deploy.cli import _parser

from .conftest import ROOT

GUIDE = ROOT / "docs" / "guide"
PAGES = sorted(p for p in GUIDE.glob("*.md") if p.name != "index.md")


def _first_block(path):
    """The commands of the page's first indented code block, continuation lines joined."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("    "))
    block = []
    for line in lines[start:]:
        if not line.startswith("    "):
            break
        block.append(line[4:])
    text = re.sub(r"\\\n\s*", " ", "\n".join(block))
    return [line.split("  #")[0].strip() for line in text.splitlines() if line.strip()]


def test_the_readme_is_short_and_links_every_guide_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    assert [p.name for p in PAGES if f"docs/guide/{p.name}" not in readme] == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_each_guide_page_opens_with_commands_that_parse_as_written(page):
    text = page.read_text()
    first = next(line for line in text.splitlines()[1:] if line.strip())
    assert first.startswith("    "), f"{page.name}: the first thing after the title is a command"
    commands = _first_block(page)
    for command in commands:
        argv = shlex.split(command)
        if argv[0] == "singe-deploy":
            _parser().parse_args(argv[1:])  # an unknown option or a bad choice exits 2 here
        elif argv[0] == "pip":
            continue
        elif argv[0] == "python":
            assert (ROOT / argv[1]).is_file(), command
        else:
            assert (ROOT / argv[0]).is_file(), command


def test_the_report_snippet_in_the_python_guide_is_the_tool_it_names():
    page = (GUIDE / "python.md").read_text()
    snippet = page.split("```python\n", 1)[1].split("```", 1)[0]
    assert snippet.strip() in (ROOT / "tools" / "read_report.py").read_text()
