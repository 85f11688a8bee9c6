"""Virtual time for simulation: a 60-minute anneal takes no time.

:class:`VirtualClock` follows :class:`instruments.clock.Clock`. The executor and the drivers wait through
it, and simulated firmware reads the same clock, so a hotplate simulator that is told to wait 10 minutes
sees 10 minutes pass.
"""

from __future__ import annotations

import threading


class VirtualClock:
    """Simulated time: ``sleep`` advances it at once. Thread-safe; time never goes backwards.

    Experiments of a batch run in threads and each sleeps on the same clock, so simulated time is the
    sum of their waits rather than the maximum: the outcome of a simulated experiment must depend on
    the intervals it measured, never on absolute clock readings.
    """

    def __init__(self, start_s: float = 0.0):
        self._now_s = float(start_s)
        self._lock = threading.Lock()

    def now_s(self) -> float:
        with self._lock:
            return self._now_s

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"cannot move a clock back ({seconds} s)")
        with self._lock:
            self._now_s += seconds
