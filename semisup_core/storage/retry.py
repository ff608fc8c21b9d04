"""Bounded exponential-backoff retry for calls that can fail transiently.

Object stores answer ``503 SlowDown`` under load and connections get reset; such a
failure usually succeeds on a second try, while a missing object or bad credentials
never will. The caller says which is which through ``is_transient``.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


def retry(fn: Callable[[], T], *, attempts: int = 4, base_delay: float = 0.2,
          is_transient: Callable[[BaseException], bool],
          max_delay: float = 5.0, sleep: Callable[[float], None] = time.sleep) -> T:
    """Call ``fn()`` until it succeeds, at most ``attempts`` times.

    Args:
      fn: the call to make; takes no arguments (wrap with a lambda or ``functools.partial``).
      attempts: total number of calls, >= 1 (4 -> waits of 0.2, 0.4, 0.8 s with the default base).
      base_delay: wait before the second call; doubled before each further call.
      is_transient: returns True for an exception worth retrying. Any other exception, or a
        transient one on the last attempt, is re-raised unchanged.
      max_delay: upper bound on a single wait, in seconds.
      sleep: the wait function (tests pass a fake to run instantly).

    Returns:
      Whatever ``fn()`` returns on its first successful call.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 -- classified by is_transient
            if attempt == attempts or not is_transient(err):
                raise
            delay = min(base_delay * 2 ** (attempt - 1), max_delay)
            log.warning("transient error (attempt %d/%d), retrying in %.1fs: %s",
                        attempt, attempts, delay, err)
            sleep(delay)
    raise AssertionError("unreachable")  # the loop either returns or raises
