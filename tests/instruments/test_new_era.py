"""The New Era pump driver against its byte-level simulator (one or two pumps on one port) on a real pty."""

from __future__ import annotations

import logging
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from instruments.errors import ConnectionLost, DeviceError, InstrumentError, InstrumentTimeout, LimitError, ProtocolError
from instruments.new_era import (
    SPEC,
    Dispensed,
    NewEraPump,
    Reply,
    best_units,
    format_command,
    format_number,
    format_rate,
    parse_diameter,
    parse_direction,
    parse_dispensed,
    parse_rate,
    parse_reply,
    parse_status,
    parse_version,
    parse_volume,
)
from instruments.transport import SerialSettings, Transcript, Transport
from simulators.clock import VirtualClock
from simulators.faults import FaultPlan
from simulators.firmware.new_era import make_firmware, rate_range_ul_min
from simulators.lab import SimLab
from simulators.serial_device import PtyDevice

FAST = SerialSettings(baudrate=19200, timeout_s=0.3, reopen_backoff_s=0.05, reopen_attempts=8)
LIMITS = NewEraPump.Limits(syringe_volume_ul=1000.0, max_rate_ul_min=500.0)
OPTIONS = NewEraPump.Options(address=1, syringe_diameter_mm=4.699, reagent="FAPbI3", poll_s=5.0)


class Bench:
    """Pumps on one simulated port, one shared transport with a transcript, a driver per pump."""

    def __init__(self, tmp_path, *pumps: tuple[str, NewEraPump.Options, NewEraPump.Limits]):
        self.lab = SimLab(VirtualClock())
        (name, options, limits), *more = pumps
        self.fw = make_firmware(name, options, limits, self.lab)
        for extra in more:
            self.fw.add_device(*extra)
        link = tmp_path / "serial/by-id/usb-NE-1000-if00"
        self.dev = PtyDevice(self.fw, link=link, faults=FaultPlan(late_s=0.5, down_s=0.1))
        self.dev.start()
        self.transcript = Transcript()
        self.transport = Transport(self.dev.port, FAST, name="pumps", transcript=self.transcript)
        self.drivers = {
            n: NewEraPump(self.transport, name=n, limits=lim, options=o, clock=self.lab.clock) for n, o, lim in pumps
        }

    def dispensed(self):
        return [e.data for e in self.lab.events if e.kind == "dispensed"]

    def close(self):
        self.transport.close()
        self.dev.stop()


@pytest.fixture
def bench(tmp_path):
    b = Bench(tmp_path, ("pump", OPTIONS, LIMITS))
    b.pump = b.drivers["pump"]
    b.sim = b.fw.pump("pump")
    b.pump.connect()
    yield b
    b.close()


def on_run(bench, action):
    """Calls ``action(frame)`` when the firmware receives RUN; if it returns True the RUN is dropped unseen."""
    handle = bench.fw.handle

    def wrapped(frame):
        if frame.endswith(b"RUN\r") and action(frame):
            return None
        return handle(frame)

    bench.fw.handle = wrapped


# --- pure protocol functions ---------------------------------------------------------------------


def test_numbers_fit_four_digits():
    assert [format_number(v) for v in (0.5, 4.699, 26.594, 100.0, 1000.4, 9999.0, 0.0)] == [
        "0.500", "4.699", "26.59", "100.0", "1000", "9999", "0.000"
    ]
    for bad in (12345.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError):
            format_number(bad)
    assert best_units(100.0, {"UL": 1.0, "ML": 1000.0}) == ("100.0", "UL", 100.0)
    assert best_units(12345.0, {"UL": 1.0, "ML": 1000.0}) == ("12.35", "ML", 12350.0)


def test_commands_are_the_manuals_bytes():
    assert format_command(1) == b"1\r"
    assert format_command(12, "RUN") == b"12RUN\r"
    assert format_command(0, "DIR", "INF") == b"0DIRINF\r"
    assert format_rate(1, 100.0) == b"1RAT100.0UM\r"
    assert format_rate(1, 0.1234) == b"1RAT7.404UH\r"  # µL/h keeps all 4 digits
    for bad in ((100, "RUN", ""), (1, "RUN", "\r2RUN")):
        with pytest.raises(ValueError):
            format_command(*bad)


def test_replies_parse_and_errors_raise_with_their_code():
    assert parse_reply(b"\x0201S\x03") == Reply(1, "S", "")
    assert parse_status(b"\x0201I\x03", 1) == "I"
    assert parse_dispensed(b"\x0201SI1.234W0.000ML\x03", 1) == Dispensed("S", 1234.0, 0.0)
    assert parse_rate(b"\x0201S100.0UM\x03") == 100.0
    assert parse_rate(b"\x0201S6.000MH\x03") == pytest.approx(100.0)
    assert parse_volume(b"\x0201S1.000ML\x03") == 1000.0
    assert parse_diameter(b"\x0201S4.699\x03") == 4.699
    assert parse_direction(b"\x0201SWDR\x03") == "WDR"
    assert parse_version(b"\x0200SNE1000V3.928\x03") == "NE1000V3.928"
    for frame, code in ((b"\x0201A?R\x03", "A?R"), (b"\x0201A?S\x03", "A?S"), (b"\x0201S?OOR\x03", "?OOR"),
                        (b"\x0201S?NA\x03", "?NA"), (b"\x0201S?\x03", "?"), (b"\x0201I?COM\x03", "?COM")):
        with pytest.raises(DeviceError) as info:
            parse_reply(frame, 1)
        assert info.value.code == code
    for frame in (b"\x0202S\x03", b"01S\x03", b"\x0201S", b"\x02xxS\x03", b"\x0201Q\x03", b"\x0201A?Z\x03"):
        with pytest.raises(ProtocolError):
            parse_reply(frame, 1)
    with pytest.raises(ProtocolError, match="address 2, not 1"):
        parse_status(b"\x0202S\x03", 1)
    with pytest.raises(ProtocolError):
        parse_status(b"\x0201SI0.000W0.000UL\x03", 1)  # data where an acknowledgement was expected


PARSERS = (
    parse_reply, parse_status, parse_dispensed, parse_rate, parse_volume, parse_diameter, parse_direction, parse_version
)


@settings(max_examples=200, deadline=None)
@given(
    st.binary(max_size=30)
    | st.binary(max_size=24).map(lambda b: b"\x02" + b + b"\x03")
    | st.text(alphabet="0123456789.?ASIWPUXTRENOCMGL", max_size=16).map(lambda s: b"\x02" + s.encode() + b"\x03"),
    st.sampled_from([None, 0, 1, 99]),
)
def test_parsers_raise_only_instrument_errors(frame, address):
    for parse in PARSERS:
        try:
            parse(frame, address)
        except InstrumentError:
            pass


def test_spec_options_and_limits():
    assert (SPEC.kind, SPEC.serial.baudrate, SPEC.serial.bytesize, SPEC.serial.parity) == ("new_era", 19200, 8, "N")
    with pytest.raises(ValidationError):
        NewEraPump.Limits(max_rate_ul_min=10.0)  # the syringe volume is required
    with pytest.raises(ValidationError, match="exceeds syringe_volume_ul"):
        NewEraPump.Limits(syringe_volume_ul=100.0, max_rate_ul_min=10.0, max_volume_ul=200.0)
    with pytest.raises(ValidationError):
        NewEraPump.Options(address=100, syringe_diameter_mm=4.7)
    with pytest.raises(ValidationError):
        NewEraPump.Options(address=1)  # the diameter is required


# --- connect and pumping -------------------------------------------------------------------------


def test_connect_clears_the_power_up_alarm(bench, caplog):
    assert bench.pump.power_reset_seen
    assert bench.pump.version == "NE1000V3.928"
    assert bench.transcript.written().startswith(b"1\r1\r1VER\r1DIA4.699\r1DIA\r")
    assert bench.sim.pending_alarm is None and bench.sim.diameter_mm == 4.699


def test_dispense_pumps_the_volume_in_virtual_time_and_records_it(bench):
    assert bench.pump.dispense(100.0, 50.0) == pytest.approx(100.0)
    assert 120.0 <= bench.lab.clock.now_s() <= 125.0  # 100 µL at 50 µL/min is 2 min of virtual time
    assert bench.dispensed() == [{"volume_ul": 100.0, "reagent": "FAPbI3", "direction": "infuse"}]
    assert bench.fw.count(b"1RUN") == 1
    written = bench.transcript.written()
    for command in (b"1VOLUL\r", b"1VOL100.0\r", b"1RAT50.00UM\r", b"1DIRINF\r", b"1CLDINF\r"):
        assert command in written
    assert written.index(b"1CLDINF") < written.index(b"1RUN")


def test_withdraw_and_a_second_dispense(bench):
    assert bench.pump.withdraw(25.5, 100.0) == pytest.approx(25.5)
    assert bench.pump.dispense(40.0, 100.0) == pytest.approx(40.0)
    assert bench.dispensed() == [
        {"volume_ul": 25.5, "reagent": "FAPbI3", "direction": "withdraw"},
        {"volume_ul": 40.0, "reagent": "FAPbI3", "direction": "infuse"},
    ]
    assert bench.sim.infused_ul == pytest.approx(40.0) and bench.sim.withdrawn_ul == pytest.approx(25.5)


def test_two_pumps_share_a_port(tmp_path):
    o2 = NewEraPump.Options(address=2, syringe_diameter_mm=14.57, reagent="DMF", poll_s=5.0)
    l2 = NewEraPump.Limits(syringe_volume_ul=5000.0, max_rate_ul_min=2000.0)
    b = Bench(tmp_path, ("a", OPTIONS, LIMITS), ("b", o2, l2))
    try:
        for driver in b.drivers.values():
            driver.connect()
        assert b.drivers["b"].dispense(2000.0, 1000.0) == pytest.approx(2000.0)
        assert b.drivers["a"].dispense(10.0, 100.0) == pytest.approx(10.0)
        assert [(e.instrument, e.data["reagent"], e.data["volume_ul"]) for e in b.lab.events] == [
            ("b", "DMF", 2000.0), ("a", "FAPbI3", 10.0)
        ]
        assert b.fw.pump(2).infused_ul == pytest.approx(2000.0) and b.fw.pump(1).infused_ul == pytest.approx(10.0)
        stray = NewEraPump(b.transport, name="c", limits=LIMITS, options=OPTIONS.model_copy(update={"address": 3}))
        with pytest.raises(InstrumentTimeout):
            stray.connect()  # no pump at address 3 answers
    finally:
        b.close()


def test_stop_pauses_then_stops_a_running_pump_and_records_the_partial_volume(bench):
    bench.pump.transport.query(b"1VOL100\r", end=b"\x03", parse=parse_status)
    bench.pump.transport.query(b"1RAT60UM\r", end=b"\x03", parse=parse_status)
    assert bench.pump.transport.query(b"1RUN\r", end=b"\x03", parse=parse_status) == "I"
    bench.lab.clock.advance(30.0)
    bench.pump.stop()
    assert bench.sim.state == "S"
    assert bench.fw.count(b"1STP") == 2  # the first pauses, the second stops
    assert bench.dispensed() == [{"volume_ul": pytest.approx(30.0), "reagent": "FAPbI3", "direction": "infuse"}]
    bench.pump.safe_state()  # already stopped: no error
    assert bench.sim.state == "S"


def test_safe_state_does_not_raise_when_the_port_is_gone(bench):
    bench.transport.settings = SerialSettings(timeout_s=0.2, reopen_attempts=1, reopen_backoff_s=0.01)
    bench.dev.stop()
    bench.pump.safe_state()
    assert not bench.transport.is_open


def test_a_busy_pump_is_not_reconfigured(bench):
    bench.pump.transport.query(b"1VOL0\r", end=b"\x03", parse=parse_status)
    bench.pump.transport.query(b"1RUN\r", end=b"\x03", parse=parse_status)
    with pytest.raises(DeviceError, match="infusing") as info:
        bench.pump.dispense(10.0, 10.0)
    assert info.value.code == "busy" and bench.fw.count(b"1RUN") == 1 and bench.fw.count(b"1DIRINF") == 0


# --- limits: refused before a byte is sent ---------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "kwargs", "match"),
    [
        ("dispense", {"volume_ul": 1500.0, "rate_ul_min": 10.0}, "exceeds the syringe volume"),
        ("withdraw", {"volume_ul": 1000.1, "rate_ul_min": 10.0}, "exceeds the syringe volume"),
        ("dispense", {"volume_ul": 10.0, "rate_ul_min": 501.0}, "exceeds the limit 500"),
        ("dispense", {"volume_ul": -1.0, "rate_ul_min": 10.0}, ">= 0"),
        ("dispense", {"volume_ul": 10.0, "rate_ul_min": 0.0}, "positive"),
        ("dispense", {"volume_ul": math.nan, "rate_ul_min": 10.0}, "finite"),
        ("dispense", {"volume_ul": 0.0004, "rate_ul_min": 10.0}, "4-digit"),
    ],
)
def test_limit_violations_send_zero_bytes(bench, action, kwargs, match):
    before = bench.transcript.written()
    with pytest.raises(LimitError, match=match):
        bench.pump.perform(action, kwargs)
    with pytest.raises(LimitError):
        getattr(bench.pump, action)(**kwargs)
    assert bench.transcript.written() == before


def test_dispensing_nothing_sends_nothing(bench):
    """A recipe without this reagent asks for 0 µL: the pump is not touched."""
    before = bench.transcript.written()
    assert bench.pump.dispense(0.0, 100.0) == 0.0
    assert bench.transcript.written() == before


def test_max_volume_per_dispense(tmp_path):
    limits = NewEraPump.Limits(syringe_volume_ul=1000.0, max_rate_ul_min=500.0, max_volume_ul=50.0)
    b = Bench(tmp_path, ("pump", OPTIONS, limits))
    try:
        with pytest.raises(LimitError, match="exceeds the limit 50"):
            b.drivers["pump"].validate("dispense", {"volume_ul": 60.0, "rate_ul_min": 10.0})
        assert b.transcript.written() == b""
    finally:
        b.close()


# --- device alarms and errors --------------------------------------------------------------------


def test_a_stall_is_a_device_error_naming_the_volume_pumped(bench):
    bench.sim.stall_next_run = True
    with pytest.raises(DeviceError, match="stalled after 50 of 100") as info:
        bench.pump.dispense(100.0, 50.0)
    assert info.value.code == "A?S" and info.value.effect_unknown
    assert bench.dispensed() == [{"volume_ul": pytest.approx(50.0), "reagent": "FAPbI3", "direction": "infuse"}]
    assert bench.fw.count(b"1RUN") == 1 and bench.sim.state == "S"


def test_a_rate_the_syringe_cannot_do_is_out_of_range(tmp_path):
    limits = NewEraPump.Limits(syringe_volume_ul=1000.0, max_rate_ul_min=5000.0)
    b = Bench(tmp_path, ("pump", OPTIONS, limits))
    try:
        b.drivers["pump"].connect()
        too_fast = rate_range_ul_min(4.699)[1] * 1.1  # ~970 µL/min for a 1 mL syringe
        with pytest.raises(DeviceError) as info:
            b.drivers["pump"].dispense(100.0, too_fast)
        assert info.value.code == "?OOR" and not info.value.effect_unknown
        assert b.fw.count(b"1RUN") == 0
    finally:
        b.close()


def test_an_alarm_at_connect_other_than_power_reset_raises(bench):
    bench.sim.pending_alarm = "E"
    with pytest.raises(DeviceError, match="A?E at connect .* clear it at the pump's keypad") as info:
        bench.pump.connect()
    assert info.value.code == "A?E"


def test_a_stall_alarm_at_connect_is_cleared_and_noted(tmp_path, caplog):
    b = Bench(tmp_path, ("pump", OPTIONS, LIMITS))
    try:
        b.dev.faults.inject("device_error")  # the pump answers the first status with A?S, its A?R still pending
        with caplog.at_level(logging.WARNING, logger="instruments.new_era"):
            b.drivers["pump"].connect()
        assert b.drivers["pump"].alarms_at_connect == ["A?S", "A?R"] and b.drivers["pump"].power_reset_seen
        assert b.dev.faults.applied == ["device_error"] and "A?S (the motor stalled) at connect" in caplog.text
        assert b.transcript.written().startswith(b"1\r1\r1\r1VER\r1DIA4.699\r1DIA\r"), "each alarm read, then asked again"
        assert b.drivers["pump"].dispense(20.0, 100.0) == pytest.approx(20.0)
    finally:
        b.close()


def test_connect_survives_three_spoiled_replies_in_a_row(tmp_path):
    b = Bench(tmp_path, ("pump", OPTIONS, LIMITS))
    try:
        handle = b.fw.handle

        def spoil_ver(frame):
            if frame == b"1VER\r" and not b.dev.faults.applied:
                b.dev.faults.inject("no_reply", 3)  # this reply and the next two: a plain query's three tries
            return handle(frame)

        b.fw.handle = spoil_ver
        b.drivers["pump"].connect()
        assert b.drivers["pump"].version == "NE1000V3.928" and b.fw.count(b"1VER") == 4
        assert b.dev.faults.applied == ["no_reply"] * 3
    finally:
        b.close()


def test_a_reply_from_another_address_is_a_protocol_error(bench):
    handle = bench.fw.handle
    bench.fw.handle = lambda frame: (handle(frame) or b"").replace(b"\x0201", b"\x0207", 1)
    with pytest.raises(ProtocolError, match="address 7, not 1"):
        bench.pump.stop()
    assert bench.fw.count(b"1STP") == 3, "a garbled reply to an idempotent STP is retried"


# --- generic faults ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["no_reply", "partial", "late", "corrupt", "noise", "disconnect"])
def test_a_spoiled_reply_to_a_query_is_retried(bench, kind):
    statuses = bench.fw.count(b"1\r")
    bench.dev.faults.inject(kind)  # spoils the status query that opens the dispense
    assert bench.pump.dispense(20.0, 100.0) == pytest.approx(20.0)
    assert bench.dev.faults.applied == [kind]
    assert bench.fw.count(b"1\r") == statuses + 2
    assert bench.fw.count(b"1RUN") == 1


@pytest.mark.parametrize("kind", ["no_reply", "partial", "late", "corrupt", "noise", "disconnect"])
def test_a_lost_reply_to_run_is_never_answered_with_a_second_run(bench, kind, caplog):
    on_run(bench, lambda frame: bench.dev.faults.inject(kind))
    with caplog.at_level(logging.WARNING, logger="instruments.new_era"):
        assert bench.pump.dispense(100.0, 100.0) == pytest.approx(100.0)
    assert bench.dev.faults.applied == [kind]
    assert bench.fw.count(b"1RUN") == 1
    assert "reply to RUN lost" in caplog.text
    assert bench.dispensed() == [{"volume_ul": 100.0, "reagent": "FAPbI3", "direction": "infuse"}]


def test_a_run_the_pump_never_saw_is_reported_as_not_started(bench):
    on_run(bench, lambda frame: True)  # the RUN is lost on the way: the pump does not start
    with pytest.raises(DeviceError, match="did not start") as info:
        bench.pump.dispense(100.0, 100.0)
    assert info.value.code == "not_started" and not info.value.effect_unknown
    assert bench.fw.count(b"1RUN") == 1 and bench.dispensed() == []


def test_silence_after_run_leaves_the_effect_unknown(bench):
    bench.transport.settings = SerialSettings(timeout_s=0.1, reopen_attempts=1, reopen_backoff_s=0.01)
    on_run(bench, lambda frame: bench.dev.faults.inject("no_reply", count=50))
    with pytest.raises((InstrumentTimeout, ConnectionLost)) as info:
        bench.pump.dispense(100.0, 100.0)
    assert info.value.effect_unknown
    assert bench.fw.count(b"1RUN") == 1
    assert bench.fw.count(b"1STP") >= 1, "it tried to stop the pump"
