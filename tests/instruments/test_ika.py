"""The IKA NAMUR driver against its byte-level simulator on a real pseudo-terminal."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from instruments.errors import DeviceError, InstrumentError, InstrumentTimeout, LimitError, ProtocolError
from instruments.ika import (
    SPEC,
    IkaHotplate,
    format_command,
    format_set_speed,
    format_set_temperature,
    format_watchdog,
    parse_name,
    parse_reading,
    parse_watchdog_echo,
)
from instruments.transport import SerialSettings, Transcript, Transport
from simulators.clock import VirtualClock
from simulators.faults import FaultPlan
from simulators.firmware.ika import IkaFirmware, make_firmware
from simulators.lab import SimLab
from simulators.serial_device import PtyDevice

# A pty carries bytes, not bits: this kernel refuses 7E1 on a pty, so tests use 8N1 (the firmware is ASCII).
FAST = SerialSettings(timeout_s=0.3, reopen_backoff_s=0.05, reopen_attempts=8)
LIMITS = IkaHotplate.Limits(max_temp_c=200.0, max_stir_rpm=1000.0)


class Bench:
    """A simulated hotplate on a pty, a transport with a transcript, and the driver (connected)."""

    def __init__(self, tmp_path, firmware_cls=IkaFirmware, **options):
        self.lab = SimLab(VirtualClock(), seed=1)
        if firmware_cls is IkaFirmware:
            self.fw = make_firmware("hotplate", IkaHotplate.Options(**options), LIMITS, self.lab)
        else:
            self.fw = firmware_cls("hotplate", self.lab)
        link = tmp_path / "serial/by-id/usb-IKA_RCT_digital-if00"
        self.dev = PtyDevice(self.fw, link=link, faults=FaultPlan(late_s=0.5, down_s=0.1))
        self.transcript = Transcript()
        self.options = IkaHotplate.Options(**options)
        self.dev.start()
        self.transport = Transport(self.dev.port, FAST, name="hotplate", transcript=self.transcript)
        self.driver = IkaHotplate(self.transport, name="hotplate", limits=LIMITS, options=self.options, clock=self.lab.clock)

    def events(self, kind):
        return [e.data for e in self.lab.events if e.kind == kind]

    def close(self):
        self.transport.close()
        self.dev.stop()


@pytest.fixture
def bench(tmp_path):
    b = Bench(tmp_path)
    b.driver.connect()
    yield b
    b.close()


@pytest.fixture
def quiet(tmp_path):
    """Watchdog off: one action, one query, so a fault hits the query under test."""
    b = Bench(tmp_path, watchdog_s=0)
    b.driver.connect()
    yield b
    b.close()


# --- pure protocol functions ---------------------------------------------------------------------


def test_formats_are_the_namur_bytes():
    assert format_set_temperature(150) == b"OUT_SP_1 150.0\r\n"
    assert format_set_temperature(72.25) == b"OUT_SP_1 72.2\r\n" or format_set_temperature(72.25) == b"OUT_SP_1 72.3\r\n"
    assert format_set_speed(299.6) == b"OUT_SP_4 300\r\n"
    assert format_watchdog(30) == b"OUT_WD1@30\r\n"
    assert format_command("START_1") == b"START_1\r\n"
    with pytest.raises(ValueError):
        format_command("IN_PV_1\r\nSTART_1")


def test_parsers_read_known_frames():
    assert parse_reading(b"25.3 1\r\n") == (25.3, 1)
    assert parse_reading(b"150.0 2 \r\n") == (150.0, 2)  # the manual's "blank CR LF"
    assert parse_reading(b"300 4\r\n") == (300.0, 4)
    assert parse_reading(b"-100.0 1\r\n") == (-100.0, 1)
    assert parse_name(b"RCT digital\r\n") == "RCT digital"
    assert parse_watchdog_echo(b"30\r\n") == 30.0
    assert parse_watchdog_echo(b"30.0\r\n") == 30.0
    with pytest.raises(DeviceError) as info:
        parse_reading(b"ER 2\r\n")
    assert info.value.code == "ER 2"
    for bad in (b"25.3\r\n", b"25.3 1", b"abc 1\r\n", b"\r\n", b"25.3 1\x00\r\n", b"\xff\r\n"):
        with pytest.raises(ProtocolError):
            parse_reading(bad)


@settings(max_examples=200, deadline=None)
@given(
    st.binary(max_size=40)
    | st.binary(max_size=30).map(lambda b: b + b"\r\n")
    | st.text(alphabet="0123456789.-+ ER\t_", max_size=14).map(lambda s: s.encode() + b"\r\n")
)
def test_parsers_raise_only_instrument_errors(frame):
    for parse in (parse_reading, parse_name, parse_watchdog_echo):
        try:
            parse(frame)
        except InstrumentError:
            pass


def test_spec_has_the_factory_line_settings():
    line = (SPEC.serial.baudrate, SPEC.serial.bytesize, SPEC.serial.parity, SPEC.serial.stopbits)
    assert (SPEC.kind, line, SPEC.firmware) == ("ika_namur", (9600, 7, "E", 1), "simulators.firmware.ika:make_firmware")


def test_options_refuse_a_watchdog_outside_the_device_range():
    with pytest.raises(ValidationError, match="watchdog_s"):
        IkaHotplate.Options(watchdog_s=10)
    with pytest.raises(ValidationError, match="poll_s"):
        IkaHotplate.Options(watchdog_s=20, poll_s=15)
    with pytest.raises(ValidationError):
        IkaHotplate.Limits()  # max_temp_c is required


# --- connect and actions -------------------------------------------------------------------------


def test_connect_resets_reads_the_safety_temperature_and_arms_the_watchdog(bench):
    assert bench.driver.device_name == "RCT digital"
    assert bench.driver.safety_temp_c == 350.0
    assert bench.fw.watchdog_s == 30
    assert bench.transcript.written().startswith(b"RESET\r\nSTOP_1\r\nSTOP_4\r\nIN_NAME\r\nIN_SP_3\r\nOUT_WD1@30\r\n")


def test_set_temperature_reads_back_starts_the_heater_and_the_plate_follows(bench):
    assert bench.driver.set_temperature(150.0) == 150.0
    assert bench.fw.heating and bench.fw.setpoint_c == 150.0
    assert bench.events("heater")[-1] == {"setpoint_c": 150.0, "on": True}
    written = bench.transcript.written()
    assert written.index(b"OUT_SP_1 150.0") < written.index(b"IN_SP_1") < written.index(b"START_1")
    temp = bench.driver.wait_for_temperature(tolerance_c=2.0)
    assert abs(temp - 150.0) <= 2.0
    # A first-order lag from 22 °C reaches 148 °C after tau * ln(128 / 2) = 250 s.
    assert 230.0 <= bench.lab.clock.now_s() <= 262.0
    assert not bench.fw.tripped, "polling kept the watchdog fed through a 250 s wait"
    assert bench.fw.count(b"OUT_WD1@30") > 100, "re-armed at every poll, as the stricter reading of the manual needs"


def test_heat_off_records_and_the_plate_cools(bench):
    bench.driver.set_temperature(120.0)
    bench.driver.wait_for_temperature()
    bench.driver.heat_off()
    assert not bench.fw.heating
    assert bench.events("heater")[-1] == {"setpoint_c": 120.0, "on": False}
    bench.driver.hold(180.0)
    assert bench.driver.read_temperature() < 30.0


def test_stirring_set_read_back_and_off(bench):
    assert bench.driver.set_stir_rate(400) == 400.0
    assert bench.fw.stirring and bench.fw.speed_rpm == 400
    assert bench.events("stirrer")[-1] == {"rpm": 400.0, "on": True}
    bench.driver.stir_off()
    assert not bench.fw.stirring
    assert bench.events("stirrer")[-1] == {"rpm": 400.0, "on": False}
    bench.driver.set_stir_rate(300)
    bench.driver.set_stir_rate(0)
    assert not bench.fw.stirring


def test_hold_keeps_the_watchdog_fed_and_detects_drift(bench):
    bench.driver.set_temperature(100.0)
    bench.driver.wait_for_temperature(tolerance_c=1.0)
    bench.driver.hold(600.0, tolerance_c=3.0)
    assert not bench.fw.tripped and bench.fw.heating
    bench.fw.tau_s = 1.0
    bench.fw.setpoint_c = 50.0  # someone turned the knob: the plate leaves the band
    with pytest.raises(DeviceError) as info:
        bench.driver.hold(60.0, tolerance_c=3.0)
    assert info.value.code == "drift"


def test_wait_times_out_when_the_plate_cannot_get_there(bench):
    bench.fw.tau_s = 1e6
    bench.driver.set_temperature(150.0)
    with pytest.raises(InstrumentTimeout, match="not within"):
        bench.driver.wait_for_temperature(timeout_s=60.0)
    assert 60.0 <= bench.lab.clock.now_s() <= 62.0


def test_waiting_with_the_heater_off_is_an_error(bench):
    with pytest.raises(InstrumentError, match="heater is off"):
        bench.driver.wait_for_temperature()


def test_actions_before_connect_send_nothing(tmp_path):
    b = Bench(tmp_path)
    try:
        with pytest.raises(InstrumentError, match="not connected"):
            b.driver.read_temperature()
        assert b.transcript.written() == b""
    finally:
        b.close()


# --- limits: refused before a byte is sent ---------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "kwargs", "match"),
    [
        ("set_temperature", {"temp_c": 201.0}, "exceeds the limit 200"),
        ("set_temperature", {"temp_c": -5.0}, "below"),
        ("set_temperature", {"temp_c": math.nan}, "finite"),
        ("set_temperature", {"temp_c": "hot"}, "finite"),
        ("set_stir_rate", {"rpm": 1001.0}, "exceeds the limit 1000"),
        ("wait_for_temperature", {"tolerance_c": 0.0}, "below"),
    ],
)
def test_limit_violations_send_zero_bytes(bench, action, kwargs, match):
    before = bench.transcript.written()
    with pytest.raises(LimitError, match=match):
        bench.driver.perform(action, kwargs)
    with pytest.raises(LimitError):
        getattr(bench.driver, action)(**kwargs)
    assert bench.transcript.written() == before


def test_the_devices_safety_temperature_caps_the_set_point(tmp_path):
    b = Bench(tmp_path)
    b.fw.safety_temp_c = 120.0
    try:
        b.driver.validate("set_temperature", {"temp_c": 150.0})  # before connect only max_temp_c is known
        b.driver.connect()
        before = b.transcript.written()
        with pytest.raises(LimitError, match="safety temperature 120"):
            b.driver.set_temperature(150.0)
        assert b.transcript.written() == before
        assert b.driver.set_temperature(120.0) == 120.0
    finally:
        b.close()


def test_a_set_point_the_device_ignores_is_caught_by_the_read_back(bench):
    bench.fw.safety_temp_c = 100.0  # lowered on the device after connect: it keeps its old set point
    with pytest.raises(DeviceError, match="reads back 0") as info:
        bench.driver.set_temperature(150.0)
    assert info.value.code == "setpoint"
    assert bench.fw.count(b"START_1") == 0 and not bench.fw.heating


# --- the watchdog --------------------------------------------------------------------------------


def test_silence_longer_than_the_watchdog_trips_it_and_the_next_action_says_so(bench):
    bench.driver.set_temperature(150.0)
    bench.driver.set_stir_rate(200)
    bench.lab.clock.advance(45.0)  # the orchestrator went quiet
    with pytest.raises(DeviceError, match="watchdog expired") as info:
        bench.driver.read_temperature()
    assert info.value.code == "watchdog"
    trip = [e for e in bench.events("heater") if e.get("watchdog")]
    assert trip == [{"setpoint_c": 150.0, "on": False, "watchdog": True, "tripped_at_s": 30.0}]
    assert not bench.fw.heating and not bench.fw.stirring
    assert not bench.fw.tripped and bench.fw.watchdog_s == 30, "reset and re-armed"
    assert bench.driver.read_temperature() > 22.0  # usable again


def test_keepalive_prevents_the_trip(bench):
    bench.driver.set_temperature(80.0)
    sent = bench.fw.count(b"OUT_WD1@30")
    for _ in range(6):
        bench.lab.clock.advance(25.0)
        bench.driver.keepalive()
    assert bench.fw.count(b"OUT_WD1@30") == sent + 6
    assert not bench.fw.tripped and bench.fw.heating


def test_an_er2_reply_while_heating_is_a_watchdog_error(bench):
    bench.driver.set_temperature(90.0)
    bench.fw.trip_watchdog()
    with pytest.raises(DeviceError, match="ER 2") as info:
        bench.driver.read_temperature()
    assert info.value.code == "watchdog"
    assert bench.fw.count(b"RESET") == 2 and not bench.fw.tripped


def test_a_trip_while_idle_is_cleared_without_an_error(bench):
    bench.fw.trip_watchdog()
    assert bench.driver.read_temperature() == pytest.approx(22.0, abs=0.5)
    assert not bench.fw.tripped


# --- device errors -------------------------------------------------------------------------------


def test_unplugged_external_sensor_is_a_sensor_error(tmp_path):
    b = Bench(tmp_path, control_sensor="external")
    try:
        b.driver.connect()
        assert b.driver.read_temperature() == pytest.approx(22.0, abs=0.5)
        b.fw.sensor_unplugged = True
        with pytest.raises(DeviceError, match="sensor error") as info:
            b.driver.read_temperature()
        assert info.value.code == "sensor"
        with pytest.raises(DeviceError, match="sensor error"):
            b.driver.connect()
    finally:
        b.close()


class WrongChannel(IkaFirmware):
    def handle(self, frame):
        reply = super().handle(frame)
        return b"25.0 1\r\n" if frame.startswith(b"IN_PV_2") else reply


def test_a_reply_for_another_channel_is_a_protocol_error(tmp_path):
    b = Bench(tmp_path, firmware_cls=WrongChannel, watchdog_s=0)
    try:
        b.driver.connect()
        with pytest.raises(ProtocolError, match="channel 1, not 2"):
            b.driver.read_temperature()
    finally:
        b.close()


# --- generic faults ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["no_reply", "partial", "late", "corrupt", "noise", "disconnect"])
def test_a_spoiled_reply_to_a_query_is_retried(quiet, kind):
    quiet.dev.faults.inject(kind)
    temp = quiet.driver.read_temperature()
    assert temp == pytest.approx(22.0, abs=0.5)
    assert quiet.dev.faults.applied == [kind]
    assert quiet.fw.count(b"IN_PV_2") == 2, "one retry"


@pytest.mark.parametrize("kind", ["no_reply", "corrupt", "disconnect"])
def test_a_spoiled_read_back_repeats_the_query_not_the_set_point(quiet, kind):
    quiet.dev.faults.inject(kind)
    assert quiet.driver.set_temperature(60.0) == 60.0
    assert quiet.fw.count(b"OUT_SP_1") == 1 and quiet.fw.count(b"START_1") == 1
    assert quiet.fw.count(b"IN_SP_1") == 3, "the read-back twice, then the check after START_1"
    assert quiet.fw.heating


def test_a_spoiled_watchdog_echo_is_retried(bench):
    sent = bench.fw.count(b"OUT_WD1@")
    bench.dev.faults.inject("corrupt")
    bench.driver.keepalive()
    assert bench.fw.count(b"OUT_WD1@") == sent + 2


def test_a_device_that_stops_answering_raises_a_timeout(quiet):
    quiet.dev.faults.inject("no_reply", count=3)
    with pytest.raises(InstrumentTimeout):
        quiet.driver.read_temperature()
    assert quiet.fw.count(b"IN_PV_2") == 3


# --- safe state ----------------------------------------------------------------------------------


def test_safe_state_switches_heater_and_motor_off(bench):
    bench.driver.set_temperature(150.0)
    bench.driver.set_stir_rate(500)
    bench.driver.safe_state()
    assert not bench.fw.heating and not bench.fw.stirring
    assert bench.events("heater")[-1] == {"setpoint_c": 150.0, "on": False}
    bench.driver.safe_state()  # already safe: no error
    assert bench.fw.count(b"STOP_1") == 3  # connect, and twice here


def test_safe_state_does_not_raise_when_the_device_is_gone(bench):
    bench.driver.set_temperature(150.0)
    bench.transport.settings = SerialSettings(timeout_s=0.2, reopen_attempts=1, reopen_backoff_s=0.01)
    bench.dev.stop()
    bench.driver.safe_state()  # logs, does not raise
    assert not bench.transport.is_open


def test_close_switches_off_and_leaves_the_watchdog_armed(bench):
    bench.driver.set_temperature(150.0)
    bench.driver.close()
    assert not bench.fw.heating
    assert bench.fw.watchdog_s == 30
