"""Errors of the instrument layer, under one root that itself sits under the project's root.

Builtin mixins let callers catch them generically (``except TimeoutError``) while the project catches
``InstrumentError``. Every message names the instrument and what to do.
"""

from __future__ import annotations

from orchestrator.errors import OrchestratorError


class InstrumentError(OrchestratorError):
    """Root of every error an instrument, its driver or its transport raises.

    Attributes:
        instrument: name of the instrument (as in the campaign file), or the port, when known.
        effect_unknown: True when a command that changes the device (dispense, run, move) may or may not
            have taken effect; such a command must never be repeated blindly.
    """

    def __init__(self, message: str, *, instrument: str = "", effect_unknown: bool = False):
        self.instrument = instrument
        self.effect_unknown = effect_unknown
        super().__init__(f"{instrument}: {message}" if instrument else message)


class InstrumentTimeout(InstrumentError, TimeoutError):
    """No complete reply within the timeout (nothing, or a partial frame)."""


class ProtocolError(InstrumentError, ValueError):
    """A reply that does not follow the protocol: bad framing, wrong address echo, unparseable data."""


class DeviceError(InstrumentError):
    """The device answered, and the answer is an error or alarm (``?OOR``, ``error:9``, ``A?S``)."""

    def __init__(self, message: str, *, code: str = "", instrument: str = "", effect_unknown: bool = False):
        self.code = code
        super().__init__(message, instrument=instrument, effect_unknown=effect_unknown)


class LimitError(InstrumentError, ValueError):
    """A command outside the instrument's configured safe limits; refused before any byte is sent."""


class ConnectionLost(InstrumentError, ConnectionError):
    """The port failed (unplugged, I/O error) and could not be reopened within the allowed attempts."""


class PortNotFound(InstrumentError, FileNotFoundError):
    """The port named in the campaign file does not exist (no such path, no USB device with that id)."""


def naming(exc: InstrumentError, instrument: str) -> InstrumentError:
    """The same error naming ``instrument``, for errors raised by pure parsers that do not know it."""
    if exc.instrument:
        return exc
    kwargs: dict = {"instrument": instrument, "effect_unknown": exc.effect_unknown}
    if isinstance(exc, DeviceError):
        kwargs["code"] = exc.code
    return type(exc)(str(exc), **kwargs)
