"""GRBL 1.1 G-code motion stage (XYZ), as open-hardware self-driving labs use to carry samples between stations.

Protocol (facts from the GRBL 1.1 wiki pages "Grbl v1.1 Interface", "Commands", "Error codes"/"Alarm codes"):

- 115200 baud, 8N1. Lines we send end with LF only (GRBL ends a line at CR *or* LF: CRLF would be two
  lines and two ``ok``). Replies end with CRLF. Every line is answered ``ok`` or ``error:N``; ``ok`` to a
  motion block means "queued in the planner", not "arrived": arrival shows in the status report.
- Real-time bytes, never newline-terminated, acted on at once: ``?`` status report
  ``<Idle|MPos:10.000,20.000,5.000|FS:0,0>`` (states Idle, Run, Hold:N, Jog, Alarm, Door:N, Check, Home,
  Sleep; other fields tolerated), ``!`` feed hold, ``~`` cycle start, 0x18 soft reset (prints the banner
  ``\r\nGrbl 1.1h ['$' for help]\r\n`` again). Unsolicited ``ALARM:N`` and ``[MSG:...]`` lines;
  ``ALARM:N`` or ``error:N`` read as a reply is a :class:`DeviceError`.
- ``$H`` homing (``ok`` when done; from Alarm the driver soft-resets first, since after a hard or soft
  limit GRBL ignores everything but a reset; a reset without motion keeps the alarm). After power-up with
  homing enabled ($22=1) the controller is in Alarm and answers G-code with ``error:9`` until homed. An
  Arduino-based GRBL resets when the port opens.

Choices where the manual leaves it to the sender:

- A move is one block ``G90 G21 G53 G1 X.. Y.. Z.. F..``: absolute, mm, *machine* coordinates (G53 ignores
  any G54-G59/G92 work offset someone left in the controller), feed move (never G0, so
  ``Limits.max_feed_mm_min`` bounds the speed). Envelope, stations and results are machine coordinates,
  as ``MPos`` (GRBL's default $10=1; a controller reporting ``WPos`` is refused), in mm ($13=0).
- Moves are sent with ``idempotent=False``. Repeating an absolute G90 move to the same target would be
  harmless, but after a lost ``ok`` the driver asks ``?`` rather than resending: the block may sit in
  GRBL's buffers behind other motion, an ``error:N`` we never saw may have refused it, and a resent copy
  would queue a second block whose fate we would again not know. The status decides: Run → wait; Idle at
  the target → done; Idle where it started three polls in a row → not executed (``effect_unknown=False``);
  Alarm → :class:`DeviceError` (``effect_unknown=True``).
- Status reports carry no sequence number, so the driver keeps them fresh itself. ``?`` is idempotent: a
  garbled, cut-short or missing report is asked again, up to ``Options.status_tries`` times. After any
  reply timed out (a status, a move's ``ok``, a banner) the driver listens until the line has been quiet
  for ``Options.late_reply_s`` before it sends again, dropping what arrives: a reply that was only late
  must not be read as the answer to the next ``?`` (a stale ``<Run|...>`` would refuse the next move, a
  stale position would plan a station path from the wrong place). A reply later than the port's timeout
  plus ``late_reply_s`` cannot be told from a fresh one; raise it on a line that delays replies more.
- Waiting polls ``?`` every ``Options.poll_s`` on the driver's clock until Idle *at the target* (within
  ``Options.position_tolerance_mm``); a poll that gets no usable report is skipped, not fatal; a stage that
  does not move for ``Options.move_margin_s`` (held, stalled, or no usable report) is an
  :class:`InstrumentTimeout` with ``effect_unknown``. A move (each segment of a station path) starts only
  from Idle: Run/Jog/Home is waited out (earlier motion finishing) for at most ``move_margin_s``;
  Hold, Door, Sleep, Check and Alarm refuse it before anything is sent.
- ``move_to_station``: Z to the travel height ``Options.safe_z_mm`` (staying put if already higher; "up"
  is +Z unless ``z_up_positive`` is false), then XY, then Z to the station; all three targets are checked
  against the envelope before the first byte is sent (stations and ``safe_z_mm`` also at construction).
- ``halt``: feed hold ``!`` (controlled deceleration), wait for ``Hold:0`` (stopped), then soft reset to
  discard the queued rest, so a later ``~`` cannot resume it; GRBL keeps its position across a reset from a
  completed hold. ``safe_state`` is ``halt``, logging instead of raising.
- ``connect`` waits up to ``Options.ready_timeout_s`` for the banner (goes on without it for boards that do
  not reset on open) and homes if the controller is in Alarm and ``Options.home_on_connect``. The driver
  never sends ``$X`` (unlock without homing): the envelope means nothing until the machine knows where it is.

Resets and alarms (when the machine position is lost, and who may re-home):

- The driver sets the transport's ``on_reopen`` hook: after a port failure the port is reopened by its
  stable name, which resets an Arduino-based GRBL (motion stops, the position is forgotten, Alarm). The
  hook reads the new banner; a banner then means the position is lost. Without one, or for a banner that
  arrives unasked, the next status decides: Alarm → reset, anything else → the controller kept its state
  (GRBL keeps its position across a soft reset from Idle or a finished hold).
- A move under way when that happens fails with ``effect_unknown=True`` naming the reset; it is never
  resent (where the stage stopped is unknown). Before the *next* ``move_to``/``move_to_station`` the driver
  homes first if ``Options.rehome_after_reset`` (default true): nothing tripped, only the position was
  forgotten, and homing from an unknown position is what every power-up needs (``connect`` does the same).
  A station path is never resumed mid-way after a re-home: its lift-then-travel order assumed the start.
- ``ALARM:1`` (hard limit) and ``ALARM:2`` (soft limit), or an Alarm whose ``ALARM:N`` line was never seen,
  mean the machine was driven where it must not go: a lost step, a wrong envelope, a crash or something in
  the way. By default the driver then refuses every move until someone has looked and run ``home``;
  ``Options.rehome_after_alarm: true`` lets it re-home unattended (simulated benches, a stage with nothing
  to hit). ``ALARM:3`` (reset during motion) counts as a reset. A failed homing (``ALARM:6``-``9``), or
  the power-up Alarm with ``home_on_connect`` off, is never re-homed automatically.
- :meth:`position` refuses to report a position the controller has lost.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import Field, model_validator

from instruments.base import Driver, DriverSpec, Settings
from instruments.errors import ConnectionLost, DeviceError, InstrumentError, InstrumentTimeout, LimitError, ProtocolError
from instruments.transport import SerialSettings

log = logging.getLogger(__name__)

EOL = b"\r\n"
BANNER_END = b"]\r\n"  # the banner "\r\nGrbl 1.1h ['$' for help]\r\n" is read as one frame up to here
STATUS_QUERY, FEED_HOLD, CYCLE_START, SOFT_RESET = b"?", b"!", b"~", b"\x18"
Axes = tuple[float, float, float]
T = TypeVar("T")

ERRORS = {
    1: "a G-code word has no command letter", 2: "a number is missing or malformed", 3: "unknown '$' command",
    4: "a negative value where a positive one is expected", 5: "homing is not enabled ($22)",
    8: "'$' command needs the machine Idle", 9: "G-code locked out in Alarm or Jog state; home the machine",
    11: "line too long", 15: "target exceeds the machine's travel (soft limits)",
    16: "invalid jog command", 20: "unsupported G-code command", 21: "two commands of one modal group in a block",
    22: "feed rate not set", 24: "two commands in a block both use axis words", 25: "a word repeated in a block",
    26: "axis words missing", 30: "G53 needs G0 or G1 motion",
}
ALARMS = {
    1: "hard limit triggered; position lost, home the machine", 2: "motion target exceeds the machine travel",
    3: "reset while in motion; position may be lost, home the machine", 4: "probe fail", 5: "probe fail",
    6: "homing fail: reset during homing", 7: "homing fail: safety door opened",
    8: "homing fail: could not clear the limit switch", 9: "homing fail: limit switch not found",
}
_STATES = {"Idle", "Run", "Hold", "Jog", "Alarm", "Door", "Check", "Home", "Sleep"}
_NUM = r"[-+]?\d+(?:\.\d+)?"
_STATUS = re.compile(r"<([A-Za-z]+)(?::(\d))?((?:\|[^|<>\r\n]*)*)>")
_AXES = re.compile(rf"({_NUM}),({_NUM}),({_NUM})(?:,{_NUM})*")
_NUMS = re.compile(rf"{_NUM}(?:,{_NUM})*")
_NUMERIC = {"MPos", "WPos", "WCO", "Bf", "Ln", "FS", "F", "Ov"}  # fields whose values are numbers
_REPLY = re.compile(r"(ok)|error:(\d{1,3})|ALARM:(\d{1,3})")
_BANNER = re.compile(r"Grbl\w* (\S+) \[.*\]")


# --- pure protocol functions -----------------------------------------------------------------------


@dataclass(frozen=True)
class Status:
    """One status report. ``state`` is the full state (``Hold:0``); ``mpos``/``wpos`` as reported."""

    state: str
    mpos: Axes | None = None
    wpos: Axes | None = None
    feed_mm_min: float | None = None

    @property
    def base(self) -> str:
        """The state without its sub-state (``Hold`` for ``Hold:1``)."""
        return self.state.split(":")[0]


def _decode(frame: bytes) -> str:
    try:
        return frame.decode("ascii").removesuffix("\r\n")
    except UnicodeDecodeError:
        raise ProtocolError(f"non-ASCII reply {frame!r}") from None


def _alarm(code: int) -> DeviceError:
    return DeviceError(f"ALARM:{code} ({ALARMS.get(code, 'unknown alarm')})", code=f"ALARM:{code}")


def as_sent(value: float, decimals: int) -> float:
    """``value`` as a move block carries it: coordinates with 3 decimals, the feed with 1."""
    return float(f"{value:.{decimals}f}")


def format_move(x_mm: float, y_mm: float, z_mm: float, feed_mm_min: float) -> bytes:
    """The block for an absolute feed move in machine coordinates, LF-terminated."""
    values = (x_mm, y_mm, z_mm, feed_mm_min)
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values) or feed_mm_min <= 0:
        raise LimitError(f"move needs finite coordinates and a positive feed, got {values}")
    return f"G90 G21 G53 G1 X{x_mm:.3f} Y{y_mm:.3f} Z{z_mm:.3f} F{feed_mm_min:.1f}\n".encode()


def format_home() -> bytes:
    """The homing cycle command."""
    return b"$H\n"


def parse_ok(frame: bytes) -> None:
    """Checks a line command's reply: ``ok``; ``error:N`` or ``ALARM:N`` → :class:`DeviceError`."""
    text = _decode(frame)
    m = _REPLY.fullmatch(text)
    if m is None:
        raise ProtocolError(f"expected 'ok' or 'error:N', got {frame!r}")
    if m.group(2) is not None:
        code = int(m.group(2))
        raise DeviceError(f"error:{code} ({ERRORS.get(code, 'unknown error')})", code=f"error:{code}")
    if m.group(3) is not None:
        raise _alarm(int(m.group(3)))


def parse_status(frame: bytes) -> Status:
    """Parses ``<State|MPos:x,y,z|FS:f,s|...>``; an ``ALARM:N`` line in its place is a :class:`DeviceError`."""
    text = _decode(frame)
    alarm = re.fullmatch(r"ALARM:(\d{1,3})", text)
    if alarm:
        raise _alarm(int(alarm.group(1)))
    m = _STATUS.fullmatch(text)
    if m is None or m.group(1) not in _STATES:
        raise ProtocolError(f"not a status report: {frame!r}")
    state = m.group(1) + (f":{m.group(2)}" if m.group(2) else "")
    fields: dict[str, str] = {}
    for part in m.group(3).split("|")[1:]:
        key, colon, value = part.partition(":")
        if not (key.isascii() and key.isalpha() and colon) or (key in _NUMERIC and not _NUMS.fullmatch(value)):
            raise ProtocolError(f"bad field {part!r} in status report {frame!r}")
        fields[key] = value
    pos: dict[str, Axes] = {}
    for key in ("MPos", "WPos"):
        if key in fields:
            axes = _AXES.fullmatch(fields[key])
            if axes is None:
                raise ProtocolError(f"bad {key} in status report {frame!r}")
            pos[key] = (float(axes.group(1)), float(axes.group(2)), float(axes.group(3)))
            if not all(math.isfinite(v) for v in pos[key]):  # a runaway digit string overflows to inf
                raise ProtocolError(f"{key} out of range in status report {frame[:80]!r}")
    if not pos:
        raise ProtocolError(f"status report without a position: {frame!r}")
    feed = None
    rate = fields.get("FS", fields.get("F"))
    if rate is not None:
        fm = re.fullmatch(rf"({_NUM})(?:,{_NUM})?", rate)
        if fm is None:
            raise ProtocolError(f"bad feed field in status report {frame!r}")
        feed = float(fm.group(1))
        if not math.isfinite(feed):
            raise ProtocolError(f"feed out of range in status report {frame[:80]!r}")
    return Status(state, pos.get("MPos"), pos.get("WPos"), feed)


def parse_banner(frame: bytes) -> str | None:
    """The firmware version if ``frame`` holds GRBL's start-up banner (other lines may precede it), else None."""
    for line in frame.decode("ascii", "replace").split("\r\n"):
        if line.startswith("ALARM:"):
            log.warning("before the banner: %s", line)
        m = _BANNER.fullmatch(line.strip())
        if m:
            return m.group(1)
    return None


# --- the driver ------------------------------------------------------------------------------------


class GcodeStage(Driver):
    """An XYZ stage on a GRBL 1.1 controller. See the module docstring for the protocol and choices."""

    ACTIONS = frozenset({"home", "move_to", "move_to_station", "position", "halt"})
    # Moves are absolute: sent again they end where they would have.
    REPEATABLE = frozenset({"home", "move_to", "move_to_station", "position", "halt"})

    class Limits(Settings):
        """Travel envelope (machine coordinates, mm; required) and the fastest feed the driver may ask."""

        x_mm: tuple[float, float]
        y_mm: tuple[float, float]
        z_mm: tuple[float, float]
        max_feed_mm_min: float = Field(1000.0, gt=0)

        @model_validator(mode="after")
        def _ordered(self) -> "GcodeStage.Limits":
            for axis, (low, high) in (("x_mm", self.x_mm), ("y_mm", self.y_mm), ("z_mm", self.z_mm)):
                if not (math.isfinite(low) and math.isfinite(high) and low < high):
                    raise ValueError(f"{axis} must be (min, max) with min < max, got {(low, high)}")
            return self

    class Options(Settings):
        """Stations, travel height, default feed, timing, and what the driver may do after a reset or alarm
        (see the module docstring)."""

        stations: dict[str, tuple[float, float, float]] = Field(default_factory=dict)
        safe_z_mm: float | None = None
        z_up_positive: bool = True
        feed_mm_min: float = Field(500.0, gt=0)
        poll_s: float = Field(0.25, gt=0)
        position_tolerance_mm: float = Field(0.01, gt=0)
        move_margin_s: float = Field(10.0, gt=0)
        homing_timeout_s: float = Field(60.0, gt=0)
        halt_timeout_s: float = Field(10.0, gt=0)
        ready_timeout_s: float = Field(3.0, ge=0)
        home_on_connect: bool = True
        rehome_after_reset: bool = True
        rehome_after_alarm: bool = False
        status_tries: int = Field(5, ge=1, le=20)
        late_reply_s: float = Field(0.75, ge=0)

        @model_validator(mode="after")
        def _travel_height(self) -> "GcodeStage.Options":
            if self.stations and self.safe_z_mm is None:
                raise ValueError("stations need safe_z_mm, the height at which the stage travels between them")
            return self

    def __init__(self, transport: Any, *, name: str, limits: Any = None, options: Any = None, clock: Any = None):
        super().__init__(transport, name=name, limits=limits, options=options, clock=clock)
        lim, opt = self.limits, self.options
        self.limit(opt.feed_mm_min, lim.max_feed_mm_min, "options.feed_mm_min", "mm/min")
        self.limit(as_sent(opt.feed_mm_min, 1), lim.max_feed_mm_min, "options.feed_mm_min as sent (1 decimal)", "mm/min")
        if as_sent(opt.feed_mm_min, 1) <= 0:
            raise LimitError(f"options.feed_mm_min {opt.feed_mm_min:g} is sent as F0.0", instrument=self.name)
        if opt.safe_z_mm is not None:
            self.limit(opt.safe_z_mm, lim.z_mm[1], "options.safe_z_mm", "mm", lim.z_mm[0])
        for station, point in opt.stations.items():
            self._check_target(point, f"station '{station}'")
        self.version: str | None = None
        # Why the machine position cannot be trusted until the next homing: (kind, what happened), kind one of
        # _LOST_RANK's keys; None while it can.
        self._unhomed: tuple[str, str] | None = None
        # A reply timed out and may still arrive; the line is listened to until quiet before the next status.
        self._unsettled = False

    # --- checks (pure) ---------------------------------------------------------------------------
    def _check_target(self, point: Axes, what: str) -> None:
        for axis, value, (low, high) in zip("xyz", point, (self.limits.x_mm, self.limits.y_mm, self.limits.z_mm)):
            v = self.number(value, f"{what} {axis}")
            self.limit(v, high, f"{what} {axis}", "mm", low)
            self.limit(as_sent(v, 3), high, f"{what} {axis} as sent (3 decimals)", "mm", low)

    def _check_feed(self, feed_mm_min: float | None) -> None:
        if feed_mm_min is not None:
            feed = self.number(feed_mm_min, "feed")
            self.limit(feed, self.limits.max_feed_mm_min, "feed", "mm/min")
            self.limit(as_sent(feed, 1), self.limits.max_feed_mm_min, "feed as sent (1 decimal)", "mm/min")
            if as_sent(feed, 1) <= 0:
                raise LimitError(f"feed must be positive (at least 0.1 mm/min as sent), got {feed_mm_min}", instrument=self.name)

    def _check_move_to(self, x_mm: float, y_mm: float, z_mm: float, feed_mm_min: float | None = None) -> None:
        self._check_target((x_mm, y_mm, z_mm), "target")
        self._check_feed(feed_mm_min)

    def _check_move_to_station(self, station: str, feed_mm_min: float | None = None) -> None:
        if not isinstance(station, str) or station not in self.options.stations:
            known = ", ".join(sorted(self.options.stations)) or "none configured"
            raise LimitError(f"no station {station!r}; stations: {known}", instrument=self.name)
        self._check_feed(feed_mm_min)

    # --- lifecycle -------------------------------------------------------------------------------
    def connect(self) -> None:
        """Opens the port, waits for the banner (the board resets on open), homes if in Alarm and allowed."""
        # Every later reopen (a port failure) resets an Arduino-based controller: read its banner then.
        self.transport.on_reopen = self._after_reopen
        self._unhomed = None
        if not self.transport.is_open:  # an open port was not just opened: no reset, no banner to wait for
            self.transport.open()
            self.version = self._read_banner(b"", self.options.ready_timeout_s)
            if self.version is None:
                log.info("%s: no GRBL banner within %s s; asking for status", self.name, self.options.ready_timeout_s)
        status = self._status()
        if status.base == "Alarm":
            if not self.options.home_on_connect:
                self._lose("connect", "the controller is in Alarm, as after power-up, and options.home_on_connect is off")
                log.warning("%s: the controller is in Alarm; home it before moving", self.name)
            else:
                self.home()

    def safe_state(self) -> None:
        """Halts motion (feed hold, then discards queued motion); logs instead of raising."""
        try:
            self.halt()
        except InstrumentError as exc:
            log.error("%s: could not halt the stage: %s", self.name, exc)

    # --- actions ---------------------------------------------------------------------------------
    def position(self) -> Axes:
        """The machine position (mm) from a status report.

        Raises:
            DeviceError: the controller has lost its position (reset, alarm) and has not been homed since.
        """
        status = self._status()
        lost = self._why_unhomed(status)
        if lost is not None or status.base == "Alarm":
            why = lost[1] if lost else "the controller is in Alarm"
            raise DeviceError(
                f"no position to report: {why}; the {status.mpos} it reports is not where the stage is. Home it first",
                code="position_lost",
                instrument=self.name,
            )
        return self._mpos(status)

    def home(self) -> Axes:
        """Runs the homing cycle ``$H`` and waits for Idle; returns the machine position after homing.

        Raises:
            DeviceError: homing is disabled, the machine is busy, or homing failed (``ALARM:6..9``).
            InstrumentTimeout: no Idle within ``Options.homing_timeout_s``.
        """
        before = self._status()
        if before.base not in ("Idle", "Alarm"):
            raise DeviceError(f"cannot home while the stage is {before.state}", code=before.state, instrument=self.name)
        if before.base == "Alarm":  # after a hard/soft-limit alarm GRBL ignores all but a reset; harmless otherwise
            self._read_banner(SOFT_RESET, self.options.ready_timeout_s)
        lost = self._command(format_home(), timeout_s=self.options.homing_timeout_s)
        deadline = self.clock.now_s() + self.options.homing_timeout_s
        while True:
            status = self._poll()
            if status is not None and status.base == "Idle":
                break
            if status is not None and status.base == "Alarm":
                raise DeviceError("homing did not complete: the stage is in Alarm", code="Alarm", instrument=self.name)
            self._sleep_until(deadline, "homing", status, lost)
        if lost is not None and before.base == "Idle" and self._at(self._mpos(status), self._mpos(before)):
            raise InstrumentTimeout(
                f"the reply to $H was lost and the stage is idle where it was; homing may not have run: "
                f"call home() again ({lost})",
                instrument=self.name,
            )
        self._unhomed = None  # homed: the machine knows where it is again
        return self._mpos(status)

    def move_to(self, x_mm: float, y_mm: float, z_mm: float, feed_mm_min: float | None = None) -> Axes:
        """Moves in a straight line (G1) to machine position (x, y, z) mm and waits until it is there.

        Returns:
            the position reached, verified within ``Options.position_tolerance_mm``.

        Raises:
            LimitError: a target or feed outside the limits (nothing sent).
            DeviceError: the controller refused the move (``error:N``), is in Alarm/Hold (and may not be
                re-homed, see the module docstring), or stopped short.
            InstrumentTimeout: the stage stopped moving short of the target (``effect_unknown``).
        """
        self._check_move_to(x_mm, y_mm, z_mm, feed_mm_min)
        target = (float(x_mm), float(y_mm), float(z_mm))
        self._ready(f"move to {target}")
        return self._move(target, float(feed_mm_min or self.options.feed_mm_min))

    def move_to_station(self, station: str, feed_mm_min: float | None = None) -> Axes:
        """Moves to a named station: Z to the travel height, then XY, then Z down (see module docstring)."""
        self._check_move_to_station(station, feed_mm_min)
        feed = float(feed_mm_min or self.options.feed_mm_min)
        sx, sy, sz = self.options.stations[station]
        x, y, z = self._mpos(self._ready(f"move to station '{station}'"))
        if self._at((x, y), (sx, sy)):
            path = [(x, y, sz)]
        else:
            safe = float(self.options.safe_z_mm)  # type: ignore[arg-type] - required with stations
            travel = max(z, safe) if self.options.z_up_positive else min(z, safe)
            path = [(x, y, travel), (sx, sy, travel), (sx, sy, sz)]
        for point in path:
            self._check_target(point, f"path to station '{station}'")
        for point in path:
            reached = self._move(point, feed)
        return reached

    def halt(self) -> Axes:
        """Feed hold ``!``, wait until stopped, then soft reset to discard the rest; returns the position."""
        self.transport.send(FEED_HOLD, idempotent=True)
        deadline = self.clock.now_s() + self.options.halt_timeout_s
        while True:
            status = self._poll()
            if status is not None and (status.state == "Hold:0" or status.base in ("Idle", "Alarm", "Door", "Sleep", "Check")):
                break
            self._sleep_until(deadline, "halting", status, None)
        if status.base == "Hold":
            if self._read_banner(SOFT_RESET, self.options.ready_timeout_s) is None:
                log.warning("%s: no banner after the soft reset", self.name)
            status = self._status()
        return self._mpos(status)

    # --- status reports --------------------------------------------------------------------------
    def _status(self) -> Status:
        """A fresh status report, asked up to ``Options.status_tries`` times (``?`` changes nothing).

        The driver retries here rather than in the transport so that it can first let a timed-out reply
        arrive and drop it (see :meth:`_settle`); the transport only drains for a moment.

        Raises:
            InstrumentTimeout, ProtocolError: no usable report in as many tries.
            DeviceError: an ``ALARM:N`` line came instead (the controller's own news: not asked again).
            ConnectionLost: the port failed and could not be reopened.
        """
        last: InstrumentError | None = None
        tries = self.options.status_tries
        for attempt in range(tries):
            if self._unsettled:
                self._settle()
            try:
                return self.transport.query(STATUS_QUERY, end=EOL, parse=self._parse_status, idempotent=True, retries=0)
            except InstrumentTimeout as exc:
                self._unsettled = True  # it may only be late: let it come before asking again
                last = exc
            except ProtocolError as exc:
                self._settle(0.02)  # the rest of a garbled line, or the fresh reply behind a stale one
                last = exc
            except ConnectionLost as exc:
                if not self.transport.is_open:
                    raise  # did not come back: asking again cannot help
                last = exc  # reopened (the hook has read the banner): ask again
            if attempt < tries - 1:
                log.info("%s: status report unusable (%s); asking again", self.name, last)
        assert last is not None
        detail = str(last).removeprefix(f"{self.name}: ")
        raise type(last)(
            f"no usable status report in {tries} tries (last: {detail}); check the cable, power and line settings",
            instrument=self.name,
        )

    def _poll(self) -> Status | None:
        """A status report while waiting, or None when none could be had (the wait's own deadline decides)."""
        try:
            return self._status()
        except (InstrumentTimeout, ProtocolError) as exc:
            log.warning("%s: %s; polling on", self.name, exc)
            return None

    def _parse_status(self, frame: bytes) -> Status:
        if _BANNER.search(frame.decode("ascii", "replace")):  # a restart nobody asked for: brown-out, watchdog
            self._lose("maybe_reset", "the controller restarted unasked (its banner arrived)")
        return self._named(parse_status)(frame)

    def _settle(self, quiet_s: float | None = None) -> None:
        """Reads and drops what the controller still sends until the line has been quiet for ``quiet_s``
        (default ``Options.late_reply_s``): a late reply must not be taken for the next command's."""
        quiet = self.options.late_reply_s if quiet_s is None else quiet_s
        self._unsettled = False
        if quiet <= 0:
            return
        for _ in range(50):  # GRBL sends nothing unasked for long; bounds a line that babbles
            try:
                frame = self.transport.read_frame(end=EOL, timeout_s=quiet)
            except InstrumentTimeout:
                return  # quiet (a fragment read meanwhile is dropped with the timeout)
            except ConnectionLost:
                return  # reopened: nothing from before can arrive on the new port (the hook ran)
            log.info("%s: dropped a late or stray reply %r", self.name, frame)
            self._note_lines(frame)

    def _note_lines(self, frame: bytes) -> None:
        """Notes the alarms and restarts a dropped frame reports."""
        text = frame.decode("ascii", "replace")
        for code in re.findall(r"ALARM:(\d{1,3})", text):
            self._alarm_seen(int(code))
        if _BANNER.search(text):  # a soft reset from Idle or a finished hold keeps the position: the state decides
            self._lose("maybe_reset", "the controller restarted unasked (its banner arrived)")

    # --- resets and alarms -----------------------------------------------------------------------
    def _lose(self, kind: str, why: str) -> None:
        """Records why the position cannot be trusted, keeping the graver cause (a hard limit stays one
        when the controller is also reset)."""
        if self._unhomed is None or _LOST_RANK[kind] >= _LOST_RANK[self._unhomed[0]]:
            self._unhomed = (kind, why)

    def _alarm_seen(self, code: int) -> None:
        kind = "reset" if code == 3 else "homing" if 6 <= code <= 9 else "alarm"
        self._lose(kind, f"ALARM:{code} ({ALARMS.get(code, 'unknown alarm')})")

    def _after_reopen(self) -> None:
        """The transport's reopen hook: reads the banner of a controller that reset when its port opened."""
        self._unsettled = False  # a fresh port holds nothing from before
        if self._read_banner(b"", self.options.ready_timeout_s) is not None:
            self._lose("reset", "the controller restarted when its port was reopened (an Arduino resets on open), so its position is lost")
        else:  # no banner: the next status tells (Alarm → it did reset)
            self._lose("maybe_reset", "the port was reopened")

    def _why_unhomed(self, status: Status) -> tuple[str, str] | None:
        """Why the position is lost, given a current status (a reopen without a banner is decided here)."""
        if self._unhomed is not None and self._unhomed[0] == "maybe_reset":
            if status.base == "Alarm":
                self._unhomed = ("reset", f"{self._unhomed[1]} and the controller is in Alarm, as after a power-up, so its position is lost")
            else:
                self._unhomed = None  # not a power-up: GRBL keeps its position across a reset from Idle
        if self._unhomed is None and status.base == "Alarm":
            return ("alarm", "the controller is in Alarm and the driver saw no ALARM line (it may have been lost on the line)")
        return self._unhomed

    def _may_rehome(self, kind: str) -> bool:
        return (kind == "reset" and self.options.rehome_after_reset) or (kind == "alarm" and self.options.rehome_after_alarm)

    def _advice(self, kind: str) -> str:
        kind = "reset" if kind == "maybe_reset" else kind
        if self._may_rehome(kind):
            return "the driver homes it before its next move (options.rehome_after_" + ("reset)" if kind == "reset" else "alarm)")
        return {
            "reset": "home it (the home action), or set options.rehome_after_reset: true to let the driver re-home after a reset",
            "alarm": "check the stage for a crash or something in its way, then home it (the home action); "
            "options.rehome_after_alarm: true lets the driver re-home unattended",
            "homing": "homing failed: check the limit switches and that nothing blocks the axes, then home it (the home action)",
            "connect": "home it (the home action); options.home_on_connect is off",
        }[kind]

    def _ready(self, what: str) -> Status:
        """Idle with a trusted position before an action's first move: re-homes first when the position was
        lost and the options allow it (module docstring), else refuses with what happened and what to do."""
        status = self._status()
        lost = self._why_unhomed(status)
        if lost is None:
            return self._idle(what, status)
        kind, why = lost
        if not self._may_rehome(kind):
            raise DeviceError(
                f"cannot {what}: {why}; the machine position is lost. {self._advice(kind)}",
                code="Alarm" if status.base == "Alarm" else "position_lost",
                instrument=self.name,
            )
        log.warning("%s: %s; homing before the %s (options.rehome_after_%s)", self.name, why, what, kind)
        self.home()
        return self._idle(what, self._status())

    def _idle(self, what: str, status: Status) -> Status:
        """``status`` if Idle; waits out motion already under way (Run, Jog, Home) for at most
        ``Options.move_margin_s``; refuses any other state. Nothing has been sent for ``what`` yet."""
        deadline = self.clock.now_s() + self.options.move_margin_s
        while status.base in ("Run", "Jog", "Home"):
            if self.clock.now_s() > deadline:
                raise DeviceError(
                    f"cannot {what}: the stage is still {status.state} at {status.mpos} after "
                    f"{self.options.move_margin_s:g} s of waiting for earlier motion to end; nothing was sent",
                    code=status.state,
                    instrument=self.name,
                )
            log.info("%s: the stage is %s before the %s; waiting for it to stop", self.name, status.state, what)
            self.clock.sleep(self.options.poll_s)
            status = self._status()
        if status.base == "Idle" and self._why_unhomed(status) is None:
            return status
        lost = self._why_unhomed(status)
        if status.base == "Alarm" or lost is not None:
            kind, why = lost or ("alarm", "the controller is in Alarm")
            raise DeviceError(
                f"cannot {what}: {why}. {self._advice(kind)}", code=status.state, instrument=self.name
            )
        raise DeviceError(f"cannot {what} while the stage is {status.state}", code=status.state, instrument=self.name)

    # --- helpers ---------------------------------------------------------------------------------
    def _named(self, parse: Callable[[bytes], T]) -> Callable[[bytes], T]:
        """The parser, its errors naming this instrument (the pure parsers cannot know the name); an
        ``ALARM:N`` reply is also noted as the reason the position is lost."""

        def wrapped(frame: bytes) -> T:
            try:
                return parse(frame)
            except DeviceError as exc:
                if exc.code.startswith("ALARM:"):
                    self._alarm_seen(int(exc.code.partition(":")[2]))
                raise DeviceError(str(exc), code=exc.code, instrument=self.name) from None
            except ProtocolError as exc:
                raise ProtocolError(str(exc), instrument=self.name) from None

        return wrapped

    def _mpos(self, status: Status) -> Axes:
        if status.mpos is None:
            raise ProtocolError("the controller reports WPos; set $10=1 so it reports machine positions", instrument=self.name)
        return status.mpos

    def _at(self, a: tuple[float, ...], b: tuple[float, ...]) -> bool:
        return all(abs(p - q) <= self.options.position_tolerance_mm for p, q in zip(a, b))

    def _command(self, line: bytes, timeout_s: float | None = None) -> InstrumentError | None:
        """Sends one line; returns the error if its reply was lost (effect unknown), raises the rest."""
        try:
            self.transport.query(line, end=EOL, parse=self._named(parse_ok), timeout_s=timeout_s, idempotent=False)
        except (InstrumentTimeout, ProtocolError, ConnectionLost) as exc:
            if not exc.effect_unknown:
                raise
            if isinstance(exc, InstrumentTimeout):
                self._unsettled = True  # the ok may only be late: it must not answer the first status poll
            log.warning("%s: reply to %r lost (%s); asking the controller instead of resending", self.name, line, exc)
            return exc
        return None

    def _sleep_until(self, deadline: float, what: str, status: Status | None, lost: InstrumentError | None) -> None:
        if self.clock.now_s() > deadline:
            extra = f"; the command's reply was lost ({lost})" if lost else ""
            where = f"the stage is {status.state} at {status.mpos}" if status else "no usable status report"
            raise InstrumentTimeout(f"{what} not finished in time; {where}{extra}", instrument=self.name, effect_unknown=True)
        self.clock.sleep(self.options.poll_s)

    def _move(self, target: Axes, feed: float) -> Axes:
        """One G1 block and the wait for its arrival. Never re-homes: a station path is not resumed mid-way."""
        start_status = self._idle(f"move to {target}", self._status())
        start = self._mpos(start_status)
        lost = self._command(format_move(*target, feed))
        # A watchdog on progress, not on distance / feed: GRBL silently caps the feed at the axis' max rate
        # ($110..) and accelerates, so a slow but moving stage is fine; one that stops moving is not.
        moved_at, last = self.clock.now_s(), start
        idle_away = 0
        status: Status | None = None
        what = f"move to {target} (no progress for {self.options.move_margin_s:g} s)"
        while True:
            try:
                polled = self._poll()
            except DeviceError as exc:  # an ALARM:N line while moving
                raise DeviceError(
                    f"{str(exc).removeprefix(self.name + ': ')} during the move to {target}; where the stage stopped is "
                    f"unknown and the move is not resent. {self._advice(self._unhomed[0] if self._unhomed else 'alarm')}",
                    code=exc.code,
                    instrument=self.name,
                    effect_unknown=True,
                ) from None
            if polled is None:  # no usable report this time: the progress watchdog decides
                self._sleep_until(moved_at + self.options.move_margin_s, what, status, lost)
                continue
            status = polled
            pos = self._mpos(status)
            if status.base == "Alarm":
                kind, why = self._why_unhomed(status) or ("alarm", "the controller is in Alarm")
                raise DeviceError(
                    f"Alarm during the move to {target}: {why}; the controller reports {pos}, where the stage stopped is "
                    f"unknown and the move is not resent. {self._advice(kind)}",
                    code="Alarm",
                    instrument=self.name,
                    effect_unknown=True,
                )
            if status.base == "Idle":
                if self._at(pos, target):
                    return pos
                idle_away += 1  # GRBL may report Idle once before the cycle starts
                if idle_away >= 3:
                    unmoved = self._at(pos, start)
                    why = f"its reply was lost ({lost}) and " if lost else ""
                    raise DeviceError(
                        f"move to {target}: {why}the stage is idle at {pos}"
                        + ("; it did not move (the move was not executed)" if unmoved else ", short of the target"),
                        code="position",
                        instrument=self.name,
                        effect_unknown=not unmoved,
                    )
            else:
                idle_away = 0
            if not self._at(pos, last):
                moved_at, last = self.clock.now_s(), pos
            self._sleep_until(moved_at + self.options.move_margin_s, what, status, lost)

    def _read_banner(self, payload: bytes, timeout_s: float) -> str | None:
        """Writes ``payload`` (b"": just listen; or the soft reset), reads through the banner; its version or None.

        A query rather than ``Transport.read_frame``: its flush right after opening drops only bytes from
        before the reset. ``ALARM:N`` lines before the banner (``ALARM:3``: reset during motion) are noted.
        """
        if timeout_s <= 0:
            return None

        def parse_noting_alarms(frame: bytes) -> str | None:
            for code in re.findall(rb"ALARM:(\d{1,3})", frame):
                self._alarm_seen(int(code))
            return parse_banner(frame)

        try:
            return self.transport.query(payload, end=BANNER_END, parse=parse_noting_alarms, timeout_s=timeout_s, idempotent=False)
        except InstrumentTimeout:
            self._unsettled = True  # a banner cut short or late: its rest must not answer the next status
            return None


_LOST_RANK = {"maybe_reset": 0, "reset": 1, "alarm": 2, "connect": 3, "homing": 3}


SPEC = DriverSpec(
    kind="grbl",
    driver=GcodeStage,
    serial=SerialSettings(baudrate=115200, bytesize=8, parity="N", stopbits=1, timeout_s=1.0),
    firmware="simulators.firmware.gcode:make_firmware",
    summary="GRBL 1.1 G-code XYZ stage: home, absolute moves in machine coordinates, named stations",
)
