"""Byte-level simulator of a Keithley 2400 SourceMeter's SCPI interface over RS-232.

What is modeled (after the *Series 2400 SourceMeter User's Manual*, section 18 and appendix B):

- Headers in short or long form, any case, with or without the leading colon; the optional nodes
  ``[:LEVel][:IMMediate][:AMPLitude]``, ``[:STATe]``, ``[:NEXT]``, ``[:ON]``, ``[:MODE]``, ``[:DC]``; the
  numeric suffix ``1`` (``SOUR1``). Several commands on one line separated by ``;`` (each is taken from
  the root: the relative-path rule after ``;`` is not modeled); after an error the rest of the line is
  ignored, as on the 2400.
- Set commands never reply; an error goes to the error queue (10 entries, then -350 "Queue overflow");
  a query that fails (unknown header, :READ? with the output off) sends nothing at all.
- State: output on/off, source level and its fixed range (0.21/2.1/21/210 V; a level beyond the range
  is -222), current compliance (1 nA … 1.05 A, else -222), sense functions, current autorange,
  :FORM:ELEM (the *RST default is all five elements: VOLT,CURR,RES,TIME,STAT).
- ``*RST``: output off, 0 V on the 21 V range, compliance 105 µA, sense "CURR:DC", all elements; it
  leaves the error queue alone (``*CLS`` clears it).
- :READ? with the output on: VOLT = the programmed level (source readback off), CURR = the world's
  ``lab.current_a(V)`` plus 0.01 % + 100 pA noise, held to ±compliance when the load would draw more
  (the terminal voltage is not lowered in compliance: not modeled); RES = +9.91E+37 (not measured);
  TIME = seconds on the lab clock since *RST; STAT = the status word with only bit 3 (compliance) modeled.
- Only the voltage source is simulated: ``:SOUR:FUNC CURR`` is refused with -224 (a real 2400 accepts it).
- A range lower than the present level is accepted as is (what the 2400 does then is not modeled; the
  driver never asks for it).

Events recorded in the world: ``output`` (``on``, ``voltage_v`` at the terminals, ``compliance_a``) when
the output turns on or off and when the level changes while it is on.

Knobs: :meth:`open_interlock` / :meth:`close_interlock` (the output-enable line: opening it turns the
output off; then ``:OUTP ON`` queues +802 and :READ? queues +803 and stays silent),
``trip_interlock_after_reads`` (open the interlock after that many more readings: a fixture lid lifted
mid-sweep), :meth:`queue_error` (pre-fill the error queue).

Fault plan (``simulators.faults``): ``device_error`` queues -240 "Hardware error" in place of carrying out a
command (a query then sends nothing, as any failed query); ``bad_value`` answers :READ? with the current
element, in turn, +9.91E+37 (the 2400's NaN), ``nan`` and +4.2E+03 A (beyond any 2400-series range).
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Callable
from typing import Any

from orchestrator.errors import ExperimentFailed
from simulators.lab import SimLab
from simulators.serial_device import Firmware

MODEL = "MODEL 2400"
FIRMWARE_REV = "C33   Mar 31 2015 09:32:39/A02  /S/K"
RANGES_V = (0.21, 2.1, 21.0, 210.0)
MAX_COMPLIANCE_A = 1.05
MIN_COMPLIANCE_A = 1e-9
QUEUE_DEPTH = 10
NAN = 9.91e37
HARDWARE_ERROR = (-240, "Hardware error")
BAD_CURRENTS = ("+9.910000E+37", "nan", "+4.200000E+03")
ELEMENTS = ("VOLT", "CURR", "RES", "TIME", "STAT")
COMPLIANCE_BIT = 1 << 3

_LONG = {
    "SOURCE": "SOUR", "FUNCTION": "FUNC", "VOLTAGE": "VOLT", "CURRENT": "CURR", "RANGE": "RANG", "AUTO": "AUTO",
    "SENSE": "SENS", "PROTECTION": "PROT", "FORMAT": "FORM", "ELEMENTS": "ELEM", "OUTPUT": "OUTP",
    "STATE": "STAT", "SYSTEM": "SYST", "ERROR": "ERR", "NEXT": "NEXT", "LEVEL": "LEV", "IMMEDIATE": "IMM",
    "AMPLITUDE": "AMPL", "READ": "READ", "MODE": "MODE", "ON": "ON", "DC": "DC", "RESISTANCE": "RES",
    "TIME": "TIME", "STATUS": "STAT",
}
_TOKENS = {**_LONG, **{short: short for short in _LONG.values()}}
_OPTIONAL = {"LEV", "IMM", "AMPL", "STAT", "NEXT", "ON", "MODE", "DC"}
_NRF = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


class _ScpiError(Exception):
    def __init__(self, code: int, message: str):
        self.code, self.message = code, message
        super().__init__(f"{code},{message}")


def _nr3(value: float) -> str:
    return f"{value:+.6E}"


def _path(header: str) -> str | None:
    """A header in canonical short form without optional nodes (``:sour:volt:lev`` → ``SOUR:VOLT``)."""
    header = header.upper()
    if header.startswith("*"):
        return header
    nodes = header[1:].split(":") if header.startswith(":") else header.split(":")
    out = []
    for node in nodes:
        if node not in _TOKENS and node.endswith("1") and node[:-1] in _TOKENS:
            node = node[:-1]
        short = _TOKENS.get(node)
        if short is None:
            return None
        if short not in _OPTIONAL:
            out.append(short)
    return ":".join(out)


def _number(arg: str) -> float:
    if not arg:
        raise _ScpiError(-109, "Missing parameter")
    if not _NRF.fullmatch(arg):
        raise _ScpiError(-104, "Data type error")
    return float(arg)


def _boolean(arg: str) -> bool:
    value = arg.upper()
    if not value:
        raise _ScpiError(-109, "Missing parameter")
    if value in ("ON", "1"):
        return True
    if value in ("OFF", "0"):
        return False
    raise _ScpiError(-141, "Invalid character data")


class Keithley2400Firmware(Firmware):
    """The 2400's SCPI state machine.

    Args:
        name: the instrument's name (events in the world are recorded under it).
        lab: the simulated world (clock, sample, RNG).
        terminator: the RS-232 terminator set in the menu, both ways.
        serial: the serial number *IDN? reports.
    """

    def __init__(self, name: str, lab: SimLab, terminator: bytes = b"\n", serial: str = "4105523"):
        super().__init__()
        self.rx_end = terminator
        self.name = name
        self.lab = lab
        self.serial = serial
        self.errors: deque[tuple[int, str]] = deque()
        self.interlock_open = False
        self.trip_interlock_after_reads: int | None = None
        self.readings = 0
        self._handlers: dict[tuple[str, bool], Callable[[str], str | None]] = {
            ("*IDN", True): lambda arg: f"KEITHLEY INSTRUMENTS INC.,{MODEL},{self.serial},{FIRMWARE_REV}",
            ("*RST", False): lambda arg: self._reset(),
            ("*CLS", False): lambda arg: self.errors.clear(),
            ("SOUR:FUNC", False): self._source_function,
            ("SOUR:FUNC", True): lambda arg: "VOLT",
            ("SOUR:VOLT", False): self._source_level,
            ("SOUR:VOLT", True): lambda arg: _nr3(self.source_v),
            ("SOUR:VOLT:RANG", False): self._source_range,
            ("SOUR:VOLT:RANG", True): lambda arg: _nr3(self.range_v),
            ("SENS:FUNC", False): self._sense_function,
            ("SENS:FUNC", True): lambda arg: ",".join(f'"{f}:DC"' for f in ("VOLT", "CURR") if f in self.sense),
            ("SENS:CURR:PROT", False): self._compliance,
            ("SENS:CURR:PROT", True): lambda arg: _nr3(self.compliance_a),
            ("SENS:CURR:RANG:AUTO", False): self._autorange,
            ("SENS:CURR:RANG:AUTO", True): lambda arg: "1" if self.current_autorange else "0",
            ("FORM:ELEM", False): self._elements,
            ("FORM:ELEM", True): lambda arg: ",".join(self.elements),
            ("OUTP", False): self._output,
            ("OUTP", True): lambda arg: "1" if self.output_on else "0",
            ("READ", True): self._read,
            ("SYST:ERR", True): self._next_error,
        }
        self.output_on = False
        self._reset()

    # --- knobs -----------------------------------------------------------------------------------
    def open_interlock(self) -> None:
        """Opens the output-enable line: the output turns off and stays off until it is closed."""
        with self._lock:
            self.interlock_open = True
            self._set_output(False)

    def close_interlock(self) -> None:
        with self._lock:
            self.interlock_open = False

    def queue_error(self, code: int, message: str) -> None:
        """Puts an entry in the error queue (as a front-panel or earlier error would)."""
        with self._lock:
            self._push(code, message)

    def express(self, kind: str, frame: bytes) -> bytes | None:
        try:
            header = frame[: -len(self.rx_end)].decode("ascii").strip().partition(" ")[0]
        except UnicodeDecodeError:
            return None
        path = _path(header.rstrip("?")) or ""
        if kind == "device_error" and header and path not in ("SYST:ERR", "*CLS"):
            self._push(*HARDWARE_ERROR)
            return b""  # nothing carried out, nothing sent: the error waits in the queue
        if kind == "bad_value" and path == "READ" and header.endswith("?") and self.output_on and "CURR" in self.elements:
            reply = self.handle(frame)
            if not reply:
                return None
            values = reply[: -len(self.rx_end)].decode("ascii").split(",")
            values[self.elements.index("CURR")] = self.next_bad(BAD_CURRENTS)
            return ",".join(values).encode("ascii") + self.rx_end
        return None

    # --- the command loop ------------------------------------------------------------------------
    def handle(self, frame: bytes) -> bytes | None:
        try:
            text = frame[: -len(self.rx_end)].decode("ascii")
        except UnicodeDecodeError:
            self._push(-101, "Invalid character")
            return None
        replies: list[str] = []
        for command in text.split(";"):
            command = command.strip()
            if not command:
                continue
            header, _, arg = command.partition(" ")
            query = header.endswith("?")
            handler = self._handlers.get((_path(header[:-1] if query else header) or "", query))
            try:
                if handler is None:
                    raise _ScpiError(-113, "Undefined header")
                if query and arg.strip():
                    raise _ScpiError(-108, "Parameter not allowed")
                reply = handler(arg.strip())
            except _ScpiError as exc:
                self._push(exc.code, exc.message)
                break  # the rest of the line is ignored
            if query and reply is not None:
                replies.append(reply)
        return (";".join(replies)).encode("ascii") + self.rx_end if replies else None

    # --- commands --------------------------------------------------------------------------------
    def _reset(self) -> None:
        self._set_output(False)
        self.source_v = 0.0
        self.range_v = 21.0
        self.compliance_a = 105e-6
        self.sense = {"CURR"}
        self.current_autorange = True
        self.elements: tuple[str, ...] = ELEMENTS
        self.t0_s = self.lab.clock.now_s()

    def _source_function(self, arg: str) -> None:
        value = _path(arg)
        if value is None:
            raise _ScpiError(-141, "Invalid character data")
        if value != "VOLT":
            raise _ScpiError(-224, "Illegal parameter value")

    def _source_level(self, arg: str) -> None:
        volts = _number(arg)
        if abs(volts) > self.range_v:
            raise _ScpiError(-222, "Parameter data out of range")
        changed = volts != self.source_v
        self.source_v = volts
        if changed and self.output_on:
            self._record()

    def _source_range(self, arg: str) -> None:
        wanted = abs(_number(arg))
        fitting = [r for r in RANGES_V if r >= wanted]
        if not fitting:
            raise _ScpiError(-222, "Parameter data out of range")
        self.range_v = fitting[0]

    def _sense_function(self, arg: str) -> None:
        names = []
        for item in arg.split(","):
            item = item.strip()
            if len(item) < 2 or item[0] not in "'\"" or item[-1] != item[0]:
                raise _ScpiError(-104, "Data type error")
            name = (_path(item[1:-1]) or "").split(":")[0]
            if name not in ("VOLT", "CURR", "RES"):
                raise _ScpiError(-141, "Invalid character data")
            names.append(name)
        self.sense.update(names)  # concurrent measurements (the *RST default) add functions

    def _compliance(self, arg: str) -> None:
        amps = _number(arg)
        if not MIN_COMPLIANCE_A <= amps <= MAX_COMPLIANCE_A:
            raise _ScpiError(-222, "Parameter data out of range")
        self.compliance_a = amps
        if self.output_on:
            self._record()

    def _autorange(self, arg: str) -> None:
        self.current_autorange = _boolean(arg)

    def _elements(self, arg: str) -> None:
        names = set()
        for item in arg.split(","):
            if not item.strip():
                raise _ScpiError(-109, "Missing parameter")
            name = _TOKENS.get(item.strip().upper())
            if name not in ELEMENTS:
                raise _ScpiError(-141, "Invalid character data")
            names.add(name)
        self.elements = tuple(e for e in ELEMENTS if e in names)  # the 2400 always sends them in this order

    def _output(self, arg: str) -> None:
        on = _boolean(arg)
        if on and self.interlock_open:
            raise _ScpiError(802, "OUTPUT blocked by output enable")
        self._set_output(on)

    def _read(self, arg: str) -> str:
        if not self.output_on:
            raise _ScpiError(803, "Not permitted with OUTPUT off")
        amps = self._current()
        status = 0
        if abs(amps) >= self.compliance_a:
            amps = math.copysign(self.compliance_a, amps)
            status |= COMPLIANCE_BIT
        values = {
            "VOLT": self.source_v,
            "CURR": amps if "CURR" in self.sense else NAN,
            "RES": NAN,
            "TIME": self.lab.clock.now_s() - self.t0_s,
            "STAT": float(status),
        }
        self.readings += 1
        if self.trip_interlock_after_reads is not None:
            self.trip_interlock_after_reads -= 1
            if self.trip_interlock_after_reads <= 0:
                self.trip_interlock_after_reads = None
                self.interlock_open = True
                self._set_output(False)
        return ",".join(_nr3(values[e]) for e in self.elements)

    def _next_error(self, arg: str) -> str:
        code, message = self.errors.popleft() if self.errors else (0, "No error")
        return f'{code},"{message}"'

    # --- helpers ---------------------------------------------------------------------------------
    def _current(self) -> float:
        try:
            amps = self.lab.current_a(self.source_v)
        except ExperimentFailed:  # no materials model: nothing connected but the leakage
            amps = 1e-9 * self.source_v
        return amps + float(self.lab.rng.normal(0.0, 1e-4 * abs(amps) + 1e-10))

    def _push(self, code: int, message: str) -> None:
        if len(self.errors) >= QUEUE_DEPTH:
            self.errors[-1] = (-350, "Queue overflow")
        else:
            self.errors.append((code, message))

    def _set_output(self, on: bool) -> None:
        if on != self.output_on:
            self.output_on = on
            self._record()

    def _record(self) -> None:
        self.lab.record(
            self.name, "output", on=self.output_on, voltage_v=self.source_v if self.output_on else 0.0,
            compliance_a=self.compliance_a,
        )


def make_firmware(name: str, options: Any, limits: Any, lab: SimLab) -> Keithley2400Firmware:
    """The simulator for one SourceMeter; ``options.terminator`` sets the line terminator."""
    terminator = getattr(options, "terminator", "\n")
    return Keithley2400Firmware(name, lab, terminator=terminator.encode("ascii"))
