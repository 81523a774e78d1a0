"""Fault injection for the resume tests: SINGE_DEPLOY_FAULT=POINT:N kills this process (SIGKILL, no cleanup) the
N-th time it reaches POINT. Points: `write` (an atomic write, its temporary complete but not yet renamed),
`finetune` (a fine-tuning iteration), `export` (the deploy stage's start). Unset, it costs one dict lookup."""
from __future__ import annotations

import os
import signal

ENV = "SINGE_DEPLOY_FAULT"
_hits = {}


def point(name):
    spec = os.environ.get(ENV)
    if not spec:
        return
    want, _, n = spec.partition(":")
    if want != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == int(n or 1):
        os.kill(os.getpid(), signal.SIGKILL)
