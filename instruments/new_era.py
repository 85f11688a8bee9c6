"""New Era syringe pumps (NE-1000 family) over their RS-232 "basic mode" protocol, one or many on a port.

Protocol as implemented (facts from the NE-1000 Multi-Phaser user manual, chapter "RS-232 Communications";
the byte syntax was cross-checked against the public nesp-lib, read for facts only):

- Line: 19200 baud, 8N1 (factory default). Pumps on a network share one port; each has an address 0-99.
- Command: ``<address><command><data>\\r`` with no separators, e.g. ``1RAT100.0UM\\r``; a bare ``1\\r``
  asks for the status. Numbers have at most 4 digits and one decimal point, at most 3 decimals.
- Reply: STX (0x02), the 2-digit address, a prompt, data, ETX (0x03): ``\\x0201S\\x03``. Prompts: S stopped,
  I infusing, W withdrawing, P paused, T pause phase, U user wait, X purging. An alarm replaces the prompt:
  ``A?R`` power was interrupted, ``A?S`` motor stalled, ``A?T`` safe-mode comms timeout, ``A?E`` program
  error, ``A?O`` program phase out of range. Errors follow the prompt: ``?`` unknown command, ``?NA`` not
  applicable now, ``?OOR`` out of range, ``?COM`` invalid packet, ``?IGN`` ignored (phase start).
  An alarm or error is a :class:`DeviceError` whose ``code`` is that text (``"A?S"``, ``"?OOR"``).
- ``DIA`` syringe inner diameter (mm), ``RAT`` rate + units (UM µL/min, MM mL/min, UH µL/h, MH mL/h),
  ``VOL`` volume to dispense (``VOLUL``/``VOLML`` set its units), ``DIR`` INF/WDR, ``RUN``, ``STP`` (pauses
  a running pump; a second ``STP`` stops it), ``DIS`` dispensed volumes (``I1.234W0.000UL``), ``CLD INF``/
  ``CLD WDR`` clear them, ``VER`` model and firmware (``NE1000V3.928``). Each query's reply without the
  data is an acknowledgement. The echoed address must be the driver's (:class:`ProtocolError` otherwise).

Choices where the manual leaves it to the host:

- :meth:`NewEraPump.dispense` / :meth:`withdraw`: status (a paused pump is stopped, a running one is an
  error), then DIA, VOL units, VOL, RAT, DIR, each sent as an absolute setting (``idempotent=True``) and
  read back; ``CLD`` of that direction (read back as 0 by DIS); then ``RUN`` with ``idempotent=False``.
  The units are whichever represent the value best in 4 digits (a value that loses more than 0.5 % is a
  :class:`LimitError`). The driver then polls ``DIS`` (its reply carries the prompt, so it is also the
  status) every ``Options.poll_s`` on its clock until the pump stops, bounded by 1.5 x the nominal time +
  ``Options.run_margin_s``, and checks the volume pumped within 0.5 % + 0.001 µL.
- A lost or garbled reply to ``RUN`` (timeout, corrupt frame, port failure, an alarm in its place) is never
  answered with a second ``RUN``: the driver asks ``DIS``. Running → it keeps polling; stopped with the
  volume done → success; stopped with nothing pumped → ``DeviceError(code="not_started")`` with
  ``effect_unknown=False`` (it did not start; the step may be retried). Any other failure after ``RUN``
  carries ``effect_unknown=True`` and the driver tries to stop the pump first.
- A stall (``A?S`` in a poll's reply) is raised as ``DeviceError(code="A?S", effect_unknown=True)`` naming
  the volume pumped (read by one more ``DIS``; the alarm is reported once).
- :meth:`connect`: every connect query is idempotent (status, ``VER``, ``DIA``) and asked up to
  ``CONNECT_RETRIES`` more times after a lost or garbled reply: a failed connect costs the whole run, not one
  experiment. An alarm is reported once, in place of the reply to one command, which the pump did not carry
  out; reading it clears it. ``A?R`` (power was interrupted: ``power_reset_seen`` becomes True), ``A?S``
  (a stall) and ``A?T`` (safe-mode timeout) at connect happened before this connection and left the pump
  stopped, so they are logged, kept in ``alarms_at_connect``, and the command is sent again; a stall that
  recurs is caught on the next run, where it names the volume pumped. ``A?E``/``A?O`` (a pumping program
  failed or is out of range) are refused: a program is loaded that this driver does not run; clear it at the
  pump. A running pump is stopped; DIA is set and verified.
- :meth:`stop`: ``STP`` until the prompt is S (at most 3 times; a paused pump needs the second).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, model_validator

from instruments.base import Driver, DriverSpec, Settings
from instruments.errors import DeviceError, InstrumentError, InstrumentTimeout, LimitError, ProtocolError
from instruments.transport import SerialSettings

log = logging.getLogger(__name__)

STX, ETX = b"\x02", b"\x03"
PROMPTS = {
    "S": "stopped", "I": "infusing", "W": "withdrawing", "P": "paused", "T": "in a pause phase", "U": "waiting for the user",
    "X": "purging",
}
ALARMS = {
    "R": "the pump was reset (power was interrupted)", "S": "the motor stalled", "T": "safe-mode communications timed out",
    "E": "pumping program error", "O": "pumping program phase out of range",
}
ERRORS = {
    "": "command not recognized", "NA": "command not applicable now", "OOR": "data out of range",
    "COM": "invalid communications packet", "IGN": "command ignored (simultaneous phase start)",
}
RATE_UNITS = {"UM": 1.0, "UH": 1.0 / 60.0, "MM": 1000.0, "MH": 1000.0 / 60.0}  # → µL/min
VOLUME_UNITS = {"UL": 1.0, "ML": 1000.0}  # → µL
Direction = Literal["INF", "WDR"]
_NUM = r"(\d{1,6}(?:\.\d{0,4})?|\.\d{1,4})"
REL_TOLERANCE, ABS_TOLERANCE_UL = 0.005, 0.001
CONNECT_RETRIES = 4  # further tries of each connect query after a lost or garbled reply (any query gets 2)
CLEARED_AT_CONNECT = ("A?R", "A?S", "A?T")  # alarms from before the connection that leave the pump stopped


@dataclass(frozen=True)
class Reply:
    """One reply frame: the pump's address, its prompt and the data after it."""

    address: int
    prompt: str
    data: str


@dataclass(frozen=True)
class Dispensed:
    """A ``DIS`` reply: the prompt (status) and the volumes infused and withdrawn since ``CLD``, µL."""

    prompt: str
    infused_ul: float
    withdrawn_ul: float


# --- pure protocol functions ---------------------------------------------------------------------


def format_number(value: float) -> str:
    """``value`` in the pump's format (at most 4 digits, 3 decimals), as precise as fits; ValueError if it cannot."""
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"the pump takes finite numbers >= 0, not {value!r}")
    for decimals in (3, 2, 1, 0):
        text = f"{value:.{decimals}f}"
        if sum(c.isdigit() for c in text) <= 4:
            return text
    raise ValueError(f"{value:g} does not fit the pump's 4 digits")


def best_units(value: float, units: dict[str, float], at_most: float = math.inf) -> tuple[str, str, float]:
    """(number text, unit, the value it means) for the unit of ``units`` (name → base per unit) that sends ``value``
    (base units) most precisely without meaning more than ``at_most`` (a limit: 777.77 µL is not sent as 777.8);
    ties go to the first. ValueError when none can express it."""
    best: tuple[float, str, str, float] | None = None
    for unit, factor in units.items():
        try:
            text = format_number(value / factor)
        except ValueError:
            continue
        sent = float(text) * factor
        if sent > at_most:
            continue
        error = abs(sent - value) / value if value else abs(sent)
        if best is None or error < best[0]:
            best = (error, text, unit, sent)
    if best is None:
        raise ValueError(f"{value:g} cannot be expressed in any of {', '.join(units)}")
    return best[1], best[2], best[3]


def format_command(address: int, command: str = "", data: str = "") -> bytes:
    """``<address><command><data>\\r``; a bare address asks for the status."""
    if not isinstance(address, int) or not 0 <= address <= 99:
        raise ValueError(f"pump address must be 0-99, got {address!r}")
    if not re.fullmatch(r"[A-Z]{0,3}", command) or not re.fullmatch(r"[A-Z0-9.]*", data):
        raise ValueError(f"not a pump command: {command!r} {data!r}")
    return f"{address}{command}{data}\r".encode("ascii")


def format_rate(address: int, rate_ul_min: float) -> bytes:
    """``RAT`` with the number and units that express ``rate_ul_min`` best."""
    text, unit, _ = best_units(rate_ul_min, RATE_UNITS)
    return format_command(address, "RAT", text + unit)


def parse_reply(frame: bytes, address: int | None = None) -> Reply:
    """Splits a reply frame (STX … ETX) that must come from ``address`` (None: any).

    Raises:
        ProtocolError: bad framing, address or prompt. DeviceError: an alarm or error reply.
    """
    if len(frame) < 5 or frame[:1] != STX or frame[-1:] != ETX:
        raise ProtocolError(f"reply {frame!r} is not STX <address> <prompt> [data] ETX")
    try:
        text = frame[1:-1].decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError(f"reply {frame!r} is not ASCII") from None
    if not re.fullmatch(r"\d\d", text[:2]) or not text.isprintable():
        raise ProtocolError(f"reply {frame!r} does not begin with a 2-digit address, or holds control characters")
    got, prompt, data = int(text[:2]), text[2], text[3:]
    if address is not None and got != address:
        raise ProtocolError(f"reply {frame!r} is from address {got}, not {address}")
    if prompt == "A":
        if len(data) == 2 and data[0] == "?" and data[1] in ALARMS:
            raise DeviceError(f"pump {got:02d} alarm A?{data[1]}: {ALARMS[data[1]]}", code=f"A?{data[1]}")
        raise ProtocolError(f"reply {frame!r}: unknown alarm")
    if prompt not in PROMPTS:
        raise ProtocolError(f"reply {frame!r}: unknown prompt {prompt!r}")
    if data.startswith("?"):
        if data[1:] in ERRORS:
            raise DeviceError(f"pump {got:02d} answered {data}: {ERRORS[data[1:]]}", code=data)
        raise ProtocolError(f"reply {frame!r}: unknown error {data!r}")
    return Reply(got, prompt, data)


def parse_status(frame: bytes, address: int | None = None) -> str:
    """An acknowledgement (status, RUN, STP, a setting): the prompt; data here is a protocol error."""
    reply = parse_reply(frame, address)
    if reply.data:
        raise ProtocolError(f"reply {frame!r} carries data {reply.data!r} where only a prompt was expected")
    return reply.prompt


def _data(frame: bytes, address: int | None, pattern: str, what: str) -> re.Match[str]:
    reply = parse_reply(frame, address)
    m = re.fullmatch(pattern, reply.data)
    if m is None:
        raise ProtocolError(f"reply {frame!r} is not a {what}")
    return m


def parse_diameter(frame: bytes, address: int | None = None) -> float:
    """``DIA`` query reply → mm."""
    return float(_data(frame, address, _NUM, "diameter")[1])


def parse_rate(frame: bytes, address: int | None = None) -> float:
    """``RAT`` query reply (``100.0UM``) → µL/min."""
    m = _data(frame, address, _NUM + "(UM|MM|UH|MH)", "rate")
    return float(m[1]) * RATE_UNITS[m[2]]


def parse_volume(frame: bytes, address: int | None = None) -> float:
    """``VOL`` query reply (``1.000ML``) → µL."""
    m = _data(frame, address, _NUM + "(UL|ML)", "volume")
    return float(m[1]) * VOLUME_UNITS[m[2]]


def parse_direction(frame: bytes, address: int | None = None) -> str:
    """``DIR`` query reply → ``INF`` or ``WDR``."""
    return _data(frame, address, "(INF|WDR)", "direction")[1]


def parse_version(frame: bytes, address: int | None = None) -> str:
    """``VER`` query reply (``NE1000V3.928``)."""
    return _data(frame, address, r"([A-Z0-9][A-Z0-9 .\-]{0,30})", "version")[1]


def parse_dispensed(frame: bytes, address: int | None = None) -> Dispensed:
    """``DIS`` reply (``I1.234W0.000UL`` after the prompt) → :class:`Dispensed` in µL."""
    reply = parse_reply(frame, address)
    m = re.fullmatch("I" + _NUM + "W" + _NUM + "(UL|ML)", reply.data)
    if m is None:
        raise ProtocolError(f"reply {frame!r} is not I<volume>W<volume><units>")
    factor = VOLUME_UNITS[m[3]]
    return Dispensed(reply.prompt, float(m[1]) * factor, float(m[2]) * factor)


# --- the driver ----------------------------------------------------------------------------------


class NewEraPump(Driver):
    """One New Era syringe pump, addressed on a (possibly shared) port. See the module docstring."""

    ACTIONS = frozenset({"dispense", "withdraw", "stop"})
    REPEATABLE = frozenset({"stop"})  # a dispense sent twice uses precursor twice

    class Limits(Settings):
        """``syringe_volume_ul``: the syringe's capacity, which no single run may exceed; ``max_rate_ul_min``;
        ``max_volume_ul``: the largest single run (default and at most: the syringe volume)."""

        syringe_volume_ul: float = Field(gt=0)
        max_rate_ul_min: float = Field(gt=0)
        max_volume_ul: float | None = Field(default=None, gt=0)

        @model_validator(mode="after")
        def _within_syringe(self) -> "NewEraPump.Limits":
            if self.max_volume_ul is not None and self.max_volume_ul > self.syringe_volume_ul:
                msg = f"max_volume_ul ({self.max_volume_ul:g}) exceeds syringe_volume_ul ({self.syringe_volume_ul:g})"
                raise ValueError(msg)
            return self

    class Options(Settings):
        """``address``: the pump's network address (0-99); ``syringe_diameter_mm``: the syringe's inner diameter
        (0.1-50 mm, sent in 4 digits); ``reagent``: what the syringe holds (a label); ``poll_s``: interval between
        status polls while pumping; ``run_margin_s``: time allowed beyond 1.5 x the nominal pumping time."""

        address: int = Field(default=0, ge=0, le=99)
        syringe_diameter_mm: float = Field(ge=0.1, le=50.0)
        reagent: str = ""
        poll_s: float = Field(default=1.0, gt=0, le=60)
        run_margin_s: float = Field(default=30.0, ge=0)

        @model_validator(mode="after")
        def _diameter_fits(self) -> "NewEraPump.Options":
            d = self.syringe_diameter_mm
            if abs(float(format_number(d)) - d) > 1e-3 * d:
                raise ValueError(f"syringe_diameter_mm {d:g} loses over 0.1 % in the pump's 4 digits")
            return self

    limits: Limits
    options: Options

    def __init__(self, transport: Any, *, name: str, limits: Any = None, options: Any = None, clock: Any = None):
        super().__init__(transport, name=name, limits=limits, options=options, clock=clock)
        self.address: int = self.options.address
        self.power_reset_seen = False
        self.alarms_at_connect: list[str] = []
        self.version = ""
        self._connected = False

    # --- limit checks (pure) ----------------------------------------------------------------------
    def _check_pumping(self, volume_ul: float, rate_ul_min: float) -> None:
        volume, rate = self.number(volume_ul, "volume_ul"), self.number(rate_ul_min, "rate_ul_min")
        if volume < 0 or rate <= 0:
            raise LimitError(f"volume ({volume:g} µL) must be >= 0 and rate ({rate:g} µL/min) positive", instrument=self.name)
        if volume == 0:
            return  # nothing to pump: no command is sent
        syringe = self.limits.syringe_volume_ul
        if volume > syringe:
            msg = f"volume {volume:g} µL exceeds the syringe volume {syringe:g} µL; refused before sending"
            raise LimitError(msg, instrument=self.name)
        self.limit(volume, self.limits.max_volume_ul or syringe, "volume", "µL")
        self.limit(rate, self.limits.max_rate_ul_min, "rate", "µL/min")
        for value, units, what, top in (
            (volume, VOLUME_UNITS, "volume µL", self._max_volume_ul()), (rate, RATE_UNITS, "rate µL/min", self.limits.max_rate_ul_min)
        ):
            try:
                _, _, sent = best_units(value, units, at_most=top)
            except ValueError:
                sent = 0.0
            if abs(sent - value) > REL_TOLERANCE * value:
                msg = f"{what} {value:g} cannot be sent in the pump's 4-digit format without exceeding the limit {top:.12g}"
                raise LimitError(msg, instrument=self.name)

    def _max_volume_ul(self) -> float:
        return self.limits.max_volume_ul or self.limits.syringe_volume_ul

    _check_dispense = _check_withdraw = _check_pumping

    # --- lifecycle --------------------------------------------------------------------------------
    def connect(self) -> None:
        """Opens the (shared) port, clears the alarms a pump reports once, stops a running pump, sets the diameter.

        Raises:
            DeviceError: a pumping-program alarm (``A?E``, ``A?O``), or an alarm in place of every reply.
            InstrumentTimeout, ProtocolError: no usable reply after ``CONNECT_RETRIES`` further tries.
        """
        self.transport.open()
        prompt = self._connect_query(format_command(self.address), parse_status)
        self.version = self._connect_query(format_command(self.address, "VER"), parse_version)
        self._connected = True
        if prompt != "S":
            log.warning("%s: pump %d was %s at connect; stopping it", self.name, self.address, PROMPTS[prompt])
            self.stop()
        self._set_diameter(connecting=True)
        log.info("%s: connected to %s at address %d", self.name, self.version, self.address)

    def _connect_query(self, payload: bytes, parse: Any) -> Any:
        """An idempotent connect query, with more tries, and the alarms of :data:`CLEARED_AT_CONNECT` cleared by
        reading them and asking again (module docstring)."""
        for _ in range(3):
            try:
                return self._query(payload, parse, retries=CONNECT_RETRIES)
            except DeviceError as exc:
                if exc.code not in CLEARED_AT_CONNECT:
                    if exc.code.startswith("A?"):
                        msg = (
                            f"pump {self.address} reports alarm {exc.code} at connect ({ALARMS[exc.code[2]]}): a pumping "
                            "program is loaded or failed, which this driver does not run; clear it at the pump's keypad "
                            "(or power-cycle the pump), then connect again"
                        )
                        raise DeviceError(msg, code=exc.code, instrument=self.name) from None
                    raise
                self.alarms_at_connect.append(exc.code)
                if exc.code == "A?R":
                    self.power_reset_seen = True
                    log.warning("%s: pump %d reports A?R (power was interrupted); the alarm is cleared", self.name, self.address)
                else:
                    log.warning(
                        "%s: pump %d reports %s (%s) at connect, from before this connection; the pump is stopped and the "
                        "alarm cleared by reading it. If it recurs on a run, check the syringe and the line for a blockage",
                        self.name, self.address, exc.code, ALARMS[exc.code[2]],
                    )
        msg = f"pump {self.address} answered {payload!r} with an alarm three times in a row at connect; check the pump's display"
        raise DeviceError(msg, code="alarm", instrument=self.name)

    def safe_state(self) -> None:
        """Stops the pump; never raises."""
        try:
            self.stop()
        except InstrumentError as exc:
            log.error("%s: could not stop pump %d: %s", self.name, self.address, exc)

    # --- actions ----------------------------------------------------------------------------------
    def dispense(self, volume_ul: float, rate_ul_min: float) -> float:
        """Infuses ``volume_ul`` at ``rate_ul_min``, waits until done, and returns the volume the pump reports, µL.

        Raises:
            LimitError: outside the limits (nothing sent). DeviceError: refused, stalled, short.
            InstrumentError: with ``effect_unknown=True`` when it may have pumped (never re-run blindly).
        """
        self._check_dispense(volume_ul, rate_ul_min)
        if volume_ul == 0:
            return 0.0  # a recipe with none of this reagent: the pump is not touched
        return self._pump(float(volume_ul), float(rate_ul_min), "INF")

    def withdraw(self, volume_ul: float, rate_ul_min: float) -> float:
        """Withdraws ``volume_ul`` at ``rate_ul_min`` and waits until done (as :meth:`dispense`)."""
        self._check_withdraw(volume_ul, rate_ul_min)
        if volume_ul == 0:
            return 0.0
        return self._pump(float(volume_ul), float(rate_ul_min), "WDR")

    def stop(self) -> None:
        """Stops the pump (``STP`` until the prompt is S); DeviceError if it is still not stopped after three."""
        for _ in range(3):
            try:
                if self._query(format_command(self.address, "STP"), parse_status) == "S":
                    return
            except DeviceError as exc:
                if not exc.code.startswith("A?"):
                    raise
                log.warning("%s: %s while stopping; sending STP again", self.name, exc)
        raise DeviceError(f"pump {self.address} did not stop after three STP", code="not_stopped", instrument=self.name)

    # --- pumping ----------------------------------------------------------------------------------
    def _pump(self, volume: float, rate: float, direction: Direction) -> float:
        if not self._connected:
            raise InstrumentError("not connected; call connect() first", instrument=self.name)
        prompt = self._status()
        if prompt == "P":
            self.stop()
        elif prompt != "S":
            msg = f"pump {self.address} is {PROMPTS[prompt]}; it must be stopped before a new run"
            raise DeviceError(msg, code="busy", instrument=self.name)
        self._configure(volume, rate, direction)
        self._ack(format_command(self.address, "CLD", direction))
        before = self._dispensed()
        if (before.infused_ul if direction == "INF" else before.withdrawn_ul) != 0:
            raise DeviceError(f"CLD {direction} did not clear the dispensed volume", code="CLD", instrument=self.name)
        lost: InstrumentError | None = None
        try:
            self._query(format_command(self.address, "RUN"), parse_status, idempotent=False)
        except DeviceError as exc:
            if not exc.code.startswith("A?"):
                raise  # refused (?NA, ?OOR …): the pump did not run
            lost = exc
        except InstrumentError as exc:
            lost = exc
        if lost is not None:
            log.warning("%s: reply to RUN lost (%s); asking the pump instead of resending", self.name, lost)
        try:
            return self._await_run(volume, rate, direction, lost)
        except InstrumentError as exc:
            if getattr(exc, "code", "") != "not_started":
                exc.effect_unknown = True
            self.safe_state()
            raise

    def _configure(self, volume: float, rate: float, direction: Direction) -> None:
        self._set_diameter()
        vol_text, vol_unit, vol_sent = best_units(volume, VOLUME_UNITS, at_most=self._max_volume_ul())
        self._ack(format_command(self.address, "VOL", vol_unit))
        self._ack(format_command(self.address, "VOL", vol_text))
        self._verify("volume", vol_sent, self._query(format_command(self.address, "VOL"), parse_volume), "µL")
        rate_text, rate_unit, rate_sent = best_units(rate, RATE_UNITS, at_most=self.limits.max_rate_ul_min)
        self._ack(format_command(self.address, "RAT", rate_text + rate_unit))
        self._verify("rate", rate_sent, self._query(format_command(self.address, "RAT"), parse_rate), "µL/min")
        self._ack(format_command(self.address, "DIR", direction))
        got = self._query(format_command(self.address, "DIR"), parse_direction)
        if got != direction:
            raise DeviceError(f"direction reads back {got}, not {direction}", code="setting", instrument=self.name)

    def _set_diameter(self, connecting: bool = False) -> None:
        text = format_number(self.options.syringe_diameter_mm)
        query = self._connect_query if connecting else self._query
        query(format_command(self.address, "DIA", text), parse_status)  # an absolute setting: safe to send again
        got = query(format_command(self.address, "DIA"), parse_diameter)
        self._verify("syringe diameter", float(text), got, "mm")

    def _await_run(self, volume: float, rate: float, direction: Direction, lost: InstrumentError | None) -> float:
        deadline = self.clock.now_s() + 1.5 * volume / rate * 60.0 + self.options.run_margin_s
        running = "I" if direction == "INF" else "W"
        while True:
            try:
                d = self._dispensed()
            except DeviceError as exc:
                if exc.code != "A?S":
                    raise
                moved = self._moved(self._dispensed(), direction)
                msg = f"motor stalled after {moved:g} of {volume:g} µL (A?S); check the syringe and the line for a blockage"
                raise DeviceError(msg, code="A?S", instrument=self.name) from None
            moved = self._moved(d, direction)
            if d.prompt == running:
                if self.clock.now_s() > deadline:
                    msg = f"still pumping after {moved:g} of {volume:g} µL at the deadline"
                    raise InstrumentTimeout(msg, instrument=self.name)
                self.clock.sleep(self.options.poll_s)
                continue
            if d.prompt != "S":
                msg = f"pump became {PROMPTS[d.prompt]} after {moved:g} of {volume:g} µL"
                raise DeviceError(msg, code=f"prompt {d.prompt}", instrument=self.name)
            if lost is not None and moved == 0:
                msg = f"the reply to RUN was lost ({lost}) and the pump is stopped with nothing pumped: it did not start"
                raise DeviceError(msg, code="not_started", instrument=self.name)
            if abs(moved - volume) > REL_TOLERANCE * volume + ABS_TOLERANCE_UL:
                raise DeviceError(f"pumped {moved:g} µL of {volume:g} µL", code="volume", instrument=self.name)
            return moved

    # --- helpers ----------------------------------------------------------------------------------
    @staticmethod
    def _moved(d: Dispensed, direction: Direction) -> float:
        return d.infused_ul if direction == "INF" else d.withdrawn_ul

    def _query(self, payload: bytes, parse: Any, idempotent: bool = True, retries: int = 2) -> Any:
        address = self.address

        def parse_here(frame: bytes) -> Any:
            return parse(frame, address)

        try:
            return self.transport.query(payload, end=ETX, start=STX, parse=parse_here, idempotent=idempotent, retries=retries)
        except DeviceError as exc:
            raise DeviceError(str(exc), code=exc.code, instrument=self.name) from None

    def _ack(self, payload: bytes) -> str:
        return self._query(payload, parse_status)

    def _status(self) -> str:
        return self._query(format_command(self.address), parse_status)

    def _dispensed(self) -> Dispensed:
        return self._query(format_command(self.address, "DIS"), parse_dispensed)

    def _verify(self, what: str, sent: float, got: float, unit: str) -> None:
        if abs(got - sent) > 1e-6 * max(abs(sent), 1.0):
            raise DeviceError(f"{what} reads back {got:g} {unit}, not {sent:g} {unit}", code="setting", instrument=self.name)


SPEC = DriverSpec(
    kind="new_era",
    driver=NewEraPump,
    serial=SerialSettings(baudrate=19200, bytesize=8, parity="N", stopbits=1, timeout_s=1.0),
    firmware="simulators.firmware.new_era:make_firmware",
    summary="New Era syringe pump (NE-1000 family), one or many on an RS-232 network: dispense, withdraw, stop",
)
