"""The executor: acts on an experiment's typed steps with the instrument drivers.

Before the first step of an experiment it checks every step against its instrument's limits
(:meth:`Driver.validate`, pure), so an experiment that would break a limit halfway never starts and not
one byte is sent for it. Then it runs the steps in order, waiting on the lab's clock, and collects the
readings that measuring steps return. On any error, and when the campaign ends, it brings every
instrument it touched to a safe state (heaters off, pumps stopped, outputs off, motion halted).

One set of instruments handles one experiment at a time (a hotplate anneals one substrate), so the
executor serializes experiments; a batch's experiments queue for the instruments.

A ``StepLog`` passed to :meth:`Executor.run` hears of each step before its first byte and after the
instrument answered (with the reading): the ledger's write-ahead record that lets a run resumed after a
crash tell which steps happened.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from instruments.base import Driver
from instruments.clock import Clock
from instruments.errors import InstrumentError, LimitError
from instruments.readings import IVCurve, Reading, Spectrum, Values
from orchestrator.procedures import Action, ProcedureError, Step, Wait

_log = logging.getLogger(__name__)

# Instruments with a watchdog (a ``keepalive`` method) hear from the executor this often in lab time, or as
# often as the most demanding driver's ``keepalive_period_s`` asks, from connection to close: a live
# orchestrator never trips a watchdog, while a dead one does.
KEEPALIVE_S = 10.0


class StepLog(Protocol):
    """Where the executor reports its progress through one experiment's steps (waits are not reported)."""

    def started(self, index: int, step: Action, repeatable: bool) -> None:
        """Called before the step's first byte is sent; must be durable when it returns."""

    def done(self, index: int, step: Action, result: Any) -> None:
        """Called after the instrument answered, with what the action returned."""


class Executor:
    """Runs steps on drivers.

    Args:
        drivers: instrument name → connected driver.
        clock: what waits wait on (wall clock for hardware, the simulated lab's virtual clock).
        before_experiment: called with the experiment's id and idempotency key at its start (the simulated lab
            starts a new sample labelled with the key).
    """

    def __init__(
        self,
        drivers: Mapping[str, Driver],
        clock: Clock,
        before_experiment: Callable[[int, str | None], None] | None = None,
    ):
        self.drivers = dict(drivers)
        self.clock = clock
        self.before_experiment = before_experiment
        self._lock = threading.Lock()
        self.touched: set[str] = set()
        self._stop_keepalive: Callable[[], None] | None = None

    # --- watchdogs -----------------------------------------------------------------------------------
    def start_keepalive(self) -> None:
        """Calls every driver's ``keepalive`` periodically in lab time until :meth:`stop_keepalive`.

        On a simulated clock that jumps ahead, the clock calls it on the way (``clock.every``); on the wall
        clock a daemon thread does, taking each port's lock like any other command.
        """
        periods = [
            getattr(d, "keepalive_period_s", KEEPALIVE_S) for d in self.drivers.values() if hasattr(d, "keepalive")
        ]
        periods = [p for p in periods if p]
        if self._stop_keepalive is not None or not periods:
            return
        period_s = min(periods)
        every = getattr(self.clock, "every", None)
        if every is not None:
            self._stop_keepalive = every(period_s, self.keepalive)
            return
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(period_s):
                self.keepalive()

        threading.Thread(target=loop, name="keepalive", daemon=True).start()
        self._stop_keepalive = stop.set

    def stop_keepalive(self) -> None:
        if self._stop_keepalive is not None:
            self._stop_keepalive()
            self._stop_keepalive = None

    def keepalive(self) -> None:
        for name, driver in self.drivers.items():
            if hasattr(driver, "keepalive"):
                try:
                    driver.keepalive()
                except InstrumentError as exc:
                    _log.warning("%s: keepalive failed: %s", name, exc)

    def check(self, steps: Sequence[Step]) -> None:
        """Checks every step against its instrument and limits, sending nothing.

        Raises:
            ProcedureError: a step names an unknown instrument.
            LimitError: a step is outside its instrument's limits (or not one of its actions).
        """
        for i, step in enumerate(steps):
            if isinstance(step, Wait):
                continue
            driver = self.drivers.get(step.instrument)
            if driver is None:
                raise ProcedureError(
                    f"step {i} ({step})", f"no instrument '{step.instrument}'; instruments: {', '.join(self.drivers)}"
                )
            driver.validate(step.action, step.kwargs)

    def run(
        self, steps: Sequence[Step], experiment_id: int = 0, *, key: str | None = None, log: StepLog | None = None
    ) -> dict[str, Reading]:
        """Runs one experiment's steps; returns its readings by label.

        Args:
            steps: the experiment's steps.
            experiment_id: its id in the ledger.
            key: its idempotency key, passed on where the lab takes one.
            log: told of each action before it is sent and after it answered.

        Raises:
            LimitError, ProcedureError: from :meth:`check`, before anything is sent.
            InstrumentError: an instrument failed; every touched instrument has been made safe.
        """
        with self._lock:
            self.check(steps)
            if self.before_experiment is not None:
                self.before_experiment(experiment_id, key)
            readings: dict[str, Reading] = {}
            used: set[str] = set()
            try:
                for index, step in enumerate(steps):
                    if isinstance(step, Wait):
                        self.clock.sleep(step.seconds)
                        continue
                    used.add(step.instrument)
                    self.touched.add(step.instrument)
                    _log.debug("step %s", step)
                    driver = self.drivers[step.instrument]
                    if log is not None:
                        log.started(index, step, driver.repeatable(step.action))
                    result = driver.perform(step.action, step.kwargs)
                    if log is not None:
                        log.done(index, step, result)
                    reading = reading_of(step, result)
                    if reading is not None:
                        readings[reading[0]] = reading[1]
            except BaseException:
                self.make_safe(used)
                raise
            return readings

    def make_safe(self, names: Iterable[str] | None = None) -> list[str]:
        """Brings instruments (default: all touched) to a safe state; returns the ones that failed to answer."""
        failed = []
        for name in sorted(set(self.touched if names is None else names)):
            try:
                self.drivers[name].safe_state()
            except (InstrumentError, OSError) as exc:
                _log.error("%s: could not bring to a safe state: %s", name, exc)
                failed.append(name)
        return failed


def reading_of(step: Action, result: Any) -> tuple[str, Reading] | None:
    """The (label, reading) an action's result counts as, or None when it is not a reading."""
    if isinstance(result, (Spectrum, IVCurve)):
        return step.label or step.instrument, result
    if isinstance(result, Mapping) and step.label:
        # A reply's named values count as a reading only where the procedure labels it.
        return step.label, Values(dict(result))
    return None


__all__ = ["Executor", "LimitError", "reading_of"]
