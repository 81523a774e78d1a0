"""Write docs/reference/ from the code: every sub-command's options (from the CLI's parsers, which the option table
in singe_deploy/config.py builds), the report.json fields (from the schema) and the exit codes (singe_deploy/errors.py).

    python tools/write_reference.py            # rewrite docs/reference/*.md
    python tools/write_reference.py --check    # exit 1, naming the files, when the committed pages differ

tests/test_reference.py fails when a committed page differs from what this writes now: change an option, the schema
or an exit code, then run this and commit the pages with the change.
"""
import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "reference"
HEADER = "<!-- written by tools/write_reference.py; edit the code it reads, not this page -->\n\n"


def _cell(text):
    return " ".join(str(text).split()).replace("|", "\\|")


def _subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def _commands(parser, prefix="singe-deploy"):
    """(command line, its parser, its one-line help) for every sub-command, depth first."""
    sub = _subparsers(parser)
    if sub is None:
        return []
    helps = {a.dest: a.help for a in sub._choices_actions}
    out = []
    for name, p in sub.choices.items():
        line = f"{prefix} {name}"
        out.append((line, p, helps.get(name, "")))
        out.extend(_commands(p, line))
    return out


def _option_rows(parser):
    rows = []
    for a in parser._actions:
        if isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if a.option_strings:
            flags = ", ".join(f"`{s}`" for s in a.option_strings)
            value = "" if a.nargs == 0 else (a.metavar or a.dest.upper())
        else:
            flags, value = f"`{a.metavar or a.dest}` (positional)", "..." if a.nargs in ("*", "+") else ""
        rows.append(f"| {flags} | {_cell(value)} | {_cell((a.help or '').replace('%%', '%'))} |")
    return rows


def commands_page():
    from singe_deploy.cli import _parser

    intro = ("Every sub-command and its options, as `singe-deploy COMMAND --help` gives them. The options of "
             "`compress` are also the keys of a YAML config (`--config FILE`, dashes or underscores); "
             "configs/demo.yaml holds them all with their defaults.")
    lines = [HEADER + "# Commands and options", "", intro, ""]
    for line, p, summary in _commands(_parser()):
        rows = _option_rows(p)
        lines += [f"## `{line}`", "", _cell(p.description or summary), ""]
        if rows:
            lines += ["| option | value | what it does |", "|---|---|---|", *rows, ""]
    return "\n".join(lines).rstrip() + "\n"


def _schema_rows(node, path, required, rows, defs=None):
    if "$ref" in node:  # "#/$defs/NAME"
        node = dict(defs[node["$ref"].rsplit("/", 1)[1]], **{k: v for k, v in node.items() if k != "$ref"})
    kind = node.get("type", "")
    if "const" in node:
        kind = f"{json.dumps(node['const'])} (constant)"
    kind = " or ".join(kind) if isinstance(kind, list) else kind
    if "enum" in node:
        kind = f"{kind} (one of {', '.join(map(str, node['enum']))})"
    if path:
        rows.append(f"| `{path}` | {_cell(kind)} | {'yes' if required else ''} | {_cell(node.get('description', ''))} |")
    for name, child in node.get("properties", {}).items():
        _schema_rows(child, f"{path}.{name}" if path else name, name in node.get("required", []), rows, defs)
    items = node.get("items")
    if isinstance(items, dict) and (items.get("properties") or "$ref" in items):
        _schema_rows(items, f"{path}[]", False, rows, defs)


def report_page():
    schema = json.loads((ROOT / "singe_deploy" / "schemas" / "report.schema.json").read_text())
    rows = []
    _schema_rows(schema, "", True, rows, schema.get("$defs", {}))
    intro = ("Fields from singe_deploy/schemas/report.schema.json (a copy of the shared spec); a report may carry "
             "more. `a[]` is an element of the list `a`.")
    return "\n".join([HEADER + "# report.json", "", _cell(schema.get("description", "")), "", intro, "",
                      "| field | type | required | meaning |", "|---|---|---|---|", *rows]) + "\n"


def exit_codes_page():
    from singe_deploy.errors import EXIT_CODES

    rows = [f"| {code} | {_cell(meaning)} |" for code, meaning in EXIT_CODES]
    return "\n".join([HEADER + "# Exit codes", "", "Every `singe-deploy` command ends with one of these.", "",
                      "| code | meaning |", "|---|---|", *rows]) + "\n"


PAGES = {"commands.md": commands_page, "report.md": report_page, "exit-codes.md": exit_codes_page}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 when a page differs")
    a = ap.parse_args()
    stale = []
    for name, render in PAGES.items():
        path, text = OUT / name, render()
        if a.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(str(path.relative_to(ROOT)))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        sys.exit(f"out of date: {', '.join(stale)}; run python tools/write_reference.py and commit them")


if __name__ == "__main__":
    main()
