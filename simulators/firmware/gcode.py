"""A GRBL 1.1 controller with an XYZ stage, at the byte level, on virtual time.

What it understands (a subset of GRBL 1.1, answered as GRBL answers):

- Lines end at LF or CR (so CRLF is two lines, the second empty, answered ``ok`` as GRBL does); spaces and
  ``(comments)``/``; comments`` are dropped, letters upper-cased; more than 80 characters → ``error:11``.
- G-code: ``G0`` rapid (``rapid_mm_min``), ``G1`` feed (``F`` required once, ``error:22``), ``G20``/``G21``,
  ``G90``/``G91``, ``G53`` (machine coordinates; needs G0/G1, ``error:30``), words ``X Y Z F``. Anything else
  is ``error:20``; a word without a number ``error:2``, a character that is not a letter ``error:1``, two
  commands of one modal group ``error:21``, a repeated word ``error:25``, a negative feed ``error:4``.
  In Alarm every G-code line is ``error:9``. A target outside the travel (soft limits on) is ``error:15``
  and nothing moves. (Real GRBL 1.1 raises ``ALARM:2`` for a G-code target beyond soft limits and keeps
  ``error:15`` for jogs; this simulator answers ``error:15`` as the project's brief specifies.)
- ``$H`` homing: ``error:5`` if homing is disabled, ``error:8`` unless Idle/Alarm; otherwise ``ok`` *at once*
  (real GRBL answers when homing is done; virtual time cannot delay a reply) and the status is ``Home``
  until the virtual clock passes the homing time, then Idle at machine 0,0,0 (physical home).
  ``$X`` unlocks an Alarm (``[MSG:Caution: Unlocked]`` + ``ok``). ``$$`` lists a few settings. Other ``$`` →
  ``error:3``.
- Real-time bytes, acted on at once even inside a line: ``?`` status ``<State|MPos:x,y,z|FS:feed,0>``,
  ``!`` feed hold (Run → ``Hold:0`` at once where it is; Idle → ``Hold:0``), ``~`` cycle start (resumes),
  0x18 soft reset (banner again; from Run → ``ALARM:3``, from Home → ``ALARM:6``, and Alarm; from ``Hold:0`` → Idle, queued
  motion dropped, position kept).
- Motion takes virtual time: distance / rate, queued blocks run back to back; the status is Run until the
  clock passes the arrival time, then Idle at the target.

Power-up (construction, and each port open while ``reset_on_open``, as an Arduino's DTR reset): the banner,
motion stops where it is, the machine position reads 0,0,0 wherever the stage physically is, Alarm (with
``[MSG:'$H'|'$X' to unlock]``) when homing is enabled, else Idle.

World events: ``lab.record(name, "position", x_mm, y_mm, z_mm)`` (physical position) when a move arrives
(on the first byte received at or after arrival), when homing completes, and where motion is aborted.

Knobs: :meth:`GrblFirmware.trigger_hard_limit` (``ALARM:1`` before the next reply, Alarm, position lost),
``homing_fails`` (the next ``$H`` answers ``ALARM:9``), ``homing_enabled``, ``soft_limits``, ``travel_mm``,
``reset_on_open``, ``rapid_mm_min``, ``homing_mm_min``.

Fault plan (``simulators.faults``): ``device_error`` on a G-code line trips a hard limit as the line arrives:
motion stops, ``ALARM:1`` is sent, and the line itself is refused (``error:9``, Alarm) until ``$H``. A stage
measures nothing, so ``bad_value`` is not shown (a garbled ``MPos`` is the line's ``corrupt``).
"""

from __future__ import annotations

import math
import re
from collections import deque

from simulators.lab import SimLab
from simulators.serial_device import Firmware

Axes = tuple[float, float, float]
BANNER = b"\r\nGrbl 1.1h ['$' for help]\r\n"
LOCKED = b"[MSG:'$H'|'$X' to unlock]\r\n"
OK = b"ok\r\n"
_WORD = re.compile(r"([A-Z])([-+]?(?:\d+\.?\d*|\.\d+))")
_GROUPS = {0: "motion", 1: "motion", 20: "units", 21: "units", 90: "distance", 91: "distance", 53: "non-modal"}


def _err(code: int) -> bytes:
    return f"error:{code}\r\n".encode()


class GrblFirmware(Firmware):
    """The controller. See the module docstring for the commands, states and knobs.

    Args:
        name: the instrument's name, for ``lab.record``.
        lab: the simulated world (its clock is the only time source).
        travel_mm: (min, max) machine travel per axis, for soft limits.
        start_mm: the physical position at power-up (default: the middle of the travel).
    """

    rx_end = b"\n"

    def __init__(self, name: str, lab: SimLab, travel_mm: tuple[tuple[float, float], ...], start_mm: Axes | None = None):
        super().__init__()
        self.name, self.lab = name, lab
        self.travel_mm = tuple(tuple(t) for t in travel_mm)
        self.rapid_mm_min = 3000.0
        self.homing_mm_min = 1500.0
        self.homing_enabled = True
        self.soft_limits = True
        self.reset_on_open = True
        self.homing_fails = False
        self.homed = False
        self.state = "Idle"
        self._pos: Axes = (0.0, 0.0, 0.0)  # machine coordinates
        self._origin: Axes = start_mm or tuple((lo + hi) / 2 for lo, hi in self.travel_mm)  # type: ignore[assignment]
        self._queue: deque[tuple[Axes, float]] = deque()  # (machine target, rate mm/min) not yet started
        self._seg: tuple[Axes, Axes, float, float, float] | None = None  # start, target, t0, t1, rate
        self._home_end = 0.0
        self._pending = b""  # unsolicited lines sent before the next reply
        self._power_up()

    # --- knobs ------------------------------------------------------------------------------------
    def trigger_hard_limit(self) -> None:
        """A limit switch trips: motion stops, ``ALARM:1`` precedes the next reply, Alarm until $H/$X."""
        with self._lock:
            self._abort()
            self.state, self.homed = "Alarm", False
            self._pending += b"ALARM:1\r\n"

    @property
    def physical_mm(self) -> Axes:
        """Where the stage really is (machine position plus the power-up offset)."""
        with self._lock:
            return self._physical(self._now_pos())

    # --- bytes in, bytes out ------------------------------------------------------------------------
    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        with self._lock:
            for byte in data:
                ch = bytes([byte])
                if ch in (b"?", b"!", b"~", b"\x18"):
                    self.received.append(ch)
                    reply = self._realtime(ch)
                elif ch in (b"\n", b"\r"):
                    frame, self._buf = self._buf + ch, b""
                    self.received.append(frame)
                    self._advance()
                    reply = self.answer(frame)
                else:
                    self._buf += ch
                    continue
                if reply:
                    out.append(self._pending + reply)
                    self._pending = b""
        return out

    def express(self, kind: str, frame: bytes) -> bytes | None:
        line = frame.decode("ascii", "replace").strip()
        if kind != "device_error" or not line or line.startswith("$") or self.state == "Alarm":
            return None
        self._abort()
        self.state, self.homed = "Alarm", False
        return b"ALARM:1\r\n" + self.handle(frame)  # type: ignore[operator] - a G-code line in Alarm: error:9

    def on_open(self) -> bytes | None:
        if not self.reset_on_open:
            return None
        with self._lock:
            self._buf = b""
            return self._power_up()

    def handle(self, frame: bytes) -> bytes | None:
        line = re.sub(r"\(.*?\)|;.*", "", frame.decode("ascii", "replace")).replace(" ", "").strip().upper()
        if len(line) > 80:
            return _err(11)
        if not line:
            return OK
        if line.startswith("$"):
            return self._system(line)
        if self.state == "Alarm":
            return _err(9)
        return self._gcode(line)

    # --- state machine ------------------------------------------------------------------------------
    def _physical(self, machine: Axes) -> Axes:
        return tuple(m + o for m, o in zip(machine, self._origin))  # type: ignore[return-value]

    def _record(self, machine: Axes) -> None:
        x, y, z = self._physical(machine)
        self.lab.record(self.name, "position", x_mm=round(x, 4), y_mm=round(y, 4), z_mm=round(z, 4))

    def _now_pos(self) -> Axes:
        if self._seg is None:
            return self._pos
        start, target, t0, t1, _ = self._seg
        frac = 1.0 if t1 <= t0 else min(1.0, max(0.0, (self.lab.clock.now_s() - t0) / (t1 - t0)))
        return tuple(s + (t - s) * frac for s, t in zip(start, target))  # type: ignore[return-value]

    def _start_next(self, t0: float) -> None:
        target, rate = self._queue.popleft()
        self._seg = (self._pos, target, t0, t0 + math.dist(self._pos, target) / rate * 60.0, rate)
        self.state = "Run"

    def _advance(self) -> None:
        """Brings the state up to the virtual clock: homing done, moves arrived."""
        now = self.lab.clock.now_s()
        if self.state == "Home" and now >= self._home_end:
            self._pos, self._origin, self.homed, self.state = (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), True, "Idle"
            self._planned = self._pos
            self._record(self._pos)
            if self._queue:
                self._start_next(self._home_end)
        while self.state == "Run" and self._seg is not None and now >= self._seg[3]:
            self._pos, t1 = self._seg[1], self._seg[3]
            self._seg = None
            if self._queue:
                self._start_next(t1)
            else:
                self.state = "Idle"
                self._record(self._pos)

    def _abort(self) -> bool:
        """Stops motion where it is; returns whether something was moving."""
        self._advance()
        moving = self.state in ("Run", "Home")
        if moving:
            self._pos = self._now_pos()
            self._record(self._pos)
        self._seg, self._queue = None, deque()
        self._planned = self._pos
        return moving

    def _reset_modes(self) -> None:
        self._motion, self._absolute, self._inches, self._feed = 0, True, False, 0.0

    def _power_up(self) -> bytes:
        self._abort()
        self._origin = self._physical(self._pos)
        self._pos = self._planned = (0.0, 0.0, 0.0)
        self.homed, self._pending = False, b""
        self.state = "Alarm" if self.homing_enabled else "Idle"
        self._reset_modes()
        return BANNER + (LOCKED if self.state == "Alarm" else b"")

    def _realtime(self, ch: bytes) -> bytes | None:
        self._advance()
        if ch == b"?":
            x, y, z = self._now_pos()
            feed = self._seg[4] if self.state == "Run" and self._seg else 0.0
            return f"<{self.state}|MPos:{x:.3f},{y:.3f},{z:.3f}|FS:{feed:.0f},0>\r\n".encode()
        if ch == b"!":
            if self.state == "Run" and self._seg is not None:
                self._queue.appendleft((self._seg[1], self._seg[4]))
                self._pos, self._seg = self._now_pos(), None
            if self.state in ("Run", "Idle"):
                self.state = "Hold:0"
            return None
        if ch == b"~":
            if self.state == "Hold:0":
                if self._queue:
                    self._start_next(self.lab.clock.now_s())
                else:
                    self.state = "Idle"
            return None
        was_alarm, was_homing = self.state == "Alarm", self.state == "Home"
        aborted = self._abort()
        self._reset_modes()
        if aborted:
            self.state, self.homed = "Alarm", False
            return (b"ALARM:6\r\n" if was_homing else b"ALARM:3\r\n") + BANNER + LOCKED
        self.state = "Alarm" if was_alarm else "Idle"
        return BANNER + (LOCKED if was_alarm else b"")

    def _system(self, line: str) -> bytes:
        if line == "$H":
            if not self.homing_enabled:
                return _err(5)
            if self.state not in ("Idle", "Alarm"):
                return _err(8)
            if self.homing_fails:
                self.state, self.homed = "Alarm", False
                return b"ALARM:9\r\n"
            far = max(abs(p) for p in self._physical(self._pos))
            self.state, self._home_end = "Home", self.lab.clock.now_s() + far / self.homing_mm_min * 60.0 + 1.0
            return OK
        if line == "$X":
            if self.state == "Alarm":
                self.state = "Idle"
                return b"[MSG:Caution: Unlocked]\r\n" + OK
            return OK
        if line == "$$":
            travel = [hi - lo for lo, hi in self.travel_mm]
            rows = ["$10=1", "$13=0", f"$20={int(self.soft_limits)}", f"$22={int(self.homing_enabled)}"]
            rows += [f"$11{i}={self.rapid_mm_min:.3f}" for i in range(3)] + [f"$13{i}={t:.3f}" for i, t in enumerate(travel)]
            return "".join(r + "\r\n" for r in rows).encode() + OK
        return _err(3)

    def _gcode(self, line: str) -> bytes:
        words: dict[str, float] = {}
        groups: dict[str, int] = {}
        at = 0
        while at < len(line):
            m = _WORD.match(line, at)
            if m is None:
                return _err(2 if line[at].isalpha() else 1)
            letter, value = m.group(1), float(m.group(2))
            at = m.end()
            if letter == "G":
                code = int(value) if value == int(value) else -1
                if code not in _GROUPS:
                    return _err(20)
                if _GROUPS[code] in groups:
                    return _err(21)
                groups[_GROUPS[code]] = code
            elif letter in "XYZF":
                if letter in words:
                    return _err(25)
                words[letter] = value
            else:
                return _err(20)
        scale = 25.4 if groups.get("units", 20 if self._inches else 21) == 20 else 1.0
        if words.get("F", 0.0) < 0:
            return _err(4)
        motion = groups.get("motion", self._motion)
        if "non-modal" in groups and motion not in (0, 1):
            return _err(30)
        feed = words["F"] * scale if "F" in words else self._feed
        axes = [a for a in "XYZ" if a in words]
        if axes and motion == 1 and feed <= 0:
            return _err(22)
        absolute = groups.get("distance", 90 if self._absolute else 91) == 90 or "non-modal" in groups
        target = tuple(
            (words[a] * scale if absolute else p + words[a] * scale) if a in words else p for a, p in zip("XYZ", self._planned)
        )
        if axes and self.soft_limits and any(not lo <= t <= hi for t, (lo, hi) in zip(target, self.travel_mm)):
            return _err(15)
        self._motion, self._inches, self._feed = motion, scale != 1.0, feed
        self._absolute = groups.get("distance", 90 if self._absolute else 91) == 90
        if axes:
            rate = self.rapid_mm_min if motion == 0 else min(feed, self.rapid_mm_min)
            self._queue.append((target, rate))  # type: ignore[arg-type]
            self._planned = target  # type: ignore[assignment]
            if self.state == "Idle":
                self._start_next(self.lab.clock.now_s())
        return OK


def make_firmware(name: str, options: object, limits: object, lab: SimLab) -> GrblFirmware:
    """A controller whose travel is the driver's envelope (``limits.x_mm`` …), powered up mid-travel."""
    travel = tuple(tuple(getattr(limits, axis)) for axis in ("x_mm", "y_mm", "z_mm"))
    return GrblFirmware(name, lab, travel)
