"""Errors the CLI turns into one line and exit code 2 (bad input) or 1 (a check failed)."""

# what every command's exit code means (cli.py returns them; docs/reference/exit-codes.md is written from this)
EXIT_CODES = (
    (0, "done"),
    (1, ("a check failed (parity, the ONNX graph's MACs, the target, a budget in `singe-deploy check`; the output is "
         "still written), the disk was full or read-only, another rank of a torchrun job failed, or an unexpected "
         "error (one line; the traceback is in a file it names)")),
    (2, ("bad input, before any work and before anything is written: an unknown model, criterion or option value, "
         "a missing or corrupt file, an impossible target, a wrong input shape, an existing output folder, no GPU "
         "or TensorRT for a GPU target; also out of memory, with the --batch-size to try")),
    (130, "interrupted: Ctrl-C, or SIGTERM in compress, which then continues with --resume"),
)


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
