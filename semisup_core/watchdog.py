"""A stall watchdog: a stage that stops making progress ends with one line, never a silent wait.

A native kernel that deadlocks (a oneDNN convolution spinning in an OpenMP region, a
collective whose peer died) holds the main thread where no Python exception can reach it.
A daemon thread watches the time since the last ``beat()``; past ``timeout_s`` it writes
every thread's Python stack to a file (``faulthandler``, which needs no lock the stuck
thread might hold), prints one line naming the stage, where it stopped and that file, and
ends the process with :data:`EXIT_STALLED`. The stage's outputs are the ones already
written (checkpoints are atomic), so a rerun resumes from the newest checkpoint.
"""

from __future__ import annotations

import faulthandler
import os
import sys
import tempfile
import threading
import time

#: exit status of a process ended by the watchdog (ConfigError and the like exit 2)
EXIT_STALLED = 3


class Watchdog:
    """Ends the process when no ``beat()`` comes for ``timeout_s`` seconds (0 = off).

    ``stage`` names the stage in the error line; ``hint`` says which setting raises the limit.
    Use as a context manager around the work; ``beat(where)`` records progress.
    """

    def __init__(self, stage: str, timeout_s: float, hint: str = ""):
        self.stage, self.timeout_s, self.hint = stage, float(timeout_s), hint
        self._last, self._where = time.monotonic(), "start"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self, where: str) -> None:
        """Progress was made; ``where`` says what the stage does next (e.g. "step 12 of 800")."""
        self._last, self._where = time.monotonic(), where

    def __enter__(self) -> Watchdog:
        if self.timeout_s > 0:
            self.beat(self._where)
            self._thread = threading.Thread(target=self._watch, name=f"watchdog-{self.stage}",
                                            daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _watch(self) -> None:
        poll = min(5.0, max(0.05, self.timeout_s / 20))
        while not self._stop.wait(poll):
            idle = time.monotonic() - self._last
            if idle > self.timeout_s:
                self._fire(idle)

    def _fire(self, idle: float) -> None:
        fd, path = tempfile.mkstemp(prefix=f"semisup-{self.stage}-stall-", suffix=".txt")
        with os.fdopen(fd, "w") as f:
            f.write(f"{self.stage}: no progress for {idle:.0f} s at {self._where}\n")
            f.flush()
            faulthandler.dump_traceback(f, all_threads=True)
        hint = f"; {self.hint}" if self.hint else ""
        sys.stderr.write(f"{self.stage}: stalled: no progress for {idle:.0f} s at {self._where} "
                         f"(stacks of every thread in {path}){hint}\n")
        sys.stderr.flush()
        os._exit(EXIT_STALLED)  # the stuck thread cannot be interrupted; end the process
