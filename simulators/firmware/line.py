"""A small fixed Arduino-class rig (a pump board with a set point, an output, a dose counter and a LED),
speaking a line protocol, for testing the generic line driver.

The generic driver's commands come from a campaign file, so no simulator can understand every
configuration; this one is a fixed rig, and campaigns (and tests) that simulate a ``line`` instrument
configure the driver to speak its commands. Lines end with the driver's ``terminator`` (trailing CR and
spaces ignored); replies end with its ``reply_terminator``.

Commands (``<x>`` a decimal number) → reply; effect:

- ``SET <x>`` → ``OK <x>`` (echoed as received); set point, 0 ≤ x ≤ ``max_value``, else ``ERR range``.
- ``GET`` → ``VAL <x:.2f>``; the set point.
- ``ON`` / ``OFF`` → ``OK ON`` / ``OK OFF``; the output. ``OUT?`` → ``OUT 1`` / ``OUT 0``.
- ``DOSE <x>`` → ``OK``; adds x µL to the dose counter, 0 < x ≤ ``max_dose_ul``, else ``ERR range``.
- ``TOTAL`` → ``TOTAL <x:.1f>``; the dose counter since the last reset.
- ``LED 0`` / ``LED 1`` → no reply; the LED.
- anything else → ``ERR unknown``.

A bad number is ``ERR syntax``. While the ``alarm`` knob holds a text (``"overtemp"``) every command is
answered ``ERR <alarm>`` and does nothing, as a sketch that latches a fault would.

Port open (``on_open``, each time the host opens the port): the Arduino resets when ``reset_on_open``
(set point 0, output off, counter 0, LED off) and prints ``banner`` (``READY rig v1``) unless it is None.

World events: ``lab.record(name, "command", line=...)`` for every command received (without terminator).

Fault plan (``simulators.faults``): ``device_error`` answers a command with ``ERR fault`` and does nothing, as
a sketch that hit an error would; ``bad_value`` answers ``GET`` and ``TOTAL`` with, in turn, ``nan``, ``inf``
and ``-inf`` in place of the number (what Arduino's ``Serial.print`` of such a float prints).
"""

from __future__ import annotations

import re

from simulators.lab import SimLab
from simulators.serial_device import Firmware

_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)")
BAD_NUMBERS = ("nan", "inf", "-inf")


class LineRig(Firmware):
    """The rig. Knobs: ``banner`` (None: silent), ``reset_on_open``, ``alarm``, ``max_value``, ``max_dose_ul``.

    Args:
        name: the instrument's name, for ``lab.record``.
        lab: the simulated world.
        terminator: what ends a command from the host.
        reply_terminator: what ends each reply.
    """

    def __init__(self, name: str, lab: SimLab, terminator: bytes = b"\n", reply_terminator: bytes = b"\r\n"):
        super().__init__()
        self.name, self.lab = name, lab
        self.rx_end = terminator
        self.reply_terminator = reply_terminator
        self.banner: str | None = "READY rig v1"
        self.reset_on_open = True
        self.alarm: str | None = None
        self.max_value = 100.0
        self.max_dose_ul = 1000.0
        self.resets = 0
        self._reset()

    def _reset(self) -> None:
        self.value, self.output, self.dosed_ul, self.led = 0.0, False, 0.0, 0

    def on_open(self) -> bytes | None:
        with self._lock:
            if self.reset_on_open:
                self._reset()
                self._buf = b""
                self.resets += 1
            if self.banner is None:
                return None
            return self.banner.encode() + self.reply_terminator

    def handle(self, frame: bytes) -> bytes | None:
        line = frame[: -len(self.rx_end)].decode("ascii", "replace").strip()
        self.lab.record(self.name, "command", line=line)
        reply = self._answer(line)
        return None if reply is None else reply.encode() + self.reply_terminator

    def express(self, kind: str, frame: bytes) -> bytes | None:
        line = frame[: -len(self.rx_end)].decode("ascii", "replace").strip()
        if kind == "device_error" and line and not line.startswith("LED"):  # LED gets no reply to carry it
            self.lab.record(self.name, "command", line=line)
            return b"ERR fault" + self.reply_terminator
        if kind == "bad_value" and line in ("GET", "TOTAL") and self.alarm is None:
            self.lab.record(self.name, "command", line=line)
            word = "VAL" if line == "GET" else "TOTAL"
            return f"{word} {self.next_bad(BAD_NUMBERS)}".encode() + self.reply_terminator
        return None

    def _answer(self, line: str) -> str | None:
        if self.alarm is not None:
            return f"ERR {self.alarm}"
        word, _, arg = line.partition(" ")
        arg = arg.strip()
        if line in ("GET", "ON", "OFF", "OUT?", "TOTAL"):
            if line == "GET":
                return f"VAL {self.value:.2f}"
            if line in ("ON", "OFF"):
                self.output = line == "ON"
                return f"OK {line}"
            if line == "OUT?":
                return f"OUT {int(self.output)}"
            return f"TOTAL {self.dosed_ul:.1f}"
        if word in ("SET", "DOSE"):
            if not _NUMBER.fullmatch(arg):
                return "ERR syntax"
            x = float(arg)
            if word == "SET":
                if not 0.0 <= x <= self.max_value:
                    return "ERR range"
                self.value = x
                return f"OK {arg}"
            if not 0.0 < x <= self.max_dose_ul:
                return "ERR range"
            self.dosed_ul += x
            return "OK"
        if word == "LED" and arg in ("0", "1"):
            self.led = int(arg)
            return None
        return "ERR unknown"


def make_firmware(name: str, options: object, limits: object, lab: SimLab) -> LineRig:
    """The fixed rig, framed with the driver's ``terminator`` and ``reply_terminator``."""
    encoding = getattr(options, "encoding", "ascii")
    return LineRig(
        name,
        lab,
        terminator=getattr(options, "terminator", "\n").encode(encoding),
        reply_terminator=getattr(options, "reply_terminator", "\r\n").encode(encoding),
    )
