"""Virtual time for simulation: a 60-minute anneal takes no time.

:class:`VirtualClock` follows :class:`instruments.clock.Clock`. The executor and the drivers wait through
it, and simulated firmware reads the same clock, so a hotplate simulator that is told to wait 10 minutes
sees 10 minutes pass.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class VirtualClock:
    """Simulated time: ``sleep`` advances it at once. Thread-safe; time never goes backwards.

    Experiments of a batch run in threads and each sleeps on the same clock, so simulated time is the
    sum of their waits rather than the maximum: the outcome of a simulated experiment must depend on
    the intervals it measured, never on absolute clock readings.
    """

    def __init__(self, start_s: float = 0.0):
        self._now_s = float(start_s)
        self._lock = threading.Lock()
        self._tickers: list[list] = []  # [period_s, next_due_s, callback]

    def now_s(self) -> float:
        with self._lock:
            return self._now_s

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        """Moves time on, calling each ticker at every multiple of its period passed on the way."""
        if seconds < 0:
            raise ValueError(f"cannot move a clock back ({seconds} s)")
        end = self.now_s() + seconds
        while True:
            with self._lock:
                due = [t for t in self._tickers if t[1] <= end]
                if not due:
                    self._now_s = max(self._now_s, end)
                    return
                ticker = min(due, key=lambda t: t[1])
                self._now_s = max(self._now_s, ticker[1])
                ticker[1] += ticker[0]
            ticker[2]()  # outside the lock: the callback may talk to a simulated device, which reads the clock

    def every(self, period_s: float, callback: Callable[[], None]) -> Callable[[], None]:
        """Calls ``callback`` every ``period_s`` of simulated time; returns a function that cancels it.

        This is how a watchdog keepalive keeps pace with simulated time that jumps ahead in one sleep.
        """
        if period_s <= 0:
            raise ValueError(f"period must be positive, got {period_s}")
        ticker = [float(period_s), self.now_s() + period_s, callback]
        with self._lock:
            self._tickers.append(ticker)

        def cancel() -> None:
            with self._lock:
                if ticker in self._tickers:
                    self._tickers.remove(ticker)

        return cancel
