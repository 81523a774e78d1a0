"""The JSON schemas singe-deploy writes to (report, latency file, budget check) and validation against them.

Standard library only until a validation runs (jsonschema is imported then)."""
from __future__ import annotations

import json
from importlib import resources

from .errors import CheckFailed


def load(name):
    """A schema shipped in singe_deploy/schemas: 'report', 'latency' or 'check'."""
    return json.loads(resources.files("singe_deploy").joinpath(f"schemas/{name}.schema.json").read_text())


def errors(data, name):
    """Every place where `data` breaks schema `name`, as 'path: message' lines."""
    import jsonschema

    found = sorted(jsonschema.Draft202012Validator(load(name)).iter_errors(data), key=lambda e: list(e.path))
    return [f"{'/'.join(map(str, e.path)) or '(top)'}: {e.message}" for e in found]


def validate(data, name):
    """Raise CheckFailed naming the first field that breaks the schema."""
    found = errors(data, name)
    if found:
        raise CheckFailed(f"{name} does not follow the schema at {found[0]}")
    return data


def available():
    import importlib.util

    return importlib.util.find_spec("jsonschema") is not None
