"""Failpoints for the kill-anywhere tests (issue 22, tests/test_kill_anywhere.py).

``SEMISUP_KILL_AT="<substring>:<n>"`` makes the process SIGKILL itself the n-th time it is
about to publish an object whose URI contains ``<substring>``: the bytes are written (a local
temp file, an S3 upload's spool) but not yet visible. That is the worst moment a node loss or
an OOM kill can pick, and the tests pick it at every kind of output a stage writes. Unset (every
real run), a failpoint is one environment lookup per published object.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "SEMISUP_KILL_AT"
_seen: Counter = Counter()


def before_publish(uri: str) -> None:
    """The failpoint: called by the storage backends just before an object becomes visible."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    needle, _, n = spec.rpartition(":")
    if needle and needle in uri:
        _seen[needle] += 1
        if _seen[needle] == int(n):
            os.kill(os.getpid(), signal.SIGKILL)
