"""Progress: a tqdm bar on stderr when stderr is a terminal; otherwise (logs of CI jobs, nohup, clusters) plain
lines on stdout, beside the run's other log lines, so that stderr keeps only errors.

A plain line is written when EVERY_SECONDS have passed and another EVERY_FRACTION of the stage is done since
the last line (or its start), at least every QUIET_SECONDS, and once at the end of a stage that wrote any:
    fine-tune step 1: 45/150 it (30%), loss=0.412, 0:31 elapsed, ETA 1:12
so a stage of under 30 s writes nothing and one of an hour about ten lines.
"""
from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm

from .training import distributed

EVERY_SECONDS, EVERY_FRACTION, QUIET_SECONDS = 30.0, 0.1, 300.0


def progress(iterable=None, **kwargs):
    """A tqdm-like progress object: a bar when stderr is a terminal, plain lines on stdout when it is not, nothing
    on ranks other than 0 or when disable=True."""
    if kwargs.get("disable") or not distributed.current().main:
        kwargs["disable"] = True
        return tqdm(iterable, **kwargs)
    if sys.stderr.isatty():
        kwargs["disable"] = False
        kwargs.setdefault("leave", False)
        kwargs.setdefault("dynamic_ncols", True)
        return tqdm(iterable, **kwargs)
    return Lines(iterable, total=kwargs.get("total"), desc=kwargs.get("desc", ""), unit=kwargs.get("unit", "it"))


def clock(seconds):
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class Lines:
    """The parts of tqdm's interface the project uses (iterate, update, set_postfix, close, with), as plain lines."""

    def __init__(self, iterable=None, total=None, desc="", unit="it", file=None, now=time.monotonic):
        self.iterable, self.desc, self.unit, self.now = iterable, desc, unit, now
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.n, self.postfix = total, 0, ""
        self.file = file
        self.start = self.last = now()
        self.last_n, self.written, self.closed = 0, 0, False

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        items = dict(ordered_dict or {}, **kwargs)
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def update(self, n=1):
        self.n += n
        t = self.now()
        waited = t - self.last
        enough = not self.total or (self.n - self.last_n) >= EVERY_FRACTION * self.total
        if (waited >= EVERY_SECONDS and enough) or waited >= QUIET_SECONDS:
            self._write(t)

    def close(self):
        if self.closed:
            return
        self.closed = True
        if self.written and self.n != self.last_n:
            self._write(self.now(), done=True)

    def line(self, t, done=False):
        elapsed = t - self.start
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        parts = [f"{count} {self.unit}" + (f" ({100 * self.n / self.total:.0f}%)" if self.total else "")]
        if self.postfix:
            parts.append(self.postfix)
        parts.append(f"{clock(elapsed)} elapsed")
        if done or (self.total and self.n >= self.total):
            parts.append("done")
        elif self.total and self.n:
            parts.append(f"ETA {clock(elapsed / self.n * (self.total - self.n))}")
        return f"{self.desc}: " + ", ".join(parts) if self.desc else ", ".join(parts)

    def _write(self, t, done=False):
        print(self.line(t, done), file=self.file or sys.stdout, flush=True)
        self.last, self.last_n = t, self.n
        self.written += 1
