"""Keithley 2400-series SourceMeter over RS-232 (SCPI): source a voltage, measure current, I–V sweeps.

Source: Keithley *Series 2400 SourceMeter User's Manual* (2400S-900-01): section 18 (SCPI command
reference), the RS-232 part of the remote-operation section, appendix B (status and error messages).

Line: 9600 baud 8N1 (the factory setting; 300 … 57600 selectable on the front panel), flow control NONE
(set so in the COMMUNICATION menu), terminator LF both ways; the menu also offers CR and CRLF, which
``Options.terminator`` must match. Commands (short forms; set commands get NO reply)::

    *IDN?                    → KEITHLEY INSTRUMENTS INC.,MODEL 2400,<serial>,<firmware revision>
    *CLS, *RST               clear the error queue / defaults, output off
    :SOUR:FUNC VOLT          voltage source
    :SOUR:VOLT:RANG <v>      fixed source range: the lowest of 0.21/2.1/21/210 V that holds |v|
    :SOUR:VOLT <v>           source level (NR3, +1.000000E+00); :SOUR:VOLT? reads it back
    :SENS:FUNC "CURR"        measure current; :SENS:CURR:RANG:AUTO ON: current autorange
    :SENS:CURR:PROT <a>      current compliance; :SENS:CURR:PROT? reads it back
    :FORM:ELEM VOLT,CURR     :READ? returns these two elements (the *RST default is all five)
    :OUTP ON|OFF, :OUTP?     output; reads back 1 or 0
    :READ?                   → <volt>,<curr>, NR3 each (+1.000000E+00,+2.345000E-03); +9.91E+37 = overflow
    :SYST:ERR?               → <code>,"<message>"; 0,"No error" when the queue is empty

Errors. The 2400 never answers a command with an error text: it queues the error (10 deep, then -350
"Queue overflow"), and a query that fails sends nothing. Codes met here (appendix B): -113 "Undefined
header", -222 "Parameter data out of range", -221 "Settings conflict", +802 "OUTPUT blocked by output
enable" (the output-enable line of the digital I/O port, i.e. the fixture interlock, is open), +803 "Not
permitted with OUTPUT off" (:READ? with the output off; the manual gives +803 here, not -221). So:

- compliance, range and level are set, the queue drained and :SOUR:VOLT? / :SENS:CURR:PROT? read back
  BEFORE the output is turned on; then the queue is drained again and :OUTP? read. A queued error →
  :class:`DeviceError` with ``code`` the SCPI code (``"-222"``, ``"802"``); a read-back mismatch →
  DeviceError ``code="readback"``. Connect clears the queue (*CLS), so any later entry is reported;
- a :READ? without a (valid) reply drains the queue: an entry (+803) → DeviceError; an empty queue means
  the reply was lost on the line, and :READ? (a fresh reading, safe to repeat) is sent again, at most
  ``Options.read_retries`` times;
- :SYST:ERR? is a destructive read and is never resent blindly: a lost reply is a lost entry; it is
  logged, and the read-backs decide whether the configuration took.

Compliance: the 2400 holds the current at the compliance; those readings have |I| ≈ compliance (status
bit 3, not requested); :class:`IVCurve` keeps ``compliance_a`` so the analysis can spot them. The voltage
element is the programmed level (or, with source readback on, the measured one): curves keep what the
instrument reported.

Chosen where the manual leaves it to the user: connect sends *CLS, *RST (output off, known state) and
the configuration above; each action sets the source range to its largest |V|, ordering range and level
so that the level always fits the range; compliance is set before the level; sweeps are stepped point by
point (:SOUR:VOLT, settle on the driver's clock, :READ?) rather than run from the 2400's sweep memory, so
each point is checked against the limits and an error stops the sweep at once; the output goes off at
the end of a sweep and on any error during one or while turning it on.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from typing import Literal, TypeVar

from pydantic import Field

from instruments.base import Driver, DriverSpec, Settings
from instruments.ascii import check_idn, printable_text
from instruments.errors import ConnectionLost, DeviceError, InstrumentError, InstrumentTimeout, LimitError, ProtocolError, naming
from instruments.readings import IVCurve
from instruments.transport import SerialSettings

log = logging.getLogger(__name__)
T = TypeVar("T")

IDN_PREFIX = "KEITHLEY INSTRUMENTS INC.,MODEL 24"
OVERFLOW = 9.9e37  # the 2400 reports +9.91E+37 for an overflowed or unmeasured element
MIN_COMPLIANCE_A = 1e-9  # the lowest current compliance a 2400 accepts
MAX_READING_V, MAX_READING_A = 1100.0, 10.5  # the widest ranges of the series (2410: 1100 V; 2430 pulse: 10.5 A)
_QUEUE_READS = 12  # the queue holds 10 entries plus the overflow entry
_RTOL = 1e-4  # read-back tolerance, relative (the 2400 echoes the programmed value in 7 digits)
_NUMBER = re.compile(r"[+-]?(?:\d{1,20}(?:\.\d{0,20})?|\.\d{1,20})(?:[eE][+-]?\d{1,3})?")
_ERROR = re.compile(r'([+-]?\d{1,5}),"([^"]*)"')
_ADVICE = {
    802: "the output-enable (interlock) line is open: close the fixture lid or check the interlock cable",
    803: "the output is off (the interlock opened or someone turned it off); check the fixture, then repeat",
    -222: "a value outside the instrument's range; check the limits against the model's ranges",
    -113: "a command this instrument does not know; check the model",
}


# --- commands ------------------------------------------------------------------------------------


def _nr3(value: float) -> str:
    return f"{value:+.6E}"


# Commands without arguments, sent through format_command.
IDN, CLEAR_STATUS, RESET, ERROR_QUERY = "*IDN?", "*CLS", "*RST", ":SYST:ERR?"
VOLTAGE_SOURCE, SENSE_CURRENT, CURRENT_AUTORANGE = ":SOUR:FUNC VOLT", ':SENS:FUNC "CURR"', ":SENS:CURR:RANG:AUTO ON"
ELEMENTS_VOLT_CURR, READ = ":FORM:ELEM VOLT,CURR", ":READ?"
LEVEL_QUERY, COMPLIANCE_QUERY, OUTPUT_QUERY = ":SOUR:VOLT?", ":SENS:CURR:PROT?", ":OUTP?"


def format_command(command: str, terminator: str = "\n") -> bytes:
    """One of the argument-less commands above (``IDN``, ``READ`` …) with its terminator."""
    return (command + terminator).encode("ascii")


def format_voltage_range(range_v: float, terminator: str = "\n") -> bytes:
    return format_command(f":SOUR:VOLT:RANG {_nr3(abs(range_v))}", terminator)


def format_source_voltage(voltage_v: float, terminator: str = "\n") -> bytes:
    return format_command(f":SOUR:VOLT {_nr3(voltage_v)}", terminator)


def format_compliance(current_a: float, terminator: str = "\n") -> bytes:
    return format_command(f":SENS:CURR:PROT {_nr3(current_a)}", terminator)


def format_output(on: bool, terminator: str = "\n") -> bytes:
    return format_command(":OUTP ON" if on else ":OUTP OFF", terminator)


# --- replies -------------------------------------------------------------------------------------


def _text(frame: bytes) -> str:
    return printable_text(frame.rstrip(b"\r\n"), frame)


def _float(token: str, frame: bytes) -> float:
    if not _NUMBER.fullmatch(token):
        raise ProtocolError(f"reply {frame!r}: {token!r} is not a number")
    value = float(token)
    if not math.isfinite(value):
        raise ProtocolError(f"reply {frame!r}: {token!r} is not finite")
    return value


def parse_idn(frame: bytes) -> str:
    """``*IDN?`` reply: four comma-separated fields (maker, model, serial, firmware)."""
    return check_idn(_text(frame), frame)


def parse_number(frame: bytes) -> float:
    """One NR1/NR2/NR3 number (a read-back such as ``:SOUR:VOLT?``)."""
    return _float(_text(frame), frame)


def parse_output_state(frame: bytes) -> bool:
    """``:OUTP?`` reply: ``1`` (on) or ``0`` (off)."""
    text = _text(frame)
    if text not in ("0", "1"):
        raise ProtocolError(f":OUTP? reply {frame!r} is neither 0 nor 1")
    return text == "1"


def parse_read(frame: bytes) -> tuple[float, float]:
    """``:READ?`` reply with ``:FORM:ELEM VOLT,CURR``: (voltage V, current A).

    Raises:
        ProtocolError: not two numbers.
        DeviceError: an element reads +9.91E+37 (overflow).
    """
    parts = _text(frame).split(",")
    if len(parts) != 2:
        raise ProtocolError(f":READ? reply {frame!r} is not <volt>,<curr>; is :FORM:ELEM VOLT,CURR in effect?")
    volts, amps = (_float(p, frame) for p in parts)
    if abs(volts) >= OVERFLOW or abs(amps) >= OVERFLOW:
        raise DeviceError(f"reading overflow {frame!r}: the measurement is beyond the range", code="overflow")
    return volts, amps


def parse_measurement(frame: bytes) -> tuple[float, float]:
    """A measured ``:READ?`` reply as :func:`parse_read`, which must be within what a 2400-series instrument can
    source or measure (``MAX_READING_V``, ``MAX_READING_A``): a larger number is a reply garbled into another
    number, a :class:`ProtocolError`, so the reading is taken again rather than the number used."""
    volts, amps = parse_read(frame)
    if abs(volts) > MAX_READING_V or abs(amps) > MAX_READING_A:
        raise ProtocolError(
            f":READ? reply {frame!r} is beyond any 2400-series range (±{MAX_READING_V:g} V, ±{MAX_READING_A:g} A); "
            "if it persists, check the instrument and its cable"
        )
    return volts, amps


def parse_error(frame: bytes) -> tuple[int, str]:
    """``:SYST:ERR?`` reply: (code, message); code 0 means the queue is empty."""
    match = _ERROR.fullmatch(_text(frame))
    if match is None:
        raise ProtocolError(f':SYST:ERR? reply {frame!r} is not <code>,"<message>"')
    return int(match.group(1)), match.group(2)


def sweep_voltages(start_v: float, stop_v: float, points: int) -> tuple[float, ...]:
    """The voltages of a linear staircase from ``start_v`` to ``stop_v`` (both included)."""
    if points <= 1:
        return (float(start_v),)
    span = stop_v - start_v
    return tuple(float(stop_v) if k == points - 1 else start_v + span * k / (points - 1) for k in range(points))


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= _RTOL * max(abs(a), abs(b)) + 1e-12


# --- the driver ----------------------------------------------------------------------------------


class Keithley2400(Driver):
    """A Keithley 2400-series SourceMeter used as a voltage source that measures current."""

    ACTIONS = frozenset({"identify", "source_voltage", "measure", "iv_sweep", "output_off"})
    REPEATABLE = ACTIONS  # absolute settings and measurements of a device that is left as it was

    class Limits(Settings):
        """Safe limits.

        Attributes:
            max_voltage_v: largest |source voltage| any action may apply (required: depends on the sample).
            max_current_a: largest current compliance an action may set.
            max_points: most points in one sweep (the 2400's own sweeps stop at 2500).
            max_settle_s: longest settle time per sweep point.
        """

        max_voltage_v: float = Field(gt=0, le=1100)
        max_current_a: float = Field(default=0.01, gt=0, le=10.5)
        max_points: int = Field(default=201, ge=2, le=2500)
        max_settle_s: float = Field(default=60.0, ge=0)

    class Options(Settings):
        """Other settings.

        Attributes:
            terminator: the RS-232 terminator chosen in the instrument's menu.
            read_retries: further :READ? tries after a reply was lost on the line (queue empty).
        """

        terminator: Literal["\n", "\r", "\r\n"] = "\n"
        read_retries: int = Field(default=2, ge=0, le=10)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._t: str = self.options.terminator
        self._end = self._t.encode("ascii")
        self._level_v: float | None = None  # the source level as last read back; None: unknown

    # --- limit checks (pure) ---------------------------------------------------------------------
    def _check_volts(self, voltage_v: object, what: str) -> None:
        volts = abs(self.number(voltage_v, what))
        self.limit(volts, self.limits.max_voltage_v, f"|{what}|", "V")
        # As sent in 7 digits: 1.23456789 V goes out as +1.234568E+00.
        self.limit(float(_nr3(volts)), self.limits.max_voltage_v, f"|{what}| as sent", "V")

    def _check_compliance(self, compliance_a: object) -> None:
        value = self.number(compliance_a, "current compliance")
        self.limit(value, self.limits.max_current_a, "current compliance", "A", minimum=MIN_COMPLIANCE_A)
        self.limit(float(_nr3(value)), self.limits.max_current_a, "current compliance as sent", "A", minimum=MIN_COMPLIANCE_A)

    def _check_identify(self) -> None:
        """Nothing to check."""

    def _check_source_voltage(self, voltage_v: float, compliance_a: float) -> None:
        self._check_volts(voltage_v, "source voltage")
        self._check_compliance(compliance_a)

    def _check_measure(self) -> None:
        """Nothing to check."""

    def _check_iv_sweep(
        self, start_v: float, stop_v: float, points: int, compliance_a: float, settle_s: float = 0.0
    ) -> None:
        self._check_volts(start_v, "sweep start")
        self._check_volts(stop_v, "sweep stop")
        if isinstance(points, bool) or not isinstance(points, int):
            raise LimitError(f"sweep points must be an integer, got {points!r}", instrument=self.name)
        self.limit(points, self.limits.max_points, "sweep points", "points", minimum=2)
        for k, volts in enumerate(sweep_voltages(start_v, stop_v, points)):
            self._check_volts(volts, f"sweep point {k}")
        self._check_compliance(compliance_a)
        settle = self.number(settle_s, "settle time")
        self.limit(settle, self.limits.max_settle_s, "settle time", "s", minimum=0.0)

    def _check_output_off(self) -> None:
        """Nothing to check."""

    # --- lifecycle -------------------------------------------------------------------------------
    def connect(self) -> None:
        """Opens the port, checks the model, clears the error queue, resets and configures the instrument.

        Raises:
            ProtocolError: the instrument on the port is not a Keithley 2400-series.
            DeviceError: the configuration was refused.
        """
        self.transport.open()
        ident = self.identify()
        if not ident.upper().startswith(IDN_PREFIX):
            raise ProtocolError(
                f"*IDN? answered {ident!r}: not a Keithley 2400-series SourceMeter; check the port name",
                instrument=self.name,
            )
        for command in (CLEAR_STATUS, RESET, VOLTAGE_SOURCE, SENSE_CURRENT, CURRENT_AUTORANGE, ELEMENTS_VOLT_CURR):
            self._send(format_command(command, self._t))
        self._raise_errors("configuring at connect", self._drain_errors())
        self._level_v = self._ask(format_command(LEVEL_QUERY, self._t), parse_number)

    def safe_state(self) -> None:
        """Output off and source 0 V; logs (never raises) what fails."""
        for payload in (format_output(False, self._t), format_source_voltage(0.0, self._t)):
            try:
                self._send(payload)
            except InstrumentError as exc:
                log.error("%s: safe state: %r failed: %s", self.name, payload, exc)
        self._level_v = None
        try:
            if self._ask(format_command(OUTPUT_QUERY, self._t), parse_output_state):
                log.error("%s: safe state: the output still reads ON after :OUTP OFF; turn it off by hand", self.name)
        except InstrumentError as exc:
            log.error("%s: safe state: cannot confirm the output is off: %s", self.name, exc)

    # --- actions ---------------------------------------------------------------------------------
    def identify(self) -> str:
        """The ``*IDN?`` string."""
        self._check_identify()
        return self._ask(format_command(IDN, self._t), parse_idn)

    def source_voltage(self, voltage_v: float, compliance_a: float) -> None:
        """Sources ``voltage_v`` with current compliance ``compliance_a`` and turns the output on.

        Raises:
            LimitError: before any byte, for a voltage or compliance outside the limits.
            DeviceError: the instrument refused (error queue or read-back); the output is then turned off.
        """
        self._check_source_voltage(voltage_v, compliance_a)
        try:
            self._apply(float(voltage_v), float(compliance_a), abs(float(voltage_v)), "source_voltage")
        except BaseException:
            self._output_off_quietly()
            raise

    def measure(self) -> tuple[float, float]:
        """One reading at the present source level: (voltage V, current A).

        Raises:
            DeviceError: +803 when the output is off (e.g. the interlock opened), or an overflow.
        """
        self._check_measure()
        return self._read()

    def iv_sweep(
        self, start_v: float, stop_v: float, points: int, compliance_a: float, settle_s: float = 0.0
    ) -> IVCurve:
        """A linear staircase sweep, point by point; the output is off afterwards, and on any error.

        Args:
            start_v, stop_v: first and last voltage.
            points: number of points (≥ 2).
            compliance_a: current compliance held during the sweep.
            settle_s: wait after setting each point, before reading it.
        """
        self._check_iv_sweep(start_v, stop_v, points, compliance_a, settle_s)
        volts = sweep_voltages(float(start_v), float(stop_v), points)
        measured_v: list[float] = []
        measured_i: list[float] = []
        try:
            self._apply(volts[0], float(compliance_a), max(abs(v) for v in volts), "iv_sweep")
            for k, target in enumerate(volts):
                self._send(format_source_voltage(target, self._t))
                self._level_v = target
                if settle_s > 0:
                    self.clock.sleep(settle_s)
                volts_read, amps = self._read()
                if not _close(volts_read, target):  # source readback on, compliance, or a refused level
                    self._raise_errors(f"iv_sweep point {k} ({target:g} V)", self._drain_errors())
                measured_v.append(volts_read)
                measured_i.append(amps)
        except BaseException:
            self._output_off_quietly()
            raise
        self.output_off()
        return IVCurve(tuple(measured_v), tuple(measured_i), float(compliance_a))

    def output_off(self) -> None:
        """Turns the output off and confirms it.

        Raises:
            DeviceError: the output still reads on.
        """
        self._check_output_off()
        self._send(format_output(False, self._t))
        if self._ask(format_command(OUTPUT_QUERY, self._t), parse_output_state):
            raise DeviceError("the output still reads ON after :OUTP OFF", code="readback", instrument=self.name)

    # --- internals -------------------------------------------------------------------------------
    def _send(self, payload: bytes) -> None:
        self.transport.send(payload, idempotent=True)  # every set command here is absolute

    def _ask(self, payload: bytes, parse: Callable[[bytes], T]) -> T:
        try:
            return self.transport.query(payload, end=self._end, parse=parse, idempotent=True)
        except InstrumentError as exc:
            raise naming(exc, self.name) from None

    def _apply(self, voltage_v: float, compliance_a: float, range_v: float, context: str) -> None:
        """Compliance, range and level (the range always holds the level), verified; then output on, verified."""
        t = self._t
        present = self._level_v
        if present is None:
            present = self._ask(format_command(LEVEL_QUERY, t), parse_number)
        self._level_v = None
        level, rng = format_source_voltage(voltage_v, t), format_voltage_range(range_v, t)
        order = (rng, level) if range_v >= abs(present) else (level, rng)
        for payload in (format_command(VOLTAGE_SOURCE, t), format_compliance(compliance_a, t), *order):
            self._send(payload)
        self._raise_errors(context, self._drain_errors())
        read_v = self._ask(format_command(LEVEL_QUERY, t), parse_number)
        read_a = self._ask(format_command(COMPLIANCE_QUERY, t), parse_number)
        problems = [
            f"source level reads {read_v:g} V, not {voltage_v:g} V" if not _close(read_v, voltage_v) else "",
            f"compliance reads {read_a:g} A, not {compliance_a:g} A" if not _close(read_a, compliance_a) else "",
        ]
        if any(problems):
            detail = "; ".join(p for p in problems if p)
            raise DeviceError(f"{context}: {detail}", code="readback", instrument=self.name)
        self._level_v = read_v
        self._send(format_output(True, t))  # energized only once level and compliance are confirmed
        self._raise_errors(context, self._drain_errors())
        if not self._ask(format_command(OUTPUT_QUERY, t), parse_output_state):
            raise DeviceError(f"{context}: the output reads OFF after :OUTP ON", code="readback", instrument=self.name)

    def _read(self) -> tuple[float, float]:
        """:READ?, resent only when the reply was lost and the error queue is empty."""
        last: InstrumentError | None = None
        for _ in range(1 + self.options.read_retries):
            try:
                return self.transport.query(
                    format_command(READ, self._t), end=self._end, parse=parse_measurement, idempotent=True, retries=0
                )
            except DeviceError as exc:
                raise naming(exc, self.name) from None
            except (InstrumentTimeout, ProtocolError, ConnectionLost) as exc:
                if isinstance(exc, ConnectionLost) and not self.transport.is_open:
                    raise
                last = naming(exc, self.name)
                log.info("%s: :READ? failed (%s); checking the error queue", self.name, exc)
            self._raise_errors(":READ?", self._drain_errors())
        assert last is not None
        raise last

    def _drain_errors(self) -> list[tuple[int, str]]:
        """Reads the error queue until ``0,"No error"``; never resends a :SYST:ERR? whose reply was lost."""
        errors: list[tuple[int, str]] = []
        lost = 0
        for _ in range(_QUEUE_READS):
            try:
                code, message = self.transport.query(
                    format_command(ERROR_QUERY, self._t), end=self._end, parse=parse_error, idempotent=False
                )
            except (InstrumentTimeout, ProtocolError, ConnectionLost) as exc:
                if isinstance(exc, ConnectionLost) and not self.transport.is_open:
                    raise
                lost += 1
                log.warning("%s: a :SYST:ERR? reply was lost (%s); the queue entry it carried is gone", self.name, exc)
                if lost > 3:
                    raise InstrumentTimeout(f"cannot read the error queue: {exc}", instrument=self.name) from None
                continue
            if code == 0:
                return errors
            errors.append((code, message))
        raise DeviceError(
            f"the error queue did not empty after {_QUEUE_READS} reads: {errors}", code="queue", instrument=self.name
        )

    def _raise_errors(self, context: str, errors: list[tuple[int, str]]) -> None:
        if not errors:
            return
        listed = "; ".join(f'{code:+d} "{message}"' for code, message in errors)
        advice = _ADVICE.get(errors[0][0], "see appendix B of the 2400 manual")
        raise DeviceError(
            f"{context}: the SourceMeter reports {listed} ({advice})", code=str(errors[0][0]), instrument=self.name
        )

    def _output_off_quietly(self) -> None:
        try:
            self._send(format_output(False, self._t))
        except InstrumentError as exc:
            log.error("%s: could not turn the output off after an error: %s", self.name, exc)


SPEC = DriverSpec(
    kind="scpi_smu",
    driver=Keithley2400,
    serial=SerialSettings(baudrate=9600, bytesize=8, parity="N", stopbits=1, timeout_s=1.0),
    firmware="simulators.firmware.scpi:make_firmware",
    summary="Keithley 2400-series SourceMeter, SCPI over RS-232: source voltage, measure current, I–V sweeps",
)
