"""Crash points for the crash-resume harness: narrow windows that random kills rarely hit.

With ``ORCHESTRATOR_CRASH_AT=name:n`` in the environment the process sends itself SIGKILL the ``n``-th time
it passes :func:`crash_point` ``(name)``, exactly as an outside ``kill -9`` would. Without the variable
(every real run) a crash point is one comparison. Names, in the order an experiment passes them:

- ``proposed``: the batch was committed as proposed; nothing dispatched yet;
- ``dispatched``: committed as running (with its key); no step logged yet;
- ``step_started``: a step logged as started; its bytes not yet sent;
- ``segment_sent``: with stations, a segment's flow run created on the Prefect server, not yet noted in the
  ledger;
- ``step_done``: a step logged as done, its reading saved;
- ``readings_saved``: every step done; the result not yet committed.
"""

from __future__ import annotations

import os
import signal
import threading

POINTS = ("proposed", "dispatched", "step_started", "segment_sent", "step_done", "readings_saved")


def _parse(spec: str | None) -> tuple[str, int] | None:
    if not spec:
        return None
    name, _, count = spec.partition(":")
    if name not in POINTS or not count.isdigit() or int(count) < 1:
        raise SystemExit(f"ORCHESTRATOR_CRASH_AT={spec!r}: write NAME:N with NAME one of {', '.join(POINTS)}")
    return name, int(count)


_TARGET = _parse(os.environ.get("ORCHESTRATOR_CRASH_AT"))
_passed = 0
_lock = threading.Lock()


def crash_point(name: str) -> None:
    """Kills the process here if this is the armed crash point's ``n``-th passage."""
    global _passed
    if _TARGET is None or _TARGET[0] != name:
        return
    with _lock:
        _passed += 1
        if _passed == _TARGET[1]:
            os.kill(os.getpid(), signal.SIGKILL)
