"""Byte-level simulator of an IKA hotplate stirrer (RCT digital class) speaking NAMUR, for ``instruments.ika``.

Behaviour (see the driver's docstring for the protocol):

- Commands end with CR LF; trailing blanks are ignored. Unknown commands and unparseable arguments are
  ignored without a reply, as NAMUR devices do. Set commands never reply.
- The plate surface follows a first-order lag with time constant ``tau_s`` (60 s of virtual time) toward
  the set point while the heater is on (never below ambient, 22 °C), toward ambient while it is off.
  ``IN_PV_2`` and ``IN_PV_1`` both report it, one decimal, with Gaussian noise of ``noise_c`` drawn from
  ``lab.rng``. Time comes only from ``lab.clock``; the plate is advanced whenever a command arrives.
- ``OUT_SP_1`` above the safety temperature (``safety_temp_c``, 350 °C) or the device maximum
  (``max_set_c``, 310 °C), or below 0, is ignored: the old set point stays (the driver's read-back sees it).
  ``OUT_SP_4`` outside 0..``max_rpm`` (1500) is ignored likewise. The actual speed (``IN_PV_4``) is the
  set point while the motor runs, else 0.
- Watchdog mode 1: ``OUT_WD1@m`` with 20 <= m <= 1500 arms it and echoes m (``OUT_WD1@0`` disarms, echo
  ``0``; other values are ignored). When a command arrives more than m virtual seconds after the previous
  one, the device tripped at (previous + m): heater and motor off, and it is then *tripped* (``ER 2``):
  every query, and the watchdog command, is answered ``ER 2`` and set commands are ignored, until
  ``RESET``. ``RESET`` clears the trip, disarms the watchdog and switches heater and motor off.

Events (``lab.record``): ``heater`` (``setpoint_c``, ``on``) on every change of set point or heater state;
``stirrer`` (``rpm``, ``on``) likewise. A watchdog trip's events carry ``watchdog=True`` and
``tripped_at_s`` (the event itself is stamped when the next command revealed the trip).

Knobs: :meth:`IkaFirmware.trip_watchdog` (trip now); ``sensor_unplugged`` (``IN_PV_1`` answers
``-100.0 1``, the external sensor's error value); ``safety_temp_c``, ``tau_s``, ``ambient_c``, ``noise_c``.

Fault plan (``simulators.faults``): ``device_error`` answers a query with ``ER 3`` (the RCT digital's
over-temperature error inside the device), switching the heater off as the device does; set commands get no
reply, so they cannot show it. ``bad_value`` answers a temperature query (``IN_PV_1``, ``IN_PV_2``) with, in
turn, ``nan``, ``9999.9`` and ``-999.9`` in place of the reading.
"""

from __future__ import annotations

import math
import re
from typing import Any

from simulators.lab import SimLab
from simulators.serial_device import Firmware

SENSOR_ERROR_REPLY = "-100.0"
DEVICE_ERROR_REPLY = "ER 3"
BAD_READINGS = ("nan", "9999.9", "-999.9")
_NUMBER = re.compile(r"-?\d+(?:\.\d*)?")


class IkaFirmware(Firmware):
    """One IKA hotplate stirrer.

    Args:
        name: the instrument's name (in recorded events).
        lab: the simulated lab (clock, rng, event log).
        device_name: what ``IN_NAME`` answers.
        safety_temp_c: the safety temperature set on the device (``IN_SP_3``).
        max_set_c: the device's highest set point.
        max_rpm: the device's highest speed.
        tau_s: the plate's thermal time constant.
        ambient_c: room temperature.
        noise_c: standard deviation of the reading noise.
    """

    rx_end = b"\r\n"

    def __init__(
        self,
        name: str,
        lab: SimLab,
        *,
        device_name: str = "RCT digital",
        safety_temp_c: float = 350.0,
        max_set_c: float = 310.0,
        max_rpm: int = 1500,
        tau_s: float = 60.0,
        ambient_c: float = 22.0,
        noise_c: float = 0.05,
    ):
        super().__init__()
        self.name = name
        self.lab = lab
        self.device_name = device_name
        self.safety_temp_c = safety_temp_c
        self.max_set_c = max_set_c
        self.max_rpm = max_rpm
        self.tau_s = tau_s
        self.ambient_c = ambient_c
        self.noise_c = noise_c
        self.sensor_unplugged = False
        now = lab.clock.now_s()
        self.plate_c = ambient_c
        self.setpoint_c = 0.0
        self.heating = False
        self.speed_rpm = 0
        self.stirring = False
        self.watchdog_s: float | None = None
        self.tripped = False
        self._t = now
        self._last_command_t = now

    # --- knobs ------------------------------------------------------------------------------------
    def trip_watchdog(self) -> None:
        """Trips the watchdog now, as if the host had gone silent (heater and motor off, ``ER 2``)."""
        with self._lock:
            now = self.lab.clock.now_s()
            self._advance(now)
            self._trip(now)

    # --- physics ----------------------------------------------------------------------------------
    def _advance(self, t: float) -> None:
        dt = t - self._t
        if dt <= 0:
            return
        target = max(self.setpoint_c, self.ambient_c) if self.heating else self.ambient_c
        self.plate_c = target + (self.plate_c - target) * math.exp(-dt / self.tau_s)
        self._t = t

    def _reading(self) -> float:
        return self.plate_c + float(self.lab.rng.normal(0.0, self.noise_c)) if self.noise_c > 0 else self.plate_c

    # --- state changes, with events ---------------------------------------------------------------
    def _set_heater(self, setpoint_c: float | None = None, on: bool | None = None, **extra: Any) -> None:
        new_sp = self.setpoint_c if setpoint_c is None else setpoint_c
        new_on = self.heating if on is None else on
        if (new_sp, new_on) != (self.setpoint_c, self.heating):
            self.setpoint_c, self.heating = new_sp, new_on
            self.lab.record(self.name, "heater", setpoint_c=float(new_sp), on=new_on, **extra)

    def _set_stirrer(self, rpm: int | None = None, on: bool | None = None, **extra: Any) -> None:
        new_rpm = self.speed_rpm if rpm is None else rpm
        new_on = self.stirring if on is None else on
        if (new_rpm, new_on) != (self.speed_rpm, self.stirring):
            self.speed_rpm, self.stirring = new_rpm, new_on
            self.lab.record(self.name, "stirrer", rpm=float(new_rpm), on=new_on, **extra)

    def _trip(self, at_s: float) -> None:
        self.tripped = True
        self._set_heater(on=False, watchdog=True, tripped_at_s=at_s)
        self._set_stirrer(on=False, watchdog=True, tripped_at_s=at_s)

    # --- the command interpreter ------------------------------------------------------------------
    def handle(self, frame: bytes) -> bytes | None:
        now = self.lab.clock.now_s()
        if self.watchdog_s is not None and not self.tripped and now - self._last_command_t > self.watchdog_s:
            at = self._last_command_t + self.watchdog_s
            self._advance(at)
            self._trip(at)
        self._advance(now)
        self._last_command_t = now
        text = frame[: -len(self.rx_end)].decode("ascii", "replace").strip()
        reply = self._answer(text)
        return None if reply is None else reply.encode("ascii") + b"\r\n"

    def express(self, kind: str, frame: bytes) -> bytes | None:
        command = frame[: -len(self.rx_end)].decode("ascii", "replace").strip().partition(" ")[0]
        if kind == "device_error" and command.startswith("IN_"):
            reply = self.handle(frame)  # the device keeps time and its watchdog as ever
            if reply is None or reply.startswith(b"ER"):
                return reply
            self._set_heater(on=False, error=DEVICE_ERROR_REPLY)
            return DEVICE_ERROR_REPLY.encode("ascii") + b"\r\n"
        if kind == "bad_value" and command in ("IN_PV_1", "IN_PV_2"):
            reply = self.handle(frame)
            if reply is None or reply.startswith(b"ER"):
                return reply
            channel = command[-1]
            return f"{self.next_bad(BAD_READINGS)} {channel}".encode("ascii") + b"\r\n"
        return None

    def _answer(self, text: str) -> str | None:
        command, _, arg = text.partition(" ")
        arg = arg.strip()
        if command == "RESET":
            self.tripped = False
            self.watchdog_s = None
            self._set_heater(on=False)
            self._set_stirrer(on=False)
            return None
        if command.startswith("OUT_WD1@"):
            return "ER 2" if self.tripped else self._watchdog(command.removeprefix("OUT_WD1@"))
        if command.startswith("IN_"):
            return "ER 2" if self.tripped else self._query(command)
        if self.tripped:
            return None
        if command == "OUT_SP_1" and _NUMBER.fullmatch(arg):
            value = float(arg)
            if 0.0 <= value <= min(self.safety_temp_c, self.max_set_c):
                self._set_heater(setpoint_c=value)
        elif command == "OUT_SP_4" and _NUMBER.fullmatch(arg):
            value = float(arg)
            if 0 <= value <= self.max_rpm:
                self._set_stirrer(rpm=int(round(value)))
        elif command in ("START_1", "STOP_1"):
            self._set_heater(on=command == "START_1")
        elif command in ("START_4", "STOP_4"):
            self._set_stirrer(on=command == "START_4")
        return None

    def _watchdog(self, arg: str) -> str | None:
        if not _NUMBER.fullmatch(arg):
            return None
        value = float(arg)
        if value == 0:
            self.watchdog_s = None
        elif 20 <= value <= 1500:
            self.watchdog_s = value
        else:
            return None
        return f"{int(value)}" if value.is_integer() else f"{value:.1f}"

    def _query(self, command: str) -> str | None:
        if command == "IN_NAME":
            return self.device_name
        if command == "IN_PV_1":
            return f"{SENSOR_ERROR_REPLY} 1" if self.sensor_unplugged else f"{self._reading():.1f} 1"
        if command == "IN_PV_2":
            return f"{self._reading():.1f} 2"
        if command == "IN_PV_4":
            return f"{self.speed_rpm if self.stirring else 0} 4"
        if command == "IN_SP_1":
            return f"{self.setpoint_c:.1f} 1"
        if command == "IN_SP_3":
            return f"{self.safety_temp_c:.1f} 3"
        if command == "IN_SP_4":
            return f"{self.speed_rpm} 4"
        return None


def make_firmware(name: str, options: Any, limits: Any, lab: SimLab) -> IkaFirmware:
    """The simulator for one hotplate (the device's safety temperature is its own: 350 °C)."""
    return IkaFirmware(name, lab)
