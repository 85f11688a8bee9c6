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
- Waiting polls ``?`` every ``Options.poll_s`` on the driver's clock until Idle *at the target* (within
  ``Options.position_tolerance_mm``); a stage that does not move for ``Options.move_margin_s`` (held,
  stalled) is an :class:`InstrumentTimeout` with ``effect_unknown``.
- ``move_to_station``: Z to the travel height ``Options.safe_z_mm`` (staying put if already higher; "up"
  is +Z unless ``z_up_positive`` is false), then XY, then Z to the station; all three targets are checked
  against the envelope before the first byte is sent (stations and ``safe_z_mm`` also at construction).
- ``halt``: feed hold ``!`` (controlled deceleration), wait for ``Hold:0`` (stopped), then soft reset to
  discard the queued rest, so a later ``~`` cannot resume it; GRBL keeps its position across a reset from a
  completed hold. ``safe_state`` is ``halt``, logging instead of raising.
- ``connect`` waits up to ``Options.ready_timeout_s`` for the banner (goes on without it for boards that do
  not reset on open) and homes if the controller is in Alarm and ``Options.home_on_connect``. The driver
  never sends ``$X`` (unlock without homing): the envelope means nothing until the machine knows where it is.
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
        """Stations, travel height, default feed and timing."""

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
        if not self.transport.is_open:  # an open port was not just opened: no reset, no banner to wait for
            self.transport.open()
            self.version = self._read_banner(b"", self.options.ready_timeout_s)
            if self.version is None:
                log.info("%s: no GRBL banner within %s s; asking for status", self.name, self.options.ready_timeout_s)
        status = self._status()
        if status.base == "Alarm":
            if not self.options.home_on_connect:
                log.warning("%s: the controller is in Alarm; home() it before moving", self.name)
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
        """The machine position (mm) from a status report."""
        return self._mpos(self._status())

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
            status = self._status()
            if status.base == "Idle":
                break
            if status.base == "Alarm":
                raise DeviceError("homing did not complete: the stage is in Alarm", code="Alarm", instrument=self.name)
            self._sleep_until(deadline, "homing", status, lost)
        if lost is not None and before.base == "Idle" and self._at(self._mpos(status), self._mpos(before)):
            raise InstrumentTimeout(
                f"the reply to $H was lost and the stage is idle where it was; homing may not have run: "
                f"call home() again ({lost})",
                instrument=self.name,
            )
        return self._mpos(status)

    def move_to(self, x_mm: float, y_mm: float, z_mm: float, feed_mm_min: float | None = None) -> Axes:
        """Moves in a straight line (G1) to machine position (x, y, z) mm and waits until it is there.

        Returns:
            the position reached, verified within ``Options.position_tolerance_mm``.

        Raises:
            LimitError: a target or feed outside the limits (nothing sent).
            DeviceError: the controller refused the move (``error:N``), is in Alarm/Hold, or stopped short.
            InstrumentTimeout: the stage stopped moving short of the target (``effect_unknown``).
        """
        self._check_move_to(x_mm, y_mm, z_mm, feed_mm_min)
        return self._move((float(x_mm), float(y_mm), float(z_mm)), float(feed_mm_min or self.options.feed_mm_min))

    def move_to_station(self, station: str, feed_mm_min: float | None = None) -> Axes:
        """Moves to a named station: Z to the travel height, then XY, then Z down (see module docstring)."""
        self._check_move_to_station(station, feed_mm_min)
        feed = float(feed_mm_min or self.options.feed_mm_min)
        sx, sy, sz = self.options.stations[station]
        x, y, z = self.position()
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
            status = self._status()
            if status.state == "Hold:0" or status.base in ("Idle", "Alarm", "Door", "Sleep", "Check"):
                break
            self._sleep_until(deadline, "halting", status, None)
        if status.base == "Hold":
            if self._read_banner(SOFT_RESET, self.options.ready_timeout_s) is None:
                log.warning("%s: no banner after the soft reset", self.name)
            status = self._status()
        return self._mpos(status)

    # --- helpers ---------------------------------------------------------------------------------
    def _status(self) -> Status:
        return self.transport.query(STATUS_QUERY, end=EOL, parse=self._named(parse_status), idempotent=True)

    def _named(self, parse: Callable[[bytes], T]) -> Callable[[bytes], T]:
        """The parser, its errors naming this instrument (the pure parsers cannot know the name)."""

        def wrapped(frame: bytes) -> T:
            try:
                return parse(frame)
            except DeviceError as exc:
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
            log.warning("%s: reply to %r lost (%s); asking the controller instead of resending", self.name, line, exc)
            return exc
        return None

    def _sleep_until(self, deadline: float, what: str, status: Status, lost: InstrumentError | None) -> None:
        if self.clock.now_s() > deadline:
            extra = f"; the command's reply was lost ({lost})" if lost else ""
            raise InstrumentTimeout(
                f"{what} not finished in time; the stage is {status.state} at {status.mpos}{extra}",
                instrument=self.name,
                effect_unknown=True,
            )
        self.clock.sleep(self.options.poll_s)

    def _move(self, target: Axes, feed: float) -> Axes:
        start_status = self._status()
        if start_status.base != "Idle":
            raise DeviceError(
                f"cannot move while the stage is {start_status.state}"
                + ("; home() it first" if start_status.base == "Alarm" else ""),
                code=start_status.state,
                instrument=self.name,
            )
        start = self._mpos(start_status)
        lost = self._command(format_move(*target, feed))
        # A watchdog on progress, not on distance / feed: GRBL silently caps the feed at the axis' max rate
        # ($110..) and accelerates, so a slow but moving stage is fine; one that stops moving is not.
        moved_at, last = self.clock.now_s(), start
        idle_away = 0
        while True:
            try:
                status = self._status()
            except DeviceError as exc:  # an ALARM:N line while moving
                exc.effect_unknown = True
                raise
            pos = self._mpos(status)
            if status.base == "Alarm":
                raise DeviceError(
                    f"Alarm during the move to {target}; stage at {pos}", code="Alarm", instrument=self.name, effect_unknown=True
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
            what = f"move to {target} (no progress for {self.options.move_margin_s:g} s)"
            self._sleep_until(moved_at + self.options.move_margin_s, what, status, lost)

    def _read_banner(self, payload: bytes, timeout_s: float) -> str | None:
        """Writes ``payload`` (b"": just listen; or the soft reset), reads through the banner; its version or None.

        A query rather than ``Transport.read_frame``: its flush right after opening drops only bytes from
        before the reset, and a ``read_frame`` that times out reopens the port (see the report on the
        transport), which would reset an Arduino-based controller once more.
        """
        if timeout_s <= 0:
            return None
        try:
            return self.transport.query(payload, end=BANNER_END, parse=parse_banner, timeout_s=timeout_s, idempotent=False)
        except InstrumentTimeout:
            return None


SPEC = DriverSpec(
    kind="grbl",
    driver=GcodeStage,
    serial=SerialSettings(baudrate=115200, bytesize=8, parity="N", stopbits=1, timeout_s=1.0),
    firmware="simulators.firmware.gcode:make_firmware",
    summary="GRBL 1.1 G-code XYZ stage: home, absolute moves in machine coordinates, named stations",
)
