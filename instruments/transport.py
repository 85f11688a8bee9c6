"""The byte transport every driver talks through; the only module that imports pyserial.

A :class:`Transport` owns one port: one lock, one command in flight. For each command it flushes stale
input (a late reply to an earlier command must not be read as this one's), writes, reads one frame
(``end`` terminator, optional ``start`` byte), and hands the frame to the driver's ``parse`` function.

Failures and what the transport does about them:

- no complete frame within ``timeout_s`` → :class:`InstrumentTimeout`;
- a frame the driver's parser rejects → :class:`ProtocolError`;
- ``SerialException``, ``OSError``, ``termios.error`` (unplugged, EIO) → close, reopen by the port's
  stable name with exponential backoff, :class:`ConnectionLost` when that fails.

Only queries marked ``idempotent`` are retried after any of these. For a command that changes the device
(``RUN``, a dispense, a move) the error is raised with ``effect_unknown=True``: the driver must find out
what happened by asking the device, never by sending the command again.

Every byte written and read is logged at level ``BYTES`` (5) on the ``instruments.bytes`` logger and, if a
:class:`Transcript` is attached, appended to a JSONL file; :class:`ReplayPort` plays such a transcript
back as a port, so a recorded device session becomes a test.

Port names: a path (``/dev/ttyUSB0``, better a stable ``/dev/serial/by-id/...`` link), a pyserial URL
(``socket://host:port`` for serial-over-LAN bridges, ``rfc2217://...``) or ``usb:VID:PID[:SERIAL]``
(hex ids), resolved to whatever device node the adapter has today.
"""

from __future__ import annotations

import json
import logging
import termios
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import serial
import serial.tools.list_ports

from instruments.errors import (
    ConnectionLost,
    naming,
    InstrumentError,
    InstrumentTimeout,
    PortNotFound,
    ProtocolError,
)

BYTES = 5
logging.addLevelName(BYTES, "BYTES")
byte_log = logging.getLogger("instruments.bytes")
log = logging.getLogger(__name__)

T = TypeVar("T")
_PORT_ERRORS = (serial.SerialException, OSError, termios.error)
_PARITY = {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD}


@dataclass(frozen=True)
class SerialSettings:
    """Line settings and timing of one port.

    Attributes:
        baudrate: bits per second.
        bytesize: 7 or 8 data bits.
        parity: ``N``, ``E`` or ``O``.
        stopbits: 1 or 2.
        timeout_s: default wait for a complete reply.
        write_timeout_s: longest a write may block.
        open_settle_s: wait after opening (Arduino-class boards reset when the port opens).
        reopen_attempts: tries to reopen a failed port before giving up.
        reopen_backoff_s: first wait between reopen tries; doubles each try.
        max_frame_bytes: a reply longer than this is a protocol error (a runaway device).
    """

    baudrate: int = 9600
    bytesize: Literal[7, 8] = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    timeout_s: float = 1.0
    write_timeout_s: float = 1.0
    open_settle_s: float = 0.0
    reopen_attempts: int = 4
    reopen_backoff_s: float = 0.05
    max_frame_bytes: int = 65536


class SerialLike(Protocol):
    """What the transport needs of a port: pyserial's ``Serial`` or a :class:`ReplayPort`."""

    timeout: float | None

    @property
    def in_waiting(self) -> int: ...

    def write(self, data: bytes) -> int | None: ...
    def read(self, size: int = ...) -> bytes: ...
    def reset_input_buffer(self) -> None: ...
    def close(self) -> None: ...


# --- transcripts ---------------------------------------------------------------------------------


class Transcript:
    """Every byte a set of transports wrote and read, in order, optionally appended to a JSONL file.

    Each entry is ``{"t_s": seconds since the transcript began, "port": name, "dir": "tx" | "rx",
    "hex": the bytes}``, plus ``"note"`` for events (reopen, flush). Thread-safe.
    """

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else None
        self.entries: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._t0 = time.monotonic()
        self._file = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", buffering=1)  # line-buffered: each entry reaches the file whole

    def record(self, port: str, direction: Literal["tx", "rx", "note"], data: bytes = b"", note: str = "") -> None:
        entry: dict[str, Any] = {"t_s": round(time.monotonic() - self._t0, 6), "port": port, "dir": direction}
        if direction == "note":
            entry["note"] = note
        else:
            entry["hex"] = data.hex()
        with self._lock:
            self.entries.append(entry)
            if self._file is not None:
                self._file.write(json.dumps(entry) + "\n")

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def written(self, port: str | None = None) -> bytes:
        """All bytes written (to ``port``, or to every port), concatenated."""
        return b"".join(bytes.fromhex(e["hex"]) for e in self.entries if e["dir"] == "tx" and port in (None, e["port"]))

    @staticmethod
    def load(path: str | Path) -> list[dict[str, Any]]:
        """The entries of a JSONL transcript file."""
        return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


class ReplayPort:
    """A port that replays a transcript: writes must match what was recorded, reads return what was read.

    Args:
        entries: transcript entries (from :meth:`Transcript.load`); only ``tx``/``rx`` of ``port`` are used.
        port: which port's traffic to replay (default: the first port in the transcript).

    Raises (from ``write``):
        ProtocolError: the driver wrote something other than the recording, naming the first differing byte.
    """

    def __init__(self, entries: Sequence[dict[str, Any]], port: str | None = None):
        traffic = [e for e in entries if e["dir"] in ("tx", "rx")]
        port = port or (traffic[0]["port"] if traffic else "")
        self._steps = [(e["dir"], bytes.fromhex(e["hex"])) for e in traffic if e["port"] == port]
        self._pending_rx = b""
        self.timeout: float | None = None
        self.is_open = True

    def write(self, data: bytes) -> int:
        expected = b""
        while len(expected) < len(data) and self._steps and self._steps[0][0] == "tx":
            expected += self._steps.pop(0)[1]
        if expected != data:
            at = next((i for i, (a, b) in enumerate(zip(data, expected)) if a != b), min(len(data), len(expected)))
            raise ProtocolError(f"replay: wrote {data!r}, the recording has {expected!r} (first difference at byte {at})")
        while self._steps and self._steps[0][0] == "rx":
            self._pending_rx += self._steps.pop(0)[1]
        return len(data)

    @property
    def in_waiting(self) -> int:
        return len(self._pending_rx)

    def read(self, size: int = 1) -> bytes:
        """Recorded reply bytes; nothing (as a timeout would) once the recording's replies are used up."""
        out, self._pending_rx = self._pending_rx[:size], self._pending_rx[size:]
        return out

    def reset_input_buffer(self) -> None:
        """A replay keeps its recorded replies: flushing here would drop the very bytes being replayed."""

    def close(self) -> None:
        self.is_open = False


# --- port names ----------------------------------------------------------------------------------


def resolve_port(name: str) -> str:
    """The device node or URL to open for a port name; called on every (re)open, so a re-enumerated USB
    adapter is found again.

    Raises:
        PortNotFound: a path that does not exist, or no USB device with the given ids.
    """
    if "://" in name:
        return name
    if name.startswith("usb:"):
        parts = name.split(":")[1:]
        if len(parts) not in (2, 3):
            raise PortNotFound(f"port '{name}' is not of the form usb:VID:PID or usb:VID:PID:SERIAL (hex ids)")
        try:
            vid, pid = int(parts[0], 16), int(parts[1], 16)
        except ValueError:
            raise PortNotFound(f"port '{name}': vendor and product ids must be hex, e.g. usb:0403:6001") from None
        serial_no = parts[2] if len(parts) == 3 else None
        for info in serial.tools.list_ports.comports():
            if info.vid == vid and info.pid == pid and serial_no in (None, info.serial_number):
                return info.device
        raise PortNotFound(f"no USB serial device {name} is connected; check the cable or `python -m serial.tools.list_ports -v`")
    if not Path(name).exists():
        raise PortNotFound(f"no port at {name}; check the cable, or the name (ls /dev/serial/by-id/)")
    return name


# --- the transport -------------------------------------------------------------------------------


class Transport:
    """One port: framing, timeouts, retries of idempotent queries, reconnects, byte logging.

    Args:
        port: the port's stable name (see the module docstring).
        settings: line settings and timing.
        name: label for logs and errors (the instrument's name); defaults to ``port``.
        transcript: where to record every byte, if anywhere.
        opener: makes the port object; defaults to pyserial. Tests pass a :class:`ReplayPort` factory.
    """

    def __init__(
        self,
        port: str,
        settings: SerialSettings = SerialSettings(),
        *,
        name: str = "",
        transcript: Transcript | None = None,
        opener: Callable[[], SerialLike] | None = None,
    ):
        self.port = port
        self.settings = settings
        self.name = name or port
        self.transcript = transcript
        self._opener = opener or self._open_serial
        self._lock = threading.RLock()
        self._ser: SerialLike | None = None
        self._rx = b""  # bytes read past the end of the last frame (a data line that follows its header)
        self.reopens = 0
        # Set by a driver whose device needs a handshake after every reopen (an Arduino resets and boots).
        self.on_reopen: Callable[[], None] | None = None

    # --- opening and closing ---------------------------------------------------------------------
    def _open_serial(self) -> SerialLike:
        s = self.settings
        return serial.serial_for_url(
            resolve_port(self.port),
            baudrate=s.baudrate,
            bytesize=serial.SEVENBITS if s.bytesize == 7 else serial.EIGHTBITS,
            parity=_PARITY[s.parity],
            stopbits=serial.STOPBITS_TWO if s.stopbits == 2 else serial.STOPBITS_ONE,
            timeout=s.timeout_s,
            write_timeout=s.write_timeout_s,
            exclusive=True if "://" not in self.port else None,
        )

    def open(self) -> None:
        """Opens the port if it is not open (idempotent).

        Raises:
            PortNotFound: the port does not exist.
            ConnectionLost: it exists but cannot be opened.
        """
        with self._lock:
            if self._ser is not None:
                return
            try:
                self._ser = self._opener()
            except InstrumentError:
                raise
            except _PORT_ERRORS as exc:
                raise ConnectionLost(f"cannot open {self.port}: {exc}", instrument=self.name) from None
            self._note(f"open {self.port}")
            if self.settings.open_settle_s > 0:
                time.sleep(self.settings.open_settle_s)

    def close(self) -> None:
        with self._lock:
            if self._ser is not None:
                try:
                    self._ser.close()
                except _PORT_ERRORS:
                    pass
                self._ser = None
                self._note("close")

    @property
    def is_open(self) -> bool:
        return self._ser is not None

    def reopen(self) -> None:
        """Closes and reopens the port by its stable name, backing off between tries.

        Raises:
            ConnectionLost: every try failed.
        """
        with self._lock:
            self.close()
            delay = self.settings.reopen_backoff_s
            last: Exception | None = None
            for _attempt in range(self.settings.reopen_attempts):
                try:
                    self.open()
                    self.reopens += 1
                    if self.on_reopen is not None:
                        self.on_reopen()
                    return
                except (ConnectionLost, PortNotFound) as exc:
                    last = exc
                    time.sleep(delay)
                    delay *= 2
            raise ConnectionLost(
                f"port {self.port} did not come back after {self.settings.reopen_attempts} tries ({last}); "
                "check the cable and power, then resume the campaign",
                instrument=self.name,
            )

    def __enter__(self) -> "Transport":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def transaction(self) -> threading.RLock:
        """Holds the port for several frames that belong together (a header line and its data line).

        ``with transport.transaction(): header = transport.query(...); data = transport.read_frame(...)``
        """
        return self._lock

    # --- commands --------------------------------------------------------------------------------
    def send(self, payload: bytes, *, idempotent: bool = False) -> None:
        """Writes a command that gets no reply (NAMUR set commands)."""
        self._with_recovery(lambda: self._write(payload, flush=True), idempotent=idempotent, what=payload)

    def query(
        self,
        payload: bytes,
        *,
        end: bytes,
        parse: Callable[[bytes], T],
        start: bytes | None = None,
        timeout_s: float | None = None,
        idempotent: bool = False,
        retries: int = 2,
    ) -> T:
        """Writes ``payload`` and returns ``parse(frame)`` for the reply frame.

        Args:
            payload: the complete command, terminator included.
            end: the bytes that end a reply frame (``b"\\r\\n"``, ETX ``b"\\x03"``).
            parse: the driver's pure parser of one frame (terminator included); raises ``ProtocolError`` on
                a malformed frame, ``DeviceError`` on an error reply.
            start: a byte that must begin the frame (STX); leading noise before it is a protocol error.
            timeout_s: wait for the complete reply; defaults to the port's.
            idempotent: the command may be sent again safely (a query, an absolute set point).
            retries: further tries for an idempotent command after a timeout, garbled frame or port failure.

        Raises:
            InstrumentTimeout, ProtocolError, ConnectionLost: after the allowed tries; for a command that is
                not idempotent, on the first failure, with ``effect_unknown=True``.
            DeviceError: the device replied with an error (never retried: the device did answer).
        """

        def attempt() -> T:
            self._write(payload, flush=True)
            frame = self._read_frame(end, start, timeout_s, payload)
            try:
                return parse(frame)
            except InstrumentError as exc:
                raise naming(exc, self.name) from None

        return self._with_recovery(attempt, idempotent=idempotent, what=payload, retries=retries)

    def read_frame(self, *, end: bytes, start: bytes | None = None, timeout_s: float | None = None) -> bytes:
        """Reads one frame without writing (a ready banner, an unsolicited message)."""
        with self._lock:
            self.open()
            try:
                return self._read_frame(end, start, timeout_s, b"")
            except InstrumentError:
                raise  # InstrumentTimeout is an OSError too, but a timeout is not a port failure
            except _PORT_ERRORS as exc:
                self._note(f"port error: {exc}")
                self.reopen()
                raise ConnectionLost(f"port failed while waiting for a message: {exc}", instrument=self.name) from None

    def _with_recovery(self, attempt: Callable[[], T], *, idempotent: bool, what: bytes, retries: int = 2) -> T:
        tries = 1 + (retries if idempotent else 0)
        with self._lock:
            for i in range(tries):
                last_try = i == tries - 1
                try:
                    self.open()
                    return attempt()
                except (InstrumentTimeout, ProtocolError) as exc:
                    if last_try:
                        exc.effect_unknown = not idempotent
                        raise
                    log.info("%s: %s; retrying %r", self.name, exc, what)
                    self._drain()
                except InstrumentError:
                    raise  # DeviceError, ConnectionLost, PortNotFound: answered or already handled
                except _PORT_ERRORS as exc:
                    self._note(f"port error: {exc}")
                    self.reopen()
                    if last_try:
                        raise ConnectionLost(
                            f"port failed during {what!r} ({exc}); reconnected, "
                            + ("retries used up" if idempotent else "the command's effect is unknown"),
                            instrument=self.name,
                            effect_unknown=not idempotent,
                        ) from None
                    log.info("%s: port error %s; reconnected, retrying %r", self.name, exc, what)
        raise AssertionError("unreachable")  # pragma: no cover

    def _drain(self, quiet_s: float = 0.02, limit_s: float = 0.5) -> None:
        """Before a retry, reads and drops whatever the device is still sending (the rest of a garbled or
        late reply) until the line has been quiet for ``quiet_s``, so it cannot be taken for the next reply."""
        if self._ser is None:
            return
        end = time.monotonic() + limit_s
        try:
            self._ser.timeout = quiet_s
            while time.monotonic() < end:
                junk = self._ser.read(max(1, self._ser.in_waiting))
                if not junk:
                    break
                self._log("rx", junk)
        except _PORT_ERRORS:
            pass  # the retry's own write or read meets the failed port and reopens it
        self._rx = b""

    def _write(self, payload: bytes, *, flush: bool) -> None:
        assert self._ser is not None
        if flush:
            self._ser.reset_input_buffer()
            self._rx = b""
        self._log("tx", payload)
        self._ser.write(payload)

    def _read_frame(self, end: bytes, start: bytes | None, timeout_s: float | None, sent: bytes) -> bytes:
        assert self._ser is not None
        wait_s = self.settings.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + wait_s
        buf = self._rx
        # Read what has arrived in one call (a 2 kB spectrum line is one read, not 2000), keep what follows
        # the frame for the next one.
        while (i := buf.find(end)) < 0 and len(buf) < self.settings.max_frame_bytes:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._ser.timeout = remaining
            chunk = self._ser.read(max(1, self._ser.in_waiting))
            if not chunk:
                break
            buf += chunk
        if i >= 0:
            frame, self._rx = buf[: i + len(end)], buf[i + len(end) :]
        else:
            frame, self._rx = buf, b""
        if frame:
            self._log("rx", frame)
        if not frame.endswith(end):
            if len(frame) >= self.settings.max_frame_bytes:
                raise ProtocolError(f"reply to {sent!r} exceeds {len(frame)} bytes without {end!r}", instrument=self.name)
            detail = f"partial reply {frame!r}" if frame else "no reply"
            raise InstrumentTimeout(
                f"{detail} to {sent!r} within {wait_s} s; check power, cable and line settings",
                instrument=self.name,
            )
        if start is not None and not frame.startswith(start):
            raise ProtocolError(f"reply {frame!r} to {sent!r} does not start with {start!r}", instrument=self.name)
        return frame

    # --- logging ---------------------------------------------------------------------------------
    def _log(self, direction: Literal["tx", "rx"], data: bytes) -> None:
        if byte_log.isEnabledFor(BYTES):
            byte_log.log(BYTES, "%s %s %r", self.name, direction, data)
        if self.transcript is not None:
            self.transcript.record(self.name, direction, data)

    def _note(self, note: str) -> None:
        if self.transcript is not None:
            self.transcript.record(self.name, "note", note=note)
