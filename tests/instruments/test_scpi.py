"""The Keithley 2400 driver against its byte-level simulator on a real pseudo-terminal."""


import logging
import time


import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from instruments.errors import DeviceError, InstrumentError, LimitError, ProtocolError
from instruments.scpi import (
    IDN,
    READ,
    SPEC,
    Keithley2400,
    format_command,
    format_compliance,
    format_output,
    format_source_voltage,
    format_voltage_range,
    parse_error,
    parse_idn,
    parse_number,
    parse_output_state,
    parse_read,
    sweep_voltages,
)
from instruments.transport import SerialSettings
from orchestrator.errors import ExperimentFailed
from simulators.firmware.scpi import make_firmware
from simulators.lab import SimLab
from tests.instruments.rig import serve

FAST = SerialSettings(timeout_s=0.3, reopen_backoff_s=0.05, reopen_attempts=8)
LIMITS = Keithley2400.Limits(max_voltage_v=2.0, max_current_a=0.02, max_points=81, max_settle_s=1.0)


def truth(conditions, rng):
    return {"band_gap_ev": 1.6, "pl_intensity": 50.0, "fwhm_nm": 30.0}


def no_film(conditions, rng):
    raise ExperimentFailed("the film did not form")


def make_rig(tmp_path, truth_fn=truth, limits=LIMITS, options=None, settings_=FAST):
    lab = SimLab(truth=truth_fn, sample_model=lambda history: {})
    options = options or Keithley2400.Options()
    return serve(
        tmp_path, make_firmware("smu", options, limits, lab), Keithley2400, name="smu", link="usb-Keithley_2400-if00",
        lab=lab, settings=settings_, limits=limits, options=options, connect=True,
    )


def settled(condition, timeout_s=1.0):
    """Waits for the simulator thread to act on a command that gets no reply."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


@pytest.fixture
def rig(tmp_path):
    r = make_rig(tmp_path)
    yield r
    r.drv.close()
    r.dev.stop()


def outputs(lab):
    return [e.data for e in lab.history if e.kind == "output"]


# --- pure protocol functions ---------------------------------------------------------------------


def test_formats_known_frames():
    assert format_command(IDN) == b"*IDN?\n"
    assert format_command(READ, "\r\n") == b":READ?\r\n"
    assert format_source_voltage(1.0) == b":SOUR:VOLT +1.000000E+00\n"
    assert format_source_voltage(-0.0123) == b":SOUR:VOLT -1.230000E-02\n"
    assert format_voltage_range(-5.0, "\r") == b":SOUR:VOLT:RANG +5.000000E+00\r"
    assert format_compliance(1e-3) == b":SENS:CURR:PROT +1.000000E-03\n"
    assert format_output(True) == b":OUTP ON\n" and format_output(False) == b":OUTP OFF\n"


def test_parses_known_frames():
    assert parse_read(b"+1.000000E+00,+2.345000E-03\n") == (1.0, 2.345e-3)
    assert parse_read(b"-5.000000E-01,-1.000000E-03\r\n") == (-0.5, -1e-3)
    assert parse_error(b'0,"No error"\n') == (0, "No error")
    assert parse_error(b'-222,"Parameter data out of range"\n') == (-222, "Parameter data out of range")
    assert parse_error(b'+803,"Not permitted with OUTPUT off"\n') == (803, "Not permitted with OUTPUT off")
    assert parse_number(b"+1.050000E-04\n") == pytest.approx(1.05e-4)
    assert parse_output_state(b"1\n") is True and parse_output_state(b"0\n") is False
    assert parse_idn(b"KEITHLEY INSTRUMENTS INC.,MODEL 2400,1234567,C30\n").startswith("KEITHLEY")
    with pytest.raises(DeviceError) as info:
        parse_read(b"+1.000000E+00,+9.910000E+37\n")
    assert info.value.code == "overflow"
    for bad in (b"+1.0E+00\n", b"+1.0E+00,+2.0E-03,+3.0\n", b"1,x\n", b"", b"\n", b"+1E999,0\n"):
        with pytest.raises(ProtocolError):
            parse_read(bad)
    for bad in (b"0,No error\n", b"abc\n", b'0,"No\x00"\n'):
        with pytest.raises(ProtocolError):
            parse_error(bad)
    with pytest.raises(ProtocolError):
        parse_output_state(b"ON\n")
    with pytest.raises(ProtocolError):
        parse_idn(b"KEITHLEY,MODEL 2400\n")


def test_sweep_voltages_include_both_ends():
    assert sweep_voltages(0.0, 1.0, 5) == (0.0, 0.25, 0.5, 0.75, 1.0)
    assert sweep_voltages(1.0, -1.0, 3) == (1.0, 0.0, -1.0)
    assert sweep_voltages(0.1, 0.7, 61)[-1] == 0.7


PARSERS = [parse_read, parse_error, parse_number, parse_output_state, parse_idn]
SCPI_ISH = st.text(alphabet='0123456789+-.,E"e NoKrR\r\n', max_size=60).map(str.encode)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=120), SCPI_ISH, SCPI_ISH.map(lambda b: b + b"\n")))
def test_parsers_raise_only_instrument_errors(frame):
    for parse in PARSERS:
        try:
            parse(frame)
        except InstrumentError:
            pass


# --- actions -------------------------------------------------------------------------------------


def test_connect_resets_and_configures(rig):
    assert rig.drv.identify().startswith("KEITHLEY INSTRUMENTS INC.,MODEL 2400,")
    fw = rig.fw
    assert fw.count(b"*CLS") == 1 and fw.count(b"*RST") == 1
    assert fw.elements == ("VOLT", "CURR") and fw.sense == {"CURR"} and fw.current_autorange
    assert not fw.output_on and not fw.errors
    assert SPEC.kind == "scpi_smu" and SPEC.serial.baudrate == 9600 and SPEC.driver is Keithley2400


def test_connect_refuses_another_instrument(tmp_path, monkeypatch):
    monkeypatch.setattr("simulators.firmware.scpi.MODEL", "MODEL 6485")
    with pytest.raises(ProtocolError, match="not a Keithley 2400"):
        make_rig(tmp_path)


def test_source_voltage_measure_and_output_off(rig):
    rig.drv.source_voltage(0.5, 0.01)
    fw = rig.fw
    assert fw.output_on and fw.source_v == 0.5 and fw.compliance_a == 0.01 and fw.range_v == 2.1
    assert outputs(rig.lab)[-1] == {"on": True, "voltage_v": 0.5, "compliance_a": 0.01}
    volts, amps = rig.drv.measure()
    assert volts == 0.5
    assert amps == pytest.approx(rig.lab.current_a(0.5), rel=1e-3)
    rig.drv.source_voltage(0.1, 0.01)  # lower level: the level goes first, then the smaller range
    assert fw.source_v == 0.1 and fw.range_v == 0.21 and not fw.errors
    rig.drv.output_off()
    assert not fw.output_on and outputs(rig.lab)[-1]["on"] is False


def test_iv_sweep_crosses_zero_at_the_open_circuit_voltage(rig):
    lo, hi = 0.0, 2.0  # Voc from the world's own diode model, by bisection
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if rig.lab.current_a(mid) < 0 else (lo, mid)
    voc = (lo + hi) / 2
    assert 0.8 < voc < 1.2
    curve = rig.drv.iv_sweep(0.0, 1.2, 61, 0.005, settle_s=0.01)
    assert len(curve.voltage_v) == 61 and curve.compliance_a == 0.005
    assert curve.voltage_v[0] == 0.0 and curve.voltage_v[-1] == pytest.approx(1.2)
    k = next(i for i, amps in enumerate(curve.current_a) if amps > 0)
    v0, v1, i0, i1 = curve.voltage_v[k - 1], curve.voltage_v[k], curve.current_a[k - 1], curve.current_a[k]
    crossing = v0 - i0 * (v1 - v0) / (i1 - i0)
    assert crossing == pytest.approx(voc, abs=0.01)
    assert curve.current_a[0] == pytest.approx(-1e-3, rel=0.01)  # the photocurrent at short circuit
    assert max(abs(i) for i in curve.current_a) <= 0.005 and curve.current_a[-1] == 0.005  # held at compliance
    assert not rig.fw.output_on and outputs(rig.lab)[-1]["on"] is False
    assert rig.lab.clock.now_s() == pytest.approx(61 * 0.01)  # settling waited on the virtual clock
    assert rig.fw.count(b":READ?") == 61


def test_iv_sweep_on_a_failed_film_is_an_open_circuit(tmp_path):
    r = make_rig(tmp_path, truth_fn=no_film)
    try:
        curve = r.drv.iv_sweep(-1.0, 1.0, 5, 0.001)
    finally:
        r.dev.stop()
    assert all(abs(i) < 1e-8 for i in curve.current_a)


def test_terminator_option_is_used_both_ways(tmp_path):
    r = make_rig(tmp_path, options=Keithley2400.Options(terminator="\r\n"))
    try:
        r.drv.source_voltage(0.2, 0.001)
        assert r.drv.measure()[0] == 0.2
    finally:
        r.dev.stop()
    assert b":READ?\r\n" in r.transcript.written() and r.fw.rx_end == b"\r\n"


# --- limits: refused before any byte -------------------------------------------------------------


@pytest.mark.parametrize("action, kwargs", [
    ("source_voltage", {"voltage_v": 2.5, "compliance_a": 0.001}),
    ("source_voltage", {"voltage_v": -2.5, "compliance_a": 0.001}),
    ("source_voltage", {"voltage_v": float("nan"), "compliance_a": 0.001}),
    ("source_voltage", {"voltage_v": 1.0, "compliance_a": 0.05}),
    ("source_voltage", {"voltage_v": 1.0, "compliance_a": 0.0}),
    ("source_voltage", {"voltage_v": "1", "compliance_a": 0.001}),
    ("iv_sweep", {"start_v": 0.0, "stop_v": 2.1, "points": 11, "compliance_a": 0.001}),
    ("iv_sweep", {"start_v": -3.0, "stop_v": 1.0, "points": 11, "compliance_a": 0.001}),
    ("iv_sweep", {"start_v": 0.0, "stop_v": 1.0, "points": 82, "compliance_a": 0.001}),
    ("iv_sweep", {"start_v": 0.0, "stop_v": 1.0, "points": 1, "compliance_a": 0.001}),
    ("iv_sweep", {"start_v": 0.0, "stop_v": 1.0, "points": 5.0, "compliance_a": 0.001}),
    ("iv_sweep", {"start_v": 0.0, "stop_v": 1.0, "points": 11, "compliance_a": 0.03}),
    ("iv_sweep", {"start_v": 0.0, "stop_v": 1.0, "points": 11, "compliance_a": 0.001, "settle_s": 2.0}),
    ("iv_sweep", {"start_v": 0.0, "stop_v": 1.0, "points": 11, "compliance_a": 0.001, "settle_s": -0.1}),
    ("measure", {"volts": 1.0}),
    ("reset", {}),
])
def test_limit_violation_sends_nothing(rig, action, kwargs):
    before = rig.transcript.written()
    with pytest.raises(LimitError):
        rig.drv.perform(action, kwargs)
    if hasattr(rig.drv, action):
        with pytest.raises((LimitError, TypeError)):
            getattr(rig.drv, action)(**kwargs)
    assert rig.transcript.written() == before
    assert not rig.fw.output_on


# --- device errors -------------------------------------------------------------------------------


def test_interlock_open_refuses_output_with_802(rig):
    rig.fw.open_interlock()
    with pytest.raises(DeviceError) as info:
        rig.drv.source_voltage(0.5, 0.001)
    assert info.value.code == "802" and "interlock" in str(info.value)
    assert not rig.fw.output_on and not rig.fw.errors  # the queue was drained
    rig.fw.close_interlock()
    rig.drv.source_voltage(0.5, 0.001)
    assert rig.fw.output_on


def test_read_with_output_off_is_803_not_a_timeout(rig):
    rig.drv.source_voltage(0.5, 0.001)
    rig.fw.open_interlock()  # the fixture lid lifted: the 2400 turns the output off
    with pytest.raises(DeviceError) as info:
        rig.drv.measure()
    assert info.value.code == "803"
    assert rig.fw.count(b":READ?") == 1, "not re-read once the queue explained the silence"


def test_sweep_stops_and_turns_output_off_when_the_interlock_trips(rig):
    rig.fw.trip_interlock_after_reads = 3
    with pytest.raises(DeviceError) as info:
        rig.drv.iv_sweep(0.0, 1.0, 11, 0.005)
    assert info.value.code == "803"
    assert rig.fw.count(b":READ?") == 4
    assert settled(lambda: rig.fw.count(b":OUTP OFF") == 1), "the output is turned off on the error"
    assert not rig.fw.output_on


def test_prefilled_error_queue_is_reported_and_drained(rig):
    rig.fw.queue_error(-221, "Settings conflict")
    rig.fw.queue_error(-113, "Undefined header")
    with pytest.raises(DeviceError) as info:
        rig.drv.source_voltage(0.5, 0.001)
    assert info.value.code == "-221" and "-113" in str(info.value)
    assert not rig.fw.errors
    assert rig.fw.count(b":OUTP ON") == 0, "never energized with a refused configuration"


def test_value_beyond_the_instruments_range_is_222(tmp_path):
    r = make_rig(tmp_path, limits=Keithley2400.Limits(max_voltage_v=500.0, max_current_a=2.0))
    try:
        with pytest.raises(DeviceError) as info:
            r.drv.source_voltage(300.0, 0.001)
        assert info.value.code == "-222"
        with pytest.raises(DeviceError) as info:
            r.drv.source_voltage(1.0, 1.5)
        assert info.value.code == "-222" and r.fw.count(b":OUTP ON") == 0 and r.fw.compliance_a == 0.001
    finally:
        r.dev.stop()


def test_firmware_queues_scpi_errors_and_parses_long_forms(rig):
    t = rig.transport
    t.send(b":SOUR:VOLTS 1\n")
    t.send(b":sense:current:protection 2e-3;:SOURce1:VOLTage:LEVel:IMMediate:AMPLitude 0.25\n")
    assert t.query(b":SYST:ERR?\n", end=b"\n", parse=parse_error) == (-113, "Undefined header")
    assert t.query(b":SYST:ERR?\n", end=b"\n", parse=parse_error) == (0, "No error")
    assert rig.fw.compliance_a == 2e-3 and rig.fw.source_v == 0.25
    for _ in range(12):
        t.send(b":BOGUS\n")
    codes = [t.query(b":SYST:ERR?\n", end=b"\n", parse=parse_error)[0] for _ in range(11)]
    assert codes == [-113] * 9 + [-350, 0]


# --- generic faults ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["no_reply", "partial", "late", "corrupt", "noise", "disconnect"])
def test_read_recovers_from_each_reply_fault(rig, kind):
    rig.drv.source_voltage(0.5, 0.01)
    rig.dev.faults.inject(kind)
    volts, amps = rig.drv.measure()
    assert volts == 0.5 and amps == pytest.approx(rig.lab.current_a(0.5), rel=1e-3)
    assert rig.dev.faults.applied == [kind]
    assert rig.fw.count(b":READ?") == 2, "one more reading after the queue showed no error"
    if kind == "disconnect":
        assert rig.dev.disconnects == 1 and rig.transport.reopens == 1


@pytest.mark.parametrize("kind", ["no_reply", "partial", "disconnect"])
def test_identify_recovers_from_reply_faults(rig, kind):
    rig.dev.faults.inject(kind)
    assert rig.drv.identify().startswith("KEITHLEY")
    assert rig.fw.count(b"*IDN?") == 3


# "corrupt" is left out here: a flipped byte in the message text can still read as a valid entry.
@pytest.mark.parametrize("kind", ["no_reply", "partial", "late", "noise", "disconnect"])
def test_lost_error_queue_reply_is_not_resent_blindly(rig, kind, caplog):
    """:SYST:ERR? pops an entry: a lost reply is a lost entry; the transport must not resend it."""
    rig.fw.queue_error(-113, "Undefined header")
    rig.fw.queue_error(-222, "Parameter data out of range")
    sent = rig.fw.count(b":SYST:ERR?")
    rig.dev.faults.inject(kind)
    with caplog.at_level(logging.WARNING, logger="instruments.scpi"):
        with pytest.raises(DeviceError) as info:
            rig.drv.source_voltage(0.5, 0.001)
    assert info.value.code == "-222", "the entry whose reply was lost is gone; the next one is reported"
    assert rig.fw.count(b":SYST:ERR?") - sent == 3  # lost, -222, empty: one query per entry
    assert "lost" in caplog.text
    assert rig.fw.count(b":OUTP ON") == 0


def test_lost_empty_queue_reply_with_good_readbacks_succeeds(rig, caplog):
    rig.dev.faults.inject("no_reply")  # the first :SYST:ERR? reply after the configuration
    with caplog.at_level(logging.WARNING, logger="instruments.scpi"):
        rig.drv.source_voltage(0.5, 0.001)
    assert rig.fw.output_on and "lost" in caplog.text


# --- safe state ----------------------------------------------------------------------------------


def test_safe_state_turns_output_off_and_zeroes_the_source(rig):
    rig.drv.source_voltage(1.5, 0.01)
    rig.drv.safe_state()
    assert not rig.fw.output_on and rig.fw.source_v == 0.0
    rig.drv.safe_state()  # already safe: no error
    assert not rig.fw.errors


def test_safe_state_does_not_raise_when_the_instrument_is_gone(tmp_path, caplog):
    r = make_rig(tmp_path, settings_=SerialSettings(timeout_s=0.2, reopen_backoff_s=0.02, reopen_attempts=2))
    r.drv.source_voltage(0.5, 0.001)
    r.dev.stop()
    with caplog.at_level(logging.ERROR, logger="instruments.scpi"):
        r.drv.safe_state()  # logs, does not raise
    assert "safe state" in caplog.text and "cannot confirm the output is off" in caplog.text
    assert not r.transport.is_open
