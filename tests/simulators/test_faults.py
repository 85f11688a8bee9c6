"""Device faults (``device_error``, ``bad_value``) as each firmware shows them in its own protocol, on real
pseudo-terminals through the unchanged drivers: the driver raises a typed InstrumentError, or recovers by
asking a query again, and never hands a NaN or impossible number on. Then the same faults at the loop
level: the experiment they hit is recorded ``failed`` with a reason naming the cause."""

from __future__ import annotations

import math
import time

import pytest
import yaml

import simulators.bench as bench_module
from instruments.errors import DeviceError, InstrumentError, ProtocolError
from orchestrator.backends import open_backend
from orchestrator.campaign import load_campaign
from orchestrator.ledger import Ledger
from orchestrator.loop import CampaignRunner, run_loop
from simulators.faults import DEVICE_KINDS, FAULT_KINDS, SOAK_KINDS, FaultPlan
from simulators.firmware.ika import IkaFirmware
from tests.conftest import REPO
from tests.instruments import test_gcode, test_ika, test_line, test_new_era, test_scpi, test_spectrometer

# --- the plan ------------------------------------------------------------------------------------------


def test_soak_mix_draws_every_kind_and_device_faults_wait_for_a_command_that_can_show_them():
    assert set(SOAK_KINDS) == set(FAULT_KINDS) and abs(sum(SOAK_KINDS.values()) - 1.0) < 1e-9
    plan = FaultPlan()
    plan.inject("bad_value")
    assert plan.device_fault(lambda kind: None) is None  # a command that cannot show it
    assert plan.deliver(b"ok\r\n").data == b"ok\r\n" and plan.applied == []  # the line leaves it alone
    assert plan.device_fault(lambda kind: f"{kind}!".encode()) == b"bad_value!"
    assert plan.applied == ["bad_value"] and plan.device_fault(lambda kind: b"x") is None  # used up


def test_random_device_faults_come_at_the_rate_and_leave_line_faults_where_they_were():
    express = lambda kind: kind.encode()  # noqa: E731
    plan = FaultPlan(rate=0.5, kinds={"device_error": 1.0, "bad_value": 1.0, "no_reply": 2.0}, seed=4)
    shown = [plan.device_fault(express) for _ in range(4000)]
    assert 0.2 < sum(s is not None for s in shown) / 4000 < 0.3  # half the rate: half the weight is line faults
    assert {s for s in shown if s} == {b"device_error", b"bad_value"}
    line_only = FaultPlan(rate=0.3, kinds=("no_reply", "corrupt"), seed=9)
    mixed = FaultPlan(rate=0.3, kinds=("no_reply", "corrupt"), seed=9)
    for _ in range(200):
        mixed.device_fault(express)  # no device kinds: draws nothing, so the line stream is unchanged
    assert [line_only.deliver(b"abc\n").data for _ in range(300)] == [mixed.deliver(b"abc\n").data for _ in range(300)]


@pytest.mark.parametrize("weights", [{"device_error": -1.0}, {"bad_value": math.inf}, {"no_reply": 0.0}])
def test_bad_weights_are_refused(weights):
    with pytest.raises(ValueError, match="weights"):
        FaultPlan(rate=0.1, kinds=weights)


# --- per firmware, through the driver ----------------------------------------------------------------


@pytest.fixture
def pump(tmp_path):
    b = test_new_era.Bench(tmp_path, ("pump", test_new_era.OPTIONS, test_new_era.LIMITS))
    b.pump = b.drivers["pump"]
    b.pump.connect()
    yield b
    b.close()


def test_pump_alarm_fails_the_dispense_before_run(pump):
    pump.dev.faults.inject("device_error")
    with pytest.raises(DeviceError) as info:
        pump.pump.dispense(50.0, 100.0)
    assert info.value.code == "A?S" and "stalled" in str(info.value) and info.value.instrument == "pump"
    assert pump.fw.count(b"1RUN") == 0 and pump.dispensed() == []
    assert pump.pump.dispense(50.0, 100.0) == pytest.approx(50.0)  # the alarm was reported once


def test_pump_alarm_in_place_of_the_run_reply_is_asked_about_not_resent(pump):
    handle = pump.fw.handle

    def stall_on_run(frame):  # aims the fault at RUN: the plan spoils the next command that can show it
        if frame.startswith(b"1RUN"):
            pump.dev.faults.inject("device_error")
            return pump.fw.answer(frame)
        return handle(frame)

    pump.fw.handle = stall_on_run
    with pytest.raises(DeviceError) as info:
        pump.pump.dispense(50.0, 100.0)
    assert info.value.code == "not_started" and not info.value.effect_unknown, info.value
    assert pump.fw.count(b"1RUN") == 1 and pump.dev.faults.applied == ["device_error"]


def test_a_pump_measures_nothing_so_a_bad_value_waits(pump):
    pump.dev.faults.inject("bad_value")
    assert pump.pump.dispense(20.0, 100.0) == pytest.approx(20.0)
    assert pump.dev.faults.applied == []


@pytest.fixture
def hotplate(tmp_path):
    b = test_ika.Bench(tmp_path, watchdog_s=0)
    b.driver.connect()
    yield b
    b.close()


def test_hotplate_error_code_is_a_device_error_and_the_heater_goes_off(hotplate):
    hotplate.driver.set_temperature(120.0)
    hotplate.dev.faults.inject("device_error")
    with pytest.raises(DeviceError) as info:
        hotplate.driver.read_temperature()
    assert info.value.code == "ER 3" and info.value.instrument == "hotplate"
    assert not hotplate.fw.heating and hotplate.events("heater")[-1]["on"] is False


def test_hotplate_impossible_reading_is_asked_again(hotplate):
    hotplate.dev.faults.inject("bad_value")
    temp = hotplate.driver.read_temperature()
    assert math.isfinite(temp) and 0 < temp < 100
    assert hotplate.fw.count(b"IN_PV_2") == 2 and hotplate.dev.faults.applied == ["bad_value"]


def test_hotplate_reading_that_stays_impossible_is_a_protocol_error(hotplate):
    hotplate.dev.faults.inject("bad_value", 3)  # nan, 9999.9, -999.9: every try
    with pytest.raises(ProtocolError, match=r"-999.9 °C .* outside"):
        hotplate.driver.read_temperature()
    assert hotplate.fw.count(b"IN_PV_2") == 3


def test_external_sensor_nan_is_never_a_temperature(tmp_path):
    b = test_ika.Bench(tmp_path, IkaFirmware, watchdog_s=0, control_sensor="external")
    try:
        b.driver.connect()
        b.dev.faults.inject("bad_value", 3)
        with pytest.raises(InstrumentError):
            b.driver.read_temperature()
    finally:
        b.close()


@pytest.fixture
def spec(tmp_path):
    r = test_spectrometer.make_rig(tmp_path)
    yield r
    r.drv.close()
    r.dev.stop()


def test_spectrometer_error_line_is_a_device_error(spec):
    spec.dev.faults.inject("device_error")
    with pytest.raises(DeviceError) as info:
        spec.drv.measure(integration_ms=100)
    assert info.value.code == "3" and "DETECTOR FAULT" in str(info.value) and info.value.instrument == "spec"
    assert spec.fw.count(b"MEAS?") == 1  # the device answered: not measured again


def test_spectrometer_nan_count_under_a_good_checksum_is_measured_again(spec):
    spec.dev.faults.inject("bad_value")
    spectrum = spec.drv.measure(integration_ms=100)
    assert spec.fw.count(b"MEAS?") == 2 and spec.dev.faults.applied == ["bad_value"]
    assert all(math.isfinite(c) and 0 <= c <= 65535 for c in spectrum.counts)


def test_spectrometer_bad_counts_every_time_fail_with_the_cause(spec):
    spec.dev.faults.inject("bad_value", 3)  # nan, -12, 70000
    with pytest.raises(ProtocolError, match="above 65535"):
        spec.drv.measure(integration_ms=100)
    assert spec.fw.count(b"MEAS?") == 3


@pytest.fixture
def smu(tmp_path):
    r = test_scpi.make_rig(tmp_path)
    yield r
    r.drv.close()
    r.dev.stop()


def test_smu_hardware_error_on_the_queue_fails_the_reading(smu):
    smu.drv.source_voltage(0.5, 0.01)
    smu.dev.faults.inject("device_error")
    with pytest.raises(DeviceError) as info:
        smu.drv.measure()
    assert info.value.code == "-240" and "Hardware error" in str(info.value)
    assert smu.fw.count(b":READ?") == 1  # the queue explained the silence: not read again


def test_smu_nan_and_impossible_currents_never_come_back_as_numbers(smu):
    smu.drv.source_voltage(0.5, 0.01)
    smu.dev.faults.inject("bad_value")  # +9.91E+37, the 2400's own NaN: the device said so
    with pytest.raises(DeviceError) as info:
        smu.drv.measure()
    assert info.value.code == "overflow"
    for _ in ("nan", "4200 A"):  # a garbled number: read again
        reads = smu.fw.count(b":READ?")
        smu.dev.faults.inject("bad_value")
        volts, amps = smu.drv.measure()
        assert math.isfinite(amps) and abs(amps) <= 0.01 and smu.fw.count(b":READ?") == reads + 2
    assert smu.dev.faults.applied == ["bad_value"] * 3


@pytest.fixture
def stage(tmp_path):
    r = test_gcode.make(tmp_path)
    r.drv.connect()
    yield r
    r.drv.close()
    r.dev.stop()


def test_stage_hard_limit_alarm_fails_the_move_and_is_not_resent(stage):
    stage.dev.faults.inject("device_error")
    with pytest.raises(DeviceError) as info:
        stage.drv.move_to(10, 10, 10)
    assert info.value.code == "ALARM:1" and "limit" in str(info.value)
    assert stage.fw.state == "Alarm" and stage.fw.count(b"G90") == 1
    with pytest.raises(DeviceError, match="home"):  # locked until homed, as GRBL is
        stage.drv.move_to(10, 10, 10)
    stage.drv.home()
    assert stage.drv.move_to(10, 10, 10) == pytest.approx((10, 10, 10))


@pytest.fixture
def board(tmp_path):
    r = test_line.make(tmp_path)
    r.drv.connect()
    yield r
    r.drv.close()
    r.dev.stop()


def test_rig_error_reply_is_a_device_error_and_a_nan_reading_is_asked_again(board):
    board.dev.faults.inject("device_error")
    with pytest.raises(DeviceError) as info:
        board.drv.call("dose", volume_ul=10)
    assert info.value.code == "fault" and board.fw.dosed_ul == 0.0  # refused, not carried out
    board.dev.faults.inject("bad_value")
    reply = board.drv.call("speed")
    assert reply == {"value": 0.0} and board.fw.count(b"GET") == 2


def test_device_kinds_are_the_new_ones():
    assert set(DEVICE_KINDS) == {"device_error", "bad_value"}


# --- at the loop level -------------------------------------------------------------------------------


def _run_one(tmp_path, monkeypatch, instrument: str, kind: str, count: int, on: bytes):
    """Runs one experiment of the hardware campaign on the simulated bench with ``count`` scripted ``kind``
    faults on ``instrument``'s port, from its first command starting with ``on``; returns the experiments."""
    data = yaml.safe_load((REPO / "campaigns" / "perovskite_film_hardware.yaml").read_text())
    data["budget"] = {"max_experiments": 1, "batch_size": 1, "initial_experiments": 1}
    path = tmp_path / "hw.yaml"
    path.write_text(yaml.safe_dump(data))
    campaign = load_campaign(path)
    original_start = bench_module.SimulatedBench.start

    def start(self):
        started = original_start(self)
        device = self.devices[campaign.instruments[instrument].port]
        answer = device.firmware.answer

        def aimed(frame):  # connecting does not meet the fault: the experiment's own command does
            if frame.startswith(on) and not getattr(aimed, "armed", False):
                aimed.armed = True
                device.faults.inject(kind, count)
            return answer(frame)

        device.firmware.answer = aimed
        return started

    monkeypatch.setattr(bench_module.SimulatedBench, "start", start)
    with Ledger.for_campaign(campaign, tmp_path) as ledger, open_backend(campaign, tmp_path, simulate=True) as backend:
        run_loop(CampaignRunner(campaign, ledger, backend))
        return ledger.experiments()


@pytest.mark.parametrize(
    ("instrument", "kind", "count", "on", "cause"),
    [
        ("spectrometer", "device_error", 1, b"MEAS?", "DETECTOR FAULT"),
        ("spectrometer", "bad_value", 3, b"MEAS?", "spectrum holds a count above 65535"),
        ("hotplate", "bad_value", 3, b"IN_PV_2", "outside -273.15..1000 °C"),
        ("hotplate", "device_error", 1, b"IN_PV_2", "ER 3"),
        ("pump_dmf", "device_error", 1, b"4RUN", "A?S: the motor stalled) and the pump is stopped with nothing pumped"),
        ("stage", "device_error", 1, b"G90", "ALARM:1"),
    ],
)
def test_an_experiment_hit_by_a_device_fault_fails_naming_the_cause(tmp_path, monkeypatch, instrument, kind, count, on, cause):
    t0 = time.perf_counter()
    (exp,) = _run_one(tmp_path, monkeypatch, instrument, kind, count, on)
    assert exp.state == "failed", (exp.state, exp.outcomes)
    assert cause in (exp.error or "") and instrument in (exp.error or ""), exp.error
    assert not any(isinstance(v, float) and not math.isfinite(v) for v in (exp.outcomes or {}).values())
    assert time.perf_counter() - t0 < 30
