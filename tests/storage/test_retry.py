"""retry(): bounded exponential backoff, checked with a fake flaky function."""

from __future__ import annotations

import pytest

from semisup_core.storage.retry import retry


class Transient(Exception):
    pass


class Permanent(Exception):
    pass


class Flaky:
    """Raises ``errors`` in order, one per call, then returns ``"ok"``."""

    def __init__(self, *errors: Exception):
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def transient(err: BaseException) -> bool:
    return isinstance(err, Transient)


def run(fn, **kw):
    """Call retry() with a recording fake sleep; returns (result or exception, sleeps)."""
    sleeps: list[float] = []
    kw = {"attempts": 4, "base_delay": 0.2, "is_transient": transient, **kw}
    return retry(fn, sleep=sleeps.append, **kw), sleeps


def test_first_try_succeeds():
    fn = Flaky()
    assert run(fn) == ("ok", [])
    assert fn.calls == 1


def test_transient_errors_are_retried_with_doubling_waits():
    fn = Flaky(Transient("reset"), Transient("503"))
    result, sleeps = run(fn)
    assert result == "ok"
    assert fn.calls == 3
    assert sleeps == pytest.approx([0.2, 0.4])


def test_gives_up_after_attempts_and_reraises_last_error():
    fn = Flaky(*(Transient(f"try {i}") for i in range(1, 6)))
    sleeps: list[float] = []
    with pytest.raises(Transient, match="try 4"):
        retry(fn, attempts=4, base_delay=0.2, is_transient=transient, sleep=sleeps.append)
    assert fn.calls == 4
    assert sleeps == pytest.approx([0.2, 0.4, 0.8])


def test_permanent_error_is_not_retried():
    fn = Flaky(Permanent("no such key"))
    sleeps: list[float] = []
    with pytest.raises(Permanent):
        retry(fn, attempts=4, base_delay=0.2, is_transient=transient, sleep=sleeps.append)
    assert fn.calls == 1
    assert sleeps == []


def test_wait_is_capped():
    fn = Flaky(*(Transient() for _ in range(5)))
    result, sleeps = run(fn, attempts=6, base_delay=1.0, max_delay=3.0)
    assert result == "ok"
    assert sleeps == pytest.approx([1.0, 2.0, 3.0, 3.0, 3.0])


def test_single_attempt_never_sleeps():
    fn = Flaky(Transient())
    with pytest.raises(Transient):
        retry(fn, attempts=1, base_delay=0.2, is_transient=transient, sleep=pytest.fail)
    assert fn.calls == 1


def test_attempts_must_be_positive():
    with pytest.raises(ValueError, match="attempts must be >= 1"):
        retry(Flaky(), attempts=0, base_delay=0.2, is_transient=transient)
