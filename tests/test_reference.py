"""docs/reference/ is written from the code (tools/write_reference.py): the committed pages are what it writes now."""
from .conftest import ROOT, load_tool


def test_the_committed_reference_is_what_the_code_writes():
    tool = load_tool("write_reference")
    for name, render in tool.PAGES.items():
        committed = (ROOT / "docs" / "reference" / name).read_text()
        assert committed == render(), f"docs/reference/{name} is out of date: run python tools/write_reference.py"


def test_every_option_and_exit_code_is_in_the_reference():
    from singe_deploy.config import OPTIONS
    from singe_deploy.errors import EXIT_CODES

    tool = load_tool("write_reference")
    commands, codes = tool.commands_page(), tool.exit_codes_page()
    assert all(f"`--{o.name.replace('_', '-')}`" in commands for o in OPTIONS)
    assert all(f"| {code} |" in codes for code, _ in EXIT_CODES)
    assert "`singe-deploy report merge`" in commands and "| `dense.accuracy` |" in tool.report_page()
