"""Serving a simulated device's firmware on a real pseudo-terminal, so drivers talk to it through pyserial.

A :class:`PtyDevice` opens a pty pair, puts the slave side in raw mode before any client opens it, and
exposes it under a stable symlink (like ``/dev/serial/by-id/usb-IKA_RCT_digital-if00``). A thread reads
what the driver writes from the master side, feeds it to a :class:`Firmware`, and writes the replies back
through a :class:`~simulators.faults.FaultPlan`. When the client opens the port (the master's hang-up flag
clears), the firmware's ``on_open`` may answer with a ready banner, as an Arduino does after its reset.

The plan's device faults (``device_error``, ``bad_value``) are the device's own answers: before each command
is handled the firmware is asked, through :meth:`Firmware.answer`, whether the plan puts it in such a fault
state, and if so :meth:`Firmware.express` answers as that device does in its protocol.

A ``disconnect`` fault closes the pty (the driver's next read fails as on an unplugged adapter) and, after
``down_s``, serves a fresh pty under the same symlink, as a re-enumerated USB adapter would appear.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import select
import threading
import time
import tty
from pathlib import Path

from simulators.faults import FaultKind, FaultPlan

log = logging.getLogger(__name__)


class Firmware:
    """A device's behaviour at the byte level. Subclasses implement :meth:`handle`.

    Attributes:
        rx_end: the bytes that end a command from the host.
        received: every complete command received, in order (tests assert on it, e.g. one ``RUN`` only).
    """

    rx_end: bytes = b"\r\n"

    def __init__(self) -> None:
        self._buf = b""
        self.received: list[bytes] = []
        self._lock = threading.Lock()
        self.faults: FaultPlan | None = None  # set by the PtyDevice serving it
        self._bad_values = 0  # bad_value faults shown so far, to cycle through each firmware's bad readings

    def feed(self, data: bytes) -> list[bytes]:
        """Takes the bytes the host wrote; returns the replies to send, in order."""
        out: list[bytes] = []
        with self._lock:
            self._buf += data
            while (i := self._buf.find(self.rx_end)) >= 0:
                frame, self._buf = self._buf[: i + len(self.rx_end)], self._buf[i + len(self.rx_end) :]
                self.received.append(frame)
                reply = self.answer(frame)
                if reply:
                    out.append(reply)
        return out

    def answer(self, frame: bytes) -> bytes | None:
        """:meth:`handle`, unless the fault plan puts the device in a fault state for this command."""
        if self.faults is not None:
            faulty = self.faults.device_fault(lambda kind: self.express(kind, frame))
            if faulty is not None:
                return faulty
        return self.handle(frame)

    def handle(self, frame: bytes) -> bytes | None:
        """Acts on one complete command (terminator included); returns the reply, or None for no reply."""
        raise NotImplementedError

    def express(self, kind: FaultKind, frame: bytes) -> bytes | None:
        """The reply to ``frame`` with the device in fault ``kind`` (``device_error``: its error state, the
        command not carried out; ``bad_value``: a measurement that is NaN or out of range), acting on the device
        as the fault would; None, leaving the device untouched, when this command cannot show the fault."""
        return None

    def next_bad(self, values: tuple[str, ...]) -> str:
        """The next of a firmware's bad readings, in turn, so a test injecting n faults meets each of them."""
        value = values[self._bad_values % len(values)]
        self._bad_values += 1
        return value

    def on_open(self) -> bytes | None:
        """Called when the host opens the port; returns a banner to send, if the device sends one."""
        return None

    def count(self, command: bytes) -> int:
        """How many received commands start with ``command``."""
        return sum(1 for f in self.received if f.startswith(command))


class PtyDevice:
    """Serves a firmware on a pseudo-terminal.

    Args:
        firmware: the simulated device.
        link: path of the stable symlink to create; without one, :attr:`port` is the raw ``/dev/pts/N``.
        faults: what to spoil; defaults to nothing.
        boot_s: delay before ``on_open``'s banner (a real board takes ~1.5 s to boot after the reset).
    """

    def __init__(
        self, firmware: Firmware, link: str | Path | None = None, faults: FaultPlan | None = None, boot_s: float = 0.05
    ):
        self.firmware = firmware
        self.link = Path(link) if link is not None else None
        self.faults = faults or FaultPlan()
        firmware.faults = self.faults
        self.boot_s = boot_s
        self._master: int | None = None
        self._slave_path = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._due: list[tuple[float, int, bytes]] = []  # (send at, order, bytes): late replies and banners
        self._order = itertools.count()
        self._client_open = False
        self.disconnects = 0

    @property
    def port(self) -> str:
        """The name a driver opens: the symlink if there is one."""
        return str(self.link) if self.link is not None else self._slave_path

    def start(self) -> "PtyDevice":
        self._open_pty()
        self._thread = threading.Thread(target=self._serve, name=f"pty-{type(self.firmware).__name__}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self._close_pty()

    def __enter__(self) -> "PtyDevice":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the pty -----------------------------------------------------------------------------------
    def _open_pty(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)
        self._slave_path = os.ttyname(slave)
        # Not keeping the slave open lets the master see the client's open and close as hang-up changes.
        os.close(slave)
        self._master = master
        self._client_open = False
        if self.link is not None:
            self.link.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.link.with_name(self.link.name + ".new")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(self._slave_path)
            tmp.replace(self.link)

    def _close_pty(self) -> None:
        if self._master is not None:
            os.close(self._master)
            self._master = None
        if self.link is not None and self.link.is_symlink():
            self.link.unlink(missing_ok=True)

    def _disconnect(self) -> None:
        self.disconnects += 1
        self._close_pty()
        self._due.clear()
        if not self._stop.wait(self.faults.down_s):
            self._open_pty()

    # --- serving -------------------------------------------------------------------------------------
    def _serve(self) -> None:
        while not self._stop.is_set():
            master = self._master
            if master is None:
                return
            timeout_s = 0.05
            if self._due:
                timeout_s = max(0.0, min(timeout_s, self._due[0][0] - time.monotonic()))
            poller = select.poll()
            poller.register(master, select.POLLIN | select.POLLHUP)
            events = poller.poll(timeout_s * 1000)
            hung_up = any(ev & select.POLLHUP for _, ev in events)
            if hung_up:
                self._client_open = False
                time.sleep(0.005)  # the hang-up flag stays raised until a client opens the port
            elif not self._client_open:
                self._client_open = True
                banner = self.firmware.on_open()
                if banner:
                    self._schedule(banner, self.boot_s)
            if any(ev & select.POLLIN for _, ev in events):
                try:
                    data = os.read(master, 4096)
                except OSError:
                    continue
                for reply in self.firmware.feed(data):
                    delivery = self.faults.deliver(reply)
                    if delivery.disconnect:
                        self._disconnect()
                        break
                    if delivery.data:
                        self._schedule(delivery.data, delivery.delay_s)
            self._flush_due()

    def _schedule(self, data: bytes, delay_s: float) -> None:
        heapq.heappush(self._due, (time.monotonic() + delay_s, next(self._order), data))

    def _flush_due(self) -> None:
        now = time.monotonic()
        while self._due and self._due[0][0] <= now and self._master is not None:
            _, _, data = heapq.heappop(self._due)
            try:
                os.write(self._master, data)
            except OSError as exc:
                log.debug("pty write failed: %s", exc)
