"""What every driver shares: a name, a transport, limits, a clock, and the safety contract.

A driver is one class over a :class:`~instruments.transport.Transport`. Its public actions (the methods a
procedure may call, listed in ``ACTIONS``) are idempotent where the device allows it. Before any byte
leaves for the device, every action checks its arguments against the instrument's configured limits
through :meth:`Driver.validate`, which is pure: the executor calls it for every step of an experiment
before the first step runs, so a procedure that would break a limit halfway never starts.

:meth:`Driver.safe_state` brings the device to a state that is safe to leave unattended (heater off,
pump stopped, output off, motion halted). The executor calls it on any error and at exit.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from instruments.clock import Clock, WallClock
from instruments.errors import LimitError
from instruments.transport import SerialSettings, Transport


class Settings(BaseModel):
    """Base of every driver's ``Limits`` and ``Options`` models: frozen, unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Driver:
    """Base class of the drivers.

    Class attributes:
        ACTIONS: names of the methods a procedure may call (e.g. ``set_temperature``).
        REPEATABLE: the actions that do no harm when sent again after a crash left their effect unknown
            (absolute set points, moves to a position, measurements); a dispense is not one of them.
        Limits: the pydantic model of this instrument's safe limits (campaign ``limits:``).
        Options: the pydantic model of its other settings (campaign ``options:``: address, syringe size …).

    Args:
        transport: the port (shared with other instruments on the same port, e.g. a pump network).
        name: the instrument's name in the campaign file, used in every error message.
        limits: an instance of ``Limits``.
        options: an instance of ``Options``.
        clock: what the driver waits on between polls.
    """

    ACTIONS: ClassVar[frozenset[str]] = frozenset()
    REPEATABLE: ClassVar[frozenset[str]] = frozenset()
    Limits: ClassVar[type[Settings]] = Settings
    Options: ClassVar[type[Settings]] = Settings

    def __init__(
        self,
        transport: Transport,
        *,
        name: str,
        limits: Settings | None = None,
        options: Settings | None = None,
        clock: Clock | None = None,
    ):
        self.transport = transport
        self.name = name
        self.limits = limits if limits is not None else self.Limits()
        self.options = options if options is not None else self.Options()
        self.clock = clock or WallClock()

    # --- the safety contract ---------------------------------------------------------------------
    def validate(self, action: str, kwargs: Mapping[str, Any]) -> None:
        """Checks one action's arguments against the limits without touching the device.

        Raises:
            LimitError: an unknown action, arguments that do not fit its signature, or a value outside the
                limits; the message names the instrument, the argument and the limit.
        """
        if action not in self.ACTIONS:
            raise LimitError(f"has no action '{action}'; it offers: {', '.join(sorted(self.ACTIONS))}", instrument=self.name)
        try:
            inspect.signature(getattr(self, action)).bind(**kwargs)
        except TypeError as exc:
            raise LimitError(f"{action}: {exc}", instrument=self.name) from None
        check = getattr(self, f"_check_{action}", None)
        if check is not None:
            check(**kwargs)

    def repeatable(self, action: str) -> bool:
        """Whether sending ``action`` again is harmless when it is unknown whether the first one acted."""
        return action in self.REPEATABLE

    def action_parameters(self, action: str) -> list[str]:
        """The keyword names ``action`` takes, in order (a procedure's scalar argument goes to the first)."""
        return [p for p in inspect.signature(getattr(self, action)).parameters if p != "self"]

    def perform(self, action: str, kwargs: Mapping[str, Any]) -> Any:
        """Validates, then runs one action; the executor's only way to act on a driver."""
        self.validate(action, kwargs)
        return getattr(self, action)(**kwargs)

    def safe_state(self) -> None:
        """Brings the device to a state safe to leave unattended. Must not raise for a device already safe."""

    # --- lifecycle -------------------------------------------------------------------------------
    def connect(self) -> None:
        """Opens the port and does what the device needs before commands (banner, watchdog, remote mode)."""
        self.transport.open()

    def close(self) -> None:
        self.transport.close()

    def number(self, value: Any, what: str) -> float:
        """``value`` as a float; :class:`LimitError` for anything that is not a finite number (NaN, inf, text)."""
        try:
            finite = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
        except OverflowError:  # an int too large for a float (10**400)
            finite = False
        if not finite:
            raise LimitError(f"{what} must be a finite number, got {value!r}; refusing to send it", instrument=self.name)
        return float(value)

    def limit(self, value: float, maximum: float | None, what: str, unit: str, minimum: float | None = None) -> None:
        """Raises :class:`LimitError` when ``value`` is outside ``[minimum, maximum]`` (None: no bound)."""
        if value != value:  # NaN
            raise LimitError(f"{what} is NaN; refusing to send it", instrument=self.name)
        if maximum is not None and value > maximum:
            raise LimitError(
                f"{what} {_show(value)} {unit} exceeds the limit {_show(maximum)} {unit}; refused before sending. "
                "Narrow the campaign's range or raise the limit in the instrument's 'limits:' if the device allows it",
                instrument=self.name,
            )
        if minimum is not None and value < minimum:
            raise LimitError(
                f"{what} {_show(value)} {unit} is below the limit {_show(minimum)} {unit}; refused before sending",
                instrument=self.name,
            )


def _show(value: float) -> str:
    """A number for a message: 12 significant digits (199.9996, not 200); an int too large for a float abridged."""
    try:
        return f"{value:.12g}"
    except OverflowError:
        text = str(value)
        return f"{text[:8]}…({len(text)} digits)"


@dataclass(frozen=True)
class DriverSpec:
    """How a campaign file's ``driver:`` name maps to code.

    Attributes:
        kind: the name campaign files use (``ika_namur``, ``new_era``, ``grbl`` …).
        driver: the driver class.
        serial: the device's factory line settings (a campaign may override them per port).
        firmware: ``"package.module:function"`` of the byte-level simulator factory, called as
            ``function(name, options, limits, lab) -> Firmware`` (kept as a string so that the instrument
            layer never imports the simulators).
        summary: one line for docs and error messages.
    """

    kind: str
    driver: type[Driver]
    serial: SerialSettings
    firmware: str
    summary: str = ""
