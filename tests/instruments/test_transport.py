"""The transport against a real pseudo-terminal: framing, flushing, timeouts, retries, reconnects, transcripts."""

from __future__ import annotations

import pytest

from instruments.errors import ConnectionLost, InstrumentTimeout, PortNotFound, ProtocolError
from instruments.transport import ReplayPort, SerialSettings, Transcript, Transport, resolve_port
from simulators.faults import FaultPlan
from simulators.serial_device import Firmware, PtyDevice

FAST = SerialSettings(timeout_s=0.3, reopen_backoff_s=0.05, reopen_attempts=8)


class Counter(Firmware):
    """Answers ``GET\\r\\n`` with ``VAL n\\r\\n`` and counts ``INC\\r\\n`` (acknowledged with ``OK``)."""

    def __init__(self) -> None:
        super().__init__()
        self.value = 0

    def handle(self, frame: bytes) -> bytes | None:
        if frame == b"GET\r\n":
            return f"VAL {self.value}\r\n".encode()
        if frame == b"INC\r\n":
            self.value += 1
            return b"OK\r\n"
        return b"ERR\r\n"


def parse_val(frame: bytes) -> int:
    if not frame.startswith(b"VAL ") or not frame[4:-2].isdigit():
        raise ProtocolError(f"bad frame {frame!r}")
    return int(frame[4:-2])


def parse_ok(frame: bytes) -> None:
    if frame != b"OK\r\n":
        raise ProtocolError(f"bad frame {frame!r}")


@pytest.fixture
def device(tmp_path):
    with PtyDevice(Counter(), link=tmp_path / "serial" / "by-id" / "usb-counter-if00") as dev:
        yield dev


def test_query_round_trip_through_stable_link(device):
    with Transport(device.port, FAST) as t:
        assert t.query(b"GET\r\n", end=b"\r\n", parse=parse_val, idempotent=True) == 0
        t.query(b"INC\r\n", end=b"\r\n", parse=parse_ok)
        assert t.query(b"GET\r\n", end=b"\r\n", parse=parse_val, idempotent=True) == 1


@pytest.mark.parametrize("kind", ["no_reply", "partial", "corrupt", "noise", "late"])
def test_idempotent_query_recovers_from_each_reply_fault(device, kind):
    device.faults.late_s = 0.5
    device.firmware.value = 7
    with Transport(device.port, FAST) as t:
        device.faults.inject(kind)
        assert t.query(b"GET\r\n", end=b"\r\n", parse=parse_val, idempotent=True) == 7
    assert device.faults.applied == [kind]
    assert device.firmware.count(b"GET") == 2, "one retry after the spoiled reply"


def test_late_reply_is_flushed_not_read_as_the_next_answer(device):
    device.faults.late_s = 0.4
    with Transport(device.port, FAST) as t:
        device.faults.inject("late")
        with pytest.raises(InstrumentTimeout):
            t.query(b"INC\r\n", end=b"\r\n", parse=parse_ok)
        import time

        time.sleep(0.2)  # the late "OK" arrives now, before the next command
        assert t.query(b"GET\r\n", end=b"\r\n", parse=parse_val, idempotent=True) == 1


def test_lost_reply_to_an_action_is_not_resent(device):
    with Transport(device.port, FAST) as t:
        device.faults.inject("no_reply")
        with pytest.raises(InstrumentTimeout) as info:
            t.query(b"INC\r\n", end=b"\r\n", parse=parse_ok)
    assert info.value.effect_unknown
    assert device.firmware.count(b"INC") == 1
    assert device.firmware.value == 1


def test_reconnects_after_the_device_disappears_and_returns(device):
    device.faults.down_s = 0.1
    with Transport(device.port, FAST) as t:
        t.query(b"INC\r\n", end=b"\r\n", parse=parse_ok)
        device.faults.inject("disconnect")
        assert t.query(b"GET\r\n", end=b"\r\n", parse=parse_val, idempotent=True) == 1
        assert t.reopens == 1
        assert t.query(b"GET\r\n", end=b"\r\n", parse=parse_val, idempotent=True) == 1
    assert device.disconnects == 1


def test_disconnect_during_an_action_reports_unknown_effect(device):
    device.faults.down_s = 0.1
    with Transport(device.port, FAST) as t:
        device.faults.inject("disconnect")
        with pytest.raises((ConnectionLost, InstrumentTimeout)) as info:
            t.query(b"INC\r\n", end=b"\r\n", parse=parse_ok)
        assert info.value.effect_unknown
    assert device.firmware.count(b"INC") == 1


def test_transcript_records_bytes_and_replays(device, tmp_path):
    path = tmp_path / "session.jsonl"
    with Transport(device.port, FAST, name="counter", transcript=Transcript(path)) as t:
        t.query(b"INC\r\n", end=b"\r\n", parse=parse_ok)
        assert t.query(b"GET\r\n", end=b"\r\n", parse=parse_val, idempotent=True) == 1
    entries = Transcript.load(path)
    assert [bytes.fromhex(e["hex"]) for e in entries if e["dir"] != "note"] == [
        b"INC\r\n", b"OK\r\n", b"GET\r\n", b"VAL 1\r\n"
    ]
    # The same session, replayed with no device at all.
    with Transport("replay", FAST, opener=lambda: ReplayPort(entries)) as t:
        t.query(b"INC\r\n", end=b"\r\n", parse=parse_ok)
        assert t.query(b"GET\r\n", end=b"\r\n", parse=parse_val, idempotent=True) == 1
    with Transport("replay", FAST, opener=lambda: ReplayPort(entries)) as t:
        with pytest.raises(ProtocolError, match="recording has"):
            t.query(b"GET\r\n", end=b"\r\n", parse=parse_val)


def test_port_names_resolve_or_say_what_is_wrong(tmp_path):
    assert resolve_port("socket://127.0.0.1:5000") == "socket://127.0.0.1:5000"
    with pytest.raises(PortNotFound, match="no port at"):
        resolve_port(str(tmp_path / "nope"))
    with pytest.raises(PortNotFound, match="no USB serial device usb:0403:6001"):
        resolve_port("usb:0403:6001")
    with pytest.raises(PortNotFound, match="hex"):
        resolve_port("usb:zz:6001")


def test_serial_over_lan_bridge_by_socket_url():
    """A ``socket://host:port`` port (a serial-to-Ethernet bridge), served here by a TCP server on loopback."""
    import socket
    import threading

    firmware = Counter()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(4096):
                for reply in firmware.feed(data):
                    conn.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with Transport(f"socket://127.0.0.1:{port}", FAST, name="bridge") as t:
            t.query(b"INC\r\n", end=b"\r\n", parse=parse_ok)
            assert t.query(b"GET\r\n", end=b"\r\n", parse=parse_val, idempotent=True) == 1
    finally:
        server.close()
    assert firmware.received == [b"INC\r\n", b"GET\r\n"]
