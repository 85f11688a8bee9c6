"""Clocks that drivers and the executor wait on: real time here, virtual time in ``simulators.clock``.

A driver polls a device ("is the pump done?") and sleeps between polls through its clock, so the same
driver code finishes a simulated 60-minute anneal in milliseconds and a real one in an hour.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now_s(self) -> float:
        """Seconds on a monotonic scale."""
        ...

    def sleep(self, seconds: float) -> None: ...


class WallClock:
    """Real time, for real instruments."""

    def now_s(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)
