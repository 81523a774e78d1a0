"""Errors the CLI turns into one line and exit code 2 (bad input) or 1 (a check failed)."""


class UserError(Exception):
    """Bad input: the message names the problem and the fix."""

    exit_code = 2


class CheckFailed(Exception):
    """A parity check or a budget did not hold."""

    exit_code = 1


def first_line(e, limit=160):
    """An exception's first line, for one-line error messages."""
    text = str(e).strip().splitlines()
    return (text[0] if text else e.__class__.__name__)[:limit]
