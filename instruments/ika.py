"""IKA hotplate stirrers (RCT digital, C-MAG HS …) over the NAMUR command set.

Protocol as implemented (facts from the IKA operating instructions of the RCT digital and C-MAG HS 7,
chapter "Interfaces and outputs", NAMUR commands; the watchdog echo cross-checked against public drivers):

- Line: RS-232, 9600 baud, 7 data bits, even parity, 1 stop bit (7E1). Commands are upper-case ASCII and
  end with CR LF; so do replies (the manual writes "blank CR LF": a blank before CR LF is tolerated).
- Queries, answered ``<value> <channel>``: ``IN_NAME`` (device name, no channel), ``IN_PV_1`` external
  sensor °C (``25.3 1``), ``IN_PV_2`` plate surface °C (``150.0 2``), ``IN_PV_4`` stirring speed rpm
  (``300 4``), ``IN_SP_1`` temperature set point (``150.0 1``), ``IN_SP_3`` safety temperature, the
  hardware cut-off set on the device (``350.0 3``), ``IN_SP_4`` speed set point (``300 4``). The echoed
  channel must be the one asked for, else :class:`ProtocolError`.
- Set commands get NO reply: ``OUT_SP_1 <°C>``, ``OUT_SP_4 <rpm>``, ``START_1``/``STOP_1`` (heater),
  ``START_4``/``STOP_4`` (motor), ``RESET`` (back to normal operating mode, clears an error display).
  A set point the device will not take (above its safety temperature) is ignored and the old one kept, so
  every set point is read back (``IN_SP_1``/``IN_SP_4``); a mismatch is a :class:`DeviceError`.
- Watchdog mode 1: ``OUT_WD1@<m>`` (m = 20..1500 s) is answered with an echo of m. If the device then
  hears nothing for m seconds it switches heater and motor off and shows ``ER 2``.

Choices where the manual is silent or ambiguous:

- The watchdog is armed at :meth:`IkaHotplate.connect` (``Options.watchdog_s``, 0 = never armed) and the
  arm command is sent again at the start of every action and every poll while waiting. That satisfies
  both readings of the manual ("any command restarts the timer" and "``OUT_WD1@m`` must itself be repeated
  within m"). Between actions the executor MUST call :meth:`IkaHotplate.keepalive` (or :meth:`hold`)
  more often than every ``watchdog_s``; a silent orchestrator is exactly what the watchdog is for.
- A trip is detected two ways: by the driver's clock (more than ``watchdog_s`` since it last armed), and in
  band: a reply ``ER <n>`` is a :class:`DeviceError` with code ``"ER n"`` (what the interface answers
  while ``ER 2`` is displayed is not documented; the simulator answers every query with ``ER 2`` until
  ``RESET``). After a trip the driver sends ``RESET``, ``STOP_1``, ``STOP_4`` and re-arms; if it had the
  heater or motor on it raises ``DeviceError(code="watchdog")`` (the process was interrupted), otherwise it
  carries on after a warning.
- :meth:`connect` sends ``RESET``, ``STOP_1``, ``STOP_4`` first: heater and motor off, error cleared.
- The set-point cap is min(``Limits.max_temp_c``, the safety temperature read at connect). Before connect
  only ``max_temp_c`` is known and checked.
- ``OUT_SP_1`` is sent with one decimal, ``OUT_SP_4`` as a whole number (rounded); read-backs must agree
  within 0.5 °C / 0.5 rpm (devices that keep whole degrees pass).
- An external-sensor reading at or below -50 °C is a sensor error (``DeviceError(code="sensor")``); the
  simulator reports an unplugged sensor as ``-100.0 1``. A real device's error value may differ.
- :meth:`close` switches heater and motor off and leaves the watchdog armed as a backstop.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any, Literal

from pydantic import Field, model_validator

from instruments.base import Driver, DriverSpec, Settings
from instruments.errors import DeviceError, InstrumentError, InstrumentTimeout, LimitError, ProtocolError
from instruments.transport import SerialSettings

log = logging.getLogger(__name__)

EOL = b"\r\n"
WATCHDOG_MIN_S, WATCHDOG_MAX_S = 20, 1500
SENSOR_ERROR_AT_OR_BELOW_C = -50.0
SETPOINT_TOLERANCE = 0.5
ABSOLUTE_ZERO_C, TEMPERATURE_MAX_C = -273.15, 1000.0  # beyond any NAMUR hotplate's sensors (RCT: -10..350 °C)
_VALUE = re.compile(r"(-?\d{1,6}(?:\.\d{0,6})?)\s+(\d{1,2})")
_ERROR = re.compile(r"ER\s*(\d{1,3})")
_ECHO = re.compile(r"(\d{1,6}(?:\.\d{0,6})?)(?:\s+\S+)?")


# --- pure protocol functions ---------------------------------------------------------------------


def format_command(name: str) -> bytes:
    """A bare command or query (``IN_PV_2``, ``START_1``, ``RESET``) with its CR LF."""
    if not re.fullmatch(r"[A-Z0-9_]{1,20}", name):
        raise ValueError(f"not a NAMUR command name: {name!r}")
    return name.encode("ascii") + EOL


def format_set_temperature(temp_c: float) -> bytes:
    """``OUT_SP_1 <°C>`` with one decimal."""
    return f"OUT_SP_1 {float(temp_c):.1f}".encode("ascii") + EOL


def format_set_speed(rpm: float) -> bytes:
    """``OUT_SP_4 <rpm>``, rounded to a whole rpm."""
    return f"OUT_SP_4 {int(round(float(rpm)))}".encode("ascii") + EOL


def _sent(payload: bytes) -> float:
    """The number a set command (``OUT_SP_1 150.0``) carries, as the device will read it."""
    return float(payload.split()[1])


def format_watchdog(seconds: int) -> bytes:
    """``OUT_WD1@<m>``: arm watchdog mode 1 with a timeout of m seconds."""
    return f"OUT_WD1@{int(seconds)}".encode("ascii") + EOL


def _text(frame: bytes) -> str:
    """The reply's text without CR LF and blanks; an ``ER n`` reply raises :class:`DeviceError`."""
    if not frame.endswith(EOL):
        raise ProtocolError(f"reply {frame!r} does not end with CR LF")
    try:
        text = frame[:-2].decode("ascii").strip()
    except UnicodeDecodeError:
        raise ProtocolError(f"reply {frame!r} is not ASCII") from None
    if not text or not text.isprintable():
        raise ProtocolError(f"reply {frame!r} is empty or holds control characters")
    err = _ERROR.fullmatch(text)
    if err:
        code = f"ER {int(err[1])}"
        what = "watchdog expired; heater and motor are off" if code == "ER 2" else "see the device manual's error table"
        raise DeviceError(f"the device reports {code} ({what})", code=code)
    return text


def parse_reading(frame: bytes) -> tuple[float, int]:
    """A value reply ``25.3 1`` → (25.3, 1), the value and its channel; ``ER n`` raises DeviceError."""
    text = _text(frame)
    m = _VALUE.fullmatch(text)
    if m is None:
        raise ProtocolError(f"reply {frame!r} is not '<value> <channel>'")
    return float(m[1]), int(m[2])


def parse_temperature(frame: bytes) -> tuple[float, int]:
    """A temperature reading (``IN_PV_1``/``IN_PV_2``) as :func:`parse_reading`, which must be physically
    possible: a reading below absolute zero or above ``TEMPERATURE_MAX_C`` (a sensor fault or a reply garbled
    into another number) is a :class:`ProtocolError`, so the query is asked again rather than the number used."""
    value, channel = parse_reading(frame)
    if not ABSOLUTE_ZERO_C <= value <= TEMPERATURE_MAX_C:
        raise ProtocolError(
            f"temperature reading {value:g} °C in {frame!r} is outside {ABSOLUTE_ZERO_C:g}..{TEMPERATURE_MAX_C:g} °C, "
            "which no hotplate sensor reads; if it persists, check the sensor and its plug"
        )
    return value, channel


def parse_name(frame: bytes) -> str:
    """The ``IN_NAME`` reply: the device's name."""
    text = _text(frame)
    if len(text) > 80:
        raise ProtocolError(f"device name {text[:20]!r}… is longer than NAMUR's 80 characters")
    return text


def parse_watchdog_echo(frame: bytes) -> float:
    """The echo of ``OUT_WD1@m``: m (a trailing word after it is tolerated)."""
    text = _text(frame)
    m = _ECHO.fullmatch(text)
    if m is None:
        raise ProtocolError(f"watchdog echo {frame!r} is not a number")
    return float(m[1])


# --- the driver ----------------------------------------------------------------------------------


class IkaHotplate(Driver):
    """An IKA hotplate stirrer (NAMUR). See the module docstring for the protocol and choices."""

    ACTIONS = frozenset({
        "set_temperature", "heat_off", "read_temperature", "wait_for_temperature", "hold", "set_stir_rate", "stir_off",
        "keepalive",
    })
    REPEATABLE = ACTIONS  # set points and reads are absolute; a second one changes nothing

    class Limits(Settings):
        """``max_temp_c``: highest set point (the device's safety temperature caps it further);
        ``max_stir_rpm``: highest stirring speed (default: the RCT digital's own maximum)."""

        max_temp_c: float = Field(gt=0, le=550)
        max_stir_rpm: float = Field(default=1500.0, ge=0, le=6000)

    class Options(Settings):
        """``watchdog_s``: watchdog mode 1 timeout, 20..1500 s, 0 = off; ``poll_s``: interval between
        temperature polls while waiting (under half the watchdog); ``control_sensor``: ``plate`` (IN_PV_2) or
        ``external`` (IN_PV_1, the PT1000 in the medium)."""

        watchdog_s: int = 30
        poll_s: float = Field(default=2.0, gt=0, le=600)
        control_sensor: Literal["plate", "external"] = "plate"

        @model_validator(mode="after")
        def _watchdog_range(self) -> "IkaHotplate.Options":
            if self.watchdog_s != 0 and not WATCHDOG_MIN_S <= self.watchdog_s <= WATCHDOG_MAX_S:
                raise ValueError(f"watchdog_s must be 0 (off) or {WATCHDOG_MIN_S}..{WATCHDOG_MAX_S}, got {self.watchdog_s}")
            if self.watchdog_s and self.poll_s >= self.watchdog_s / 2:
                raise ValueError(f"poll_s ({self.poll_s} s) must be under half of watchdog_s ({self.watchdog_s} s)")
            return self

    limits: Limits
    options: Options

    def __init__(self, transport: Any, *, name: str, limits: Any = None, options: Any = None, clock: Any = None):
        super().__init__(transport, name=name, limits=limits, options=options, clock=clock)
        self.device_name = ""
        self.safety_temp_c: float | None = None  # IN_SP_3, read at connect
        self._connected = self._heating = self._stirring = False
        self._setpoint_c: float | None = None
        self._armed_at = -math.inf

    # --- limit checks (pure) ----------------------------------------------------------------------
    def _check_set_temperature(self, temp_c: float) -> None:
        t, safety = self.number(temp_c, "temp_c"), self.safety_temp_c
        # As asked, and as sent with one decimal (149.96 goes out as 150.0, over a 149.97 limit).
        for value, what in ((t, "temperature set point"), (_sent(format_set_temperature(t)), "temperature set point as sent")):
            if safety is not None and value > safety and safety < self.limits.max_temp_c:
                msg = f"{what} {value:g} °C exceeds the device's safety temperature {safety:g} °C (IN_SP_3)"
                raise LimitError(msg + "; refused before sending", instrument=self.name)
            self.limit(value, self.limits.max_temp_c, what, "°C", minimum=0.0)

    def _check_set_stir_rate(self, rpm: float) -> None:
        r = self.number(rpm, "rpm")
        self.limit(r, self.limits.max_stir_rpm, "stirring speed", "rpm", minimum=0.0)
        self.limit(_sent(format_set_speed(r)), self.limits.max_stir_rpm, "stirring speed as sent (whole rpm)", "rpm", minimum=0.0)

    def _check_wait_for_temperature(self, tolerance_c: float = 2.0, timeout_s: float = 1800.0) -> None:
        self.limit(self.number(tolerance_c, "tolerance_c"), 100.0, "tolerance", "°C", minimum=0.1)
        self.limit(self.number(timeout_s, "timeout_s"), 86400.0, "timeout", "s", minimum=0.0)

    def _check_hold(self, duration_s: float, tolerance_c: float | None = None) -> None:
        self.limit(self.number(duration_s, "duration_s"), 7 * 86400.0, "hold duration", "s", minimum=0.0)
        if tolerance_c is not None:
            self.limit(self.number(tolerance_c, "tolerance_c"), 100.0, "tolerance", "°C", minimum=0.1)

    # --- lifecycle --------------------------------------------------------------------------------
    def connect(self) -> None:
        """Opens the port; RESET and heater and motor off; reads the name and the safety temperature; arms the
        watchdog; reads the external sensor once if it is the control sensor (a sensor error raises)."""
        self.transport.open()
        for command in ("RESET", "STOP_1", "STOP_4"):
            self._send(format_command(command))
        self._heating = self._stirring = False
        self.device_name = self._query(format_command("IN_NAME"), parse_name)
        safety = self._reading("IN_SP_3", 3)
        if not 0.0 < safety <= 1000.0:
            raise ProtocolError(f"safety temperature {safety:g} °C (IN_SP_3) is not plausible", instrument=self.name)
        self.safety_temp_c = safety
        if safety < self.limits.max_temp_c:
            log.info("%s: set points capped at the device's safety temperature %g °C", self.name, safety)
        if self.options.watchdog_s:
            self._arm()
        self._connected = True
        if self.options.control_sensor == "external":
            self._read_sensor()
        log.info("%s: connected to %s", self.name, self.device_name)

    def close(self) -> None:
        """Heater and motor off (best effort), then closes the port; the watchdog stays armed as a backstop."""
        if self._connected:
            self.safe_state()
        self._connected = False
        super().close()

    def safe_state(self) -> None:
        """Heater and motor off (``STOP_1``, ``STOP_4``), then a query to see the device took them; never raises."""
        for payload, parse in ((b"STOP_1\r\n", None), (b"STOP_4\r\n", None), (b"IN_SP_1\r\n", parse_reading)):
            try:
                self._query(payload, parse) if parse else self._send(payload)
            except InstrumentError as exc:
                log.error("%s: %r failed (%s); check that the hotplate is off", self.name, payload, exc)
        self._heating = self._stirring = False

    # --- actions ----------------------------------------------------------------------------------
    def set_temperature(self, temp_c: float) -> float:
        """Sets the set point, verifies it by reading it back, then switches the heater on; returns the read-back.

        Raises:
            LimitError: above max_temp_c or the device's safety temperature (nothing sent).
            DeviceError: the device kept another set point (the heater is not started).
        """
        self._check_set_temperature(temp_c)
        self._enter()
        self._send(format_set_temperature(temp_c))
        back = self._setpoint("IN_SP_1", 1, float(temp_c), "°C")
        self._send(format_command("START_1"))
        self._heating, self._setpoint_c = True, back
        self._reading("IN_SP_1", 1)  # it answers after START_1: alive, and took the commands in order
        return back

    def heat_off(self) -> None:
        """Switches the heater off (``STOP_1``), then checks the device still answers."""
        self._enter()
        self._send(format_command("STOP_1"))
        self._heating = False
        self._reading("IN_SP_1", 1)

    def read_temperature(self) -> float:
        """The control sensor's temperature, °C (plate: IN_PV_2; external: IN_PV_1)."""
        self._enter()
        return self._read_sensor()

    def wait_for_temperature(self, tolerance_c: float = 2.0, timeout_s: float = 1800.0) -> float:
        """Polls until the control sensor is within ``tolerance_c`` of the set point; returns that reading.

        Raises:
            InstrumentError: the heater is off. InstrumentTimeout: not there within ``timeout_s``.
        """
        self._check_wait_for_temperature(tolerance_c, timeout_s)
        self._enter()
        target = self._setpoint_c
        if not self._heating or target is None:
            raise InstrumentError("the heater is off; call set_temperature before waiting for it", instrument=self.name)
        temp = self._poll(float(timeout_s), lambda t: abs(t - target) <= tolerance_c)
        if abs(temp - target) > tolerance_c:
            msg = f"{temp:.1f} °C after {float(timeout_s):g} s, not within {tolerance_c:g} °C of {target:g} °C"
            raise InstrumentTimeout(msg + "; check the vessel and sensor, or allow a longer timeout_s", instrument=self.name)
        return temp

    def hold(self, duration_s: float, tolerance_c: float | None = None) -> float:
        """Waits ``duration_s`` polling the temperature (which keeps the watchdog fed); returns the last reading.

        Args:
            duration_s: how long to hold.
            tolerance_c: if given and the heater is on, a reading further than this from the set point is a
                :class:`DeviceError` (code ``"drift"``).
        """
        self._check_hold(duration_s, tolerance_c)
        self._enter()

        def check(temp: float) -> bool:
            sp = self._setpoint_c
            if tolerance_c is not None and self._heating and sp is not None and abs(temp - sp) > tolerance_c:
                msg = f"{temp:.1f} °C is more than {tolerance_c:g} °C from the set point {sp:g} °C"
                raise DeviceError(msg, code="drift", instrument=self.name)
            return False

        return self._poll(float(duration_s), check)

    def set_stir_rate(self, rpm: float) -> float:
        """Sets the stirring speed (verified by read-back) and starts the motor (0 stops it); returns the read-back."""
        self._check_set_stir_rate(rpm)
        if int(round(float(rpm))) == 0:
            self.stir_off()
            return 0.0
        self._enter()
        self._send(format_set_speed(rpm))
        back = self._setpoint("IN_SP_4", 4, float(round(float(rpm))), "rpm")
        self._send(format_command("START_4"))
        self._stirring = True
        self._reading("IN_SP_4", 4)  # in sync after START_4
        return back

    def stir_off(self) -> None:
        """Stops the motor (``STOP_4``), then checks the device still answers."""
        self._enter()
        self._send(format_command("STOP_4"))
        self._stirring = False
        self._reading("IN_SP_4", 4)

    @property
    def keepalive_period_s(self) -> float | None:
        """How often :meth:`keepalive` must be called: a third of the watchdog timeout (None: no watchdog)."""
        return self.options.watchdog_s / 3.0 if self.options.watchdog_s else None

    def keepalive(self) -> None:
        """Re-arms the watchdog (with none, reads the plate); call it more often than every ``watchdog_s``."""
        self._enter()
        if not self.options.watchdog_s:
            self._reading("IN_PV_2", 2)

    # --- helpers ----------------------------------------------------------------------------------
    def _send(self, payload: bytes) -> None:
        self.transport.send(payload, idempotent=True)

    def _query(self, payload: bytes, parse: Any) -> Any:
        return self.transport.query(payload, end=EOL, parse=parse, idempotent=True)

    def _reading(self, query: str, channel: int, parse: Any = parse_reading) -> float:
        try:
            value, got = self._query(format_command(query), parse)
        except DeviceError as exc:
            if exc.code != "ER 2":
                raise DeviceError(str(exc), code=exc.code, instrument=self.name) from None
            self._tripped(f"{query} was answered ER 2")
            value, got = self._query(format_command(query), parse)
        if got != channel:
            raise ProtocolError(f"{query} was answered for channel {got}, not {channel}", instrument=self.name)
        return value

    def _setpoint(self, query: str, channel: int, sent: float, unit: str) -> float:
        back = self._reading(query, channel)
        if abs(back - sent) > SETPOINT_TOLERANCE:
            msg = f"set point reads back {back:g} {unit} after setting {sent:g} {unit}: the device refused it"
            raise DeviceError(msg + " (check its safety temperature and limits)", code="setpoint", instrument=self.name)
        return back

    def _poll(self, duration_s: float, done: Any) -> float:
        """Reads the sensor every ``poll_s`` (re-arming the watchdog) until ``done(reading)`` or the time is up."""
        end = self.clock.now_s() + duration_s
        while True:
            temp = self._read_sensor()
            remaining = end - self.clock.now_s()
            if done(temp) or remaining <= 0:
                return temp
            self.clock.sleep(min(self.options.poll_s, remaining))
            self._watchdog()

    def _read_sensor(self) -> float:
        if self.options.control_sensor == "plate":
            return self._reading("IN_PV_2", 2, parse_temperature)
        temp = self._reading("IN_PV_1", 1, parse_temperature)
        if temp <= SENSOR_ERROR_AT_OR_BELOW_C:
            msg = f"external sensor reads {temp:g} °C: sensor error (unplugged or broken); check the PT1000 and its plug"
            raise DeviceError(msg, code="sensor", instrument=self.name)
        return temp

    def _arm(self) -> None:
        seconds = self.options.watchdog_s

        def checked_echo(frame: bytes) -> float:
            # Checked inside the transport's parse so a wrong echo is retried like any garbled reply (arming is
            # idempotent): a late "30" behind a truncated "30" frames as "3030" and must not fail the experiment.
            echo = parse_watchdog_echo(frame)
            if abs(echo - seconds) > 0.01:
                raise ProtocolError(f"watchdog echo {echo:g} s for OUT_WD1@{seconds}", instrument=self.name)
            return echo

        self._query(format_watchdog(seconds), checked_echo)
        self._armed_at = self.clock.now_s()

    def _enter(self) -> None:
        """At the start of every action: connected? watchdog not expired? Re-arms it."""
        if not self._connected:
            raise InstrumentError("not connected; call connect() first", instrument=self.name)
        self._watchdog()

    def _watchdog(self) -> None:
        """Re-arms the watchdog, after handling a trip (too long since the last arm, or ER 2 in reply)."""
        if not self.options.watchdog_s:
            return
        silent_s = self.clock.now_s() - self._armed_at
        if silent_s > self.options.watchdog_s:
            self._tripped(f"nothing was sent for {silent_s:.0f} s (watchdog {self.options.watchdog_s} s)")
            return
        try:
            self._arm()
        except DeviceError as exc:
            if exc.code != "ER 2":
                raise
            self._tripped("the watchdog command was answered ER 2")

    def _tripped(self, why: str) -> None:
        """The watchdog expired: RESET, everything off, re-arm; raise if a process was interrupted."""
        was_active = self._heating or self._stirring
        log.warning("%s: watchdog expired (%s); resetting the device", self.name, why)
        for command in ("RESET", "STOP_1", "STOP_4"):
            self._send(format_command(command))
        self._heating = self._stirring = False
        if self.options.watchdog_s:
            self._arm()
        if was_active:
            raise DeviceError(
                f"the watchdog expired ({why}): the hotplate switched heater and motor off. The executor must call "
                "keepalive() more often than watchdog_s; the device has been reset and re-armed",
                code="watchdog",
                instrument=self.name,
            )


SPEC = DriverSpec(
    kind="ika_namur",
    driver=IkaHotplate,
    serial=SerialSettings(baudrate=9600, bytesize=7, parity="E", stopbits=1, timeout_s=1.0),
    firmware="simulators.firmware.ika:make_firmware",
    summary="IKA hotplate stirrer (RCT digital, C-MAG HS) over NAMUR: set points read back, watchdog, stirring",
)
