"""The GRBL stage driver against its simulated controller on a real pseudo-terminal."""


import importlib
import time


import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from instruments.errors import DeviceError, InstrumentError, InstrumentTimeout, LimitError, ProtocolError
from instruments.gcode import SPEC, GcodeStage, format_home, format_move, parse_banner, parse_ok, parse_status
from instruments.transport import SerialSettings, Transport
from simulators.firmware.gcode import GrblFirmware, make_firmware
from simulators.lab import SimLab
from tests.instruments.rig import serve

FAST = SerialSettings(baudrate=115200, timeout_s=0.3, reopen_backoff_s=0.05, reopen_attempts=8)
LIMITS = GcodeStage.Limits(x_mm=(0, 300), y_mm=(0, 200), z_mm=(0, 50), max_feed_mm_min=2000)
OPTIONS = GcodeStage.Options(
    stations={"spin": (50, 60, 5), "quench": (200, 150, 2)}, safe_z_mm=40, poll_s=0.5, ready_timeout_s=0.5, homing_timeout_s=30
)


def make(tmp_path, options=OPTIONS, reset_on_open=True):
    lab = SimLab()
    fw = make_firmware("stage", options, LIMITS, lab)
    fw.reset_on_open = reset_on_open
    return serve(
        tmp_path, fw, GcodeStage, name="stage", link="usb-grbl-if00", lab=lab, settings=FAST, limits=LIMITS, options=options
    )


@pytest.fixture
def rig(tmp_path):
    r = make(tmp_path)
    yield r
    r.drv.close()
    r.dev.stop()


@pytest.fixture
def stage(rig):
    rig.drv.connect()
    return rig


def spoil_reply_to(r, prefix: bytes, kind: str) -> None:
    """Makes the device spoil its reply to the next command starting with ``prefix`` (not the status before it)."""
    handle = r.fw.handle

    def spoiling(frame: bytes):
        if frame.startswith(prefix):
            r.fw.handle = handle
            r.dev.faults.inject(kind)
        return handle(frame)

    r.fw.handle = spoiling


def spoil_status_after(r, prefix: bytes, *kinds: str) -> None:
    """Spoils the replies to the status queries that follow the next line starting with ``prefix``, one kind each,
    in order (a retried ``?`` meets the next kind)."""
    handle, realtime = r.fw.handle, r.fw._realtime
    armed = []

    def noting(frame: bytes):
        if frame.startswith(prefix):
            r.fw.handle = handle
            armed.append(True)
        return handle(frame)

    def spoiling(ch: bytes):
        if ch == b"?" and armed:
            r.fw._realtime = realtime
            for kind in kinds:
                r.dev.faults.inject(kind)
        return realtime(ch)

    r.fw.handle, r.fw._realtime = noting, spoiling


def slow_line(r, delay_s: float) -> None:
    """Every reply takes ``delay_s`` to come (a slow adapter): the driver spends its time waiting for replies,
    so a reply that arrives late lands inside some later query's wait, as it does in a busy poll loop."""
    deliver = r.dev.faults.deliver

    def slowed(reply: bytes):
        d = deliver(reply)
        d.delay_s = max(d.delay_s, delay_s)
        return d

    r.dev.faults.deliver = slowed


def positions(lab):
    return [(e.data["x_mm"], e.data["y_mm"], e.data["z_mm"]) for e in lab.history if e.kind == "position"]


# --- pure protocol functions -----------------------------------------------------------------------


def test_format_known_frames():
    assert format_move(10, 20.5, -0.0001, 1000) == b"G90 G21 G53 G1 X10.000 Y20.500 Z-0.000 F1000.0\n"
    assert format_home() == b"$H\n"
    with pytest.raises(LimitError):
        format_move(float("nan"), 0, 0, 100)


def test_parse_ok_and_errors():
    assert parse_ok(b"ok\r\n") is None
    with pytest.raises(DeviceError, match="locked out") as info:
        parse_ok(b"error:9\r\n")
    assert info.value.code == "error:9"
    with pytest.raises(DeviceError) as info:
        parse_ok(b"ALARM:1\r\n")
    assert info.value.code == "ALARM:1"
    for bad in (b"okay\r\n", b"error:\r\n", b"<Idle|MPos:0,0,0>\r\n", b"\xff\r\n"):
        with pytest.raises(ProtocolError):
            parse_ok(bad)


def test_parse_status_known_frames():
    s = parse_status(b"<Idle|MPos:10.000,20.000,5.000|FS:0,0>\r\n")
    assert (s.state, s.base, s.mpos, s.wpos, s.feed_mm_min) == ("Idle", "Idle", (10.0, 20.0, 5.0), None, 0.0)
    s = parse_status(b"<Hold:1|MPos:-1.5,2.000,3.250,9.0|Bf:15,128|FS:500,0|Pn:XZ|Ov:100,100,100>\r\n")
    assert (s.state, s.base, s.mpos, s.feed_mm_min) == ("Hold:1", "Hold", (-1.5, 2.0, 3.25), 500.0)
    assert parse_status(b"<Run|WPos:1.000,2.000,3.000|F:300>\r\n").wpos == (1.0, 2.0, 3.0)
    with pytest.raises(DeviceError) as info:
        parse_status(b"ALARM:3\r\n")
    assert info.value.code == "ALARM:3"
    for bad in (b"ok\r\n", b"<Idle|FS:0,0>\r\n", b"<Dance|MPos:0,0,0>\r\n", b"<Idle|MPos:1,2>\r\n", b"<Idle|MPos:a,b,c>\r\n"):
        with pytest.raises(ProtocolError):
            parse_status(bad)
    assert parse_banner(b"Grbl 1.1h ['$' for help]\r\n") == "1.1h"
    assert parse_banner(b"\r\n") is None


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=80), st.from_regex(rb"\A<[A-Za-z:0-9]{0,7}(\|[A-Za-z]{1,4}:[-0-9.,]{0,20}){0,4}>\r\n\Z")))
def test_parsers_raise_only_instrument_errors(frame):
    for parse in (parse_ok, parse_status, parse_banner):
        try:
            parse(frame)
        except InstrumentError:
            pass


# --- configuration and limits ----------------------------------------------------------------------


def test_limits_and_options_are_checked_at_construction():
    t = Transport("/nonexistent")
    with pytest.raises(LimitError, match="station 'far' x"):
        GcodeStage(t, name="s", limits=LIMITS, options=GcodeStage.Options(stations={"far": (400, 0, 0)}, safe_z_mm=10))
    with pytest.raises(LimitError, match="safe_z_mm"):
        GcodeStage(t, name="s", limits=LIMITS, options=GcodeStage.Options(safe_z_mm=60))
    with pytest.raises(LimitError, match="feed_mm_min"):
        GcodeStage(t, name="s", limits=LIMITS, options=GcodeStage.Options(feed_mm_min=5000))
    with pytest.raises(ValidationError, match="safe_z_mm"):
        GcodeStage.Options(stations={"a": (0, 0, 0)})
    with pytest.raises(ValidationError, match="min < max"):
        GcodeStage.Limits(x_mm=(10, 0), y_mm=(0, 1), z_mm=(0, 1))
    with pytest.raises(ValidationError):
        GcodeStage.Limits(x_mm=(0, 10), y_mm=(0, 1))  # the envelope is required


def test_limit_violations_send_nothing(rig):
    drv = rig.drv
    for action, kwargs in [
        ("move_to", {"x_mm": 301, "y_mm": 0, "z_mm": 0}),
        ("move_to", {"x_mm": 0, "y_mm": -0.1, "z_mm": 0}),
        ("move_to", {"x_mm": 0, "y_mm": 0, "z_mm": float("nan")}),
        ("move_to", {"x_mm": 0, "y_mm": 0, "z_mm": "5"}),
        ("move_to", {"x_mm": 0, "y_mm": 0, "z_mm": 0, "feed_mm_min": 2001}),
        ("move_to", {"x_mm": 0, "y_mm": 0, "z_mm": 0, "feed_mm_min": 0}),
        ("move_to_station", {"station": "oven"}),
        ("move_to_station", {"station": "spin", "feed_mm_min": 1e6}),
        ("fly", {}),
        ("home", {"fast": True}),
    ]:
        with pytest.raises(LimitError):
            drv.perform(action, kwargs)
    assert rig.transcript.written() == b""
    assert not drv.transport.is_open


# --- actions ---------------------------------------------------------------------------------------


def test_connect_homes_from_the_power_up_alarm(stage):
    assert stage.drv.version == "1.1h"
    assert stage.fw.count(b"$H") == 1 and stage.fw.homed and stage.fw.state == "Idle"
    assert stage.drv.position() == (0.0, 0.0, 0.0)
    assert positions(stage.lab) == [(0.0, 0.0, 0.0)]
    assert stage.lab.clock.now_s() >= 7.0, "homing from mid-travel takes virtual time"


def test_connect_without_homing_leaves_the_alarm_and_moves_are_refused(tmp_path):
    r = make(tmp_path, OPTIONS.model_copy(update={"home_on_connect": False}))
    try:
        r.drv.connect()
        with pytest.raises(DeviceError, match="home") as info:
            r.drv.move_to(1, 1, 1)
        assert info.value.code == "Alarm"
        assert r.fw.count(b"G") == 0 and r.fw.count(b"$H") == 0
        assert r.drv.home() == (0.0, 0.0, 0.0)
        assert r.drv.move_to(1, 2, 3) == (1.0, 2.0, 3.0)
    finally:
        r.drv.close()
        r.dev.stop()


def test_connect_to_a_controller_that_does_not_reset_on_open(tmp_path):
    r = make(tmp_path, reset_on_open=False)
    try:
        r.fw.homing_enabled = False
        with r.fw._lock:
            r.fw.state = "Idle"  # powered up earlier with homing disabled: no banner, no alarm
        r.drv.connect()
        assert r.drv.version is None and r.fw.count(b"$H") == 0
        assert r.drv.move_to(1, 2, 3) == (1.0, 2.0, 3.0)
    finally:
        r.drv.close()
        r.dev.stop()


def test_move_to_waits_on_virtual_time_and_verifies_the_position(stage):
    t0 = stage.lab.clock.now_s()
    assert stage.drv.move_to(30, 40, 0, feed_mm_min=1000) == (30.0, 40.0, 0.0)
    assert stage.lab.clock.now_s() - t0 >= 50 / 1000 * 60, "a 50 mm move at 1000 mm/min takes 3 s"
    assert b"G90 G21 G53 G1 X30.000 Y40.000 Z0.000 F1000.0\n" in stage.transcript.written()
    assert positions(stage.lab)[-1] == (30.0, 40.0, 0.0)
    assert stage.drv.position() == (30.0, 40.0, 0.0)
    stage.drv.move_to(30, 40, 10)  # default feed from the options
    assert b"Z10.000 F500.0\n" in stage.transcript.written()


def test_move_to_station_lifts_travels_and_lowers(stage):
    stage.drv.move_to(10, 10, 3)
    assert stage.drv.perform("move_to_station", {"station": "quench"}) == (200.0, 150.0, 2.0)
    assert positions(stage.lab)[-3:] == [(10.0, 10.0, 40.0), (200.0, 150.0, 40.0), (200.0, 150.0, 2.0)]
    stage.drv.move_to(200, 150, 45)  # above the travel height: it stays up, then lowers
    stage.drv.move_to_station("spin")
    assert positions(stage.lab)[-2:] == [(50.0, 60.0, 45.0), (50.0, 60.0, 5.0)]
    stage.drv.move_to(50, 60, 20)  # already over the station: only Z moves
    n = stage.fw.count(b"G90")
    stage.drv.move_to_station("spin")
    assert stage.fw.count(b"G90") == n + 1 and positions(stage.lab)[-1] == (50.0, 60.0, 5.0)


def test_halt_stops_a_move_and_discards_the_rest(stage):
    stage.drv.transport.query(format_move(100, 0, 0, 600), end=b"\r\n", parse=parse_ok)  # 10 s of motion
    stage.lab.clock.advance(5)
    resets = stage.fw.count(b"\x18")
    at = stage.drv.halt()
    assert at[0] == pytest.approx(50.0, abs=1.0) and stage.fw.state == "Idle"
    assert stage.fw.count(b"!") == 1 and stage.fw.count(b"\x18") == resets + 1
    stage.lab.clock.advance(60)
    assert stage.drv.position() == at, "the remaining motion was discarded"
    assert stage.drv.move_to(5, 5, 5) == (5.0, 5.0, 5.0), "no alarm: the reset came from a completed hold"


def test_safe_state_when_idle_or_in_alarm_does_not_raise(stage):
    stage.drv.safe_state()
    assert stage.fw.state == "Idle" and stage.drv.position() == (0.0, 0.0, 0.0)
    resets = stage.fw.count(b"\x18")
    stage.fw.trigger_hard_limit()
    stage.drv.safe_state()  # reads ALARM:1, logs it, raises nothing
    stage.drv.safe_state()
    assert stage.fw.state == "Alarm" and stage.fw.count(b"\x18") == resets, "no reset in Alarm"


def test_move_refused_in_feed_hold(stage):
    stage.drv.transport.send(b"!")
    with pytest.raises(DeviceError, match="Hold") as info:
        stage.drv.move_to(1, 1, 1)
    assert info.value.code == "Hold:0" and stage.fw.count(b"G90") == 0


# --- device alarms and errors ----------------------------------------------------------------------


def test_soft_limit_of_the_controller_is_a_device_error(stage):
    stage.fw.travel_mm = ((0, 100), (0, 200), (0, 50))  # narrower than the driver's envelope
    with pytest.raises(DeviceError, match="travel") as info:
        stage.drv.move_to(150, 0, 0)
    assert info.value.code == "error:15" and not info.value.effect_unknown
    assert stage.drv.position() == (0.0, 0.0, 0.0)


def test_hard_limit_alarm_and_recovery_by_homing(stage):
    stage.fw.trigger_hard_limit()
    with pytest.raises(DeviceError) as info:
        stage.drv.move_to(10, 10, 10)
    assert info.value.code == "ALARM:1"
    with pytest.raises(DeviceError, match="home"):
        stage.drv.move_to(10, 10, 10)  # refused by the driver, before sending
    assert stage.fw.count(b"G90") == 0
    with pytest.raises(DeviceError) as info:  # the controller itself locks G-code out
        stage.drv.transport.query(format_move(10, 10, 10, 100), end=b"\r\n", parse=parse_ok)
    assert info.value.code == "error:9"
    stage.drv.home()
    assert stage.drv.move_to(10, 10, 10) == (10.0, 10.0, 10.0)


def test_hard_limit_during_a_move_is_effect_unknown(stage):
    class TripClock:
        def __init__(self, clock):
            self.clock = clock

        def now_s(self):
            return self.clock.now_s()

        def sleep(self, s):
            self.clock.sleep(s)
            if stage.fw.state == "Run":
                stage.fw.trigger_hard_limit()

    stage.drv.clock = TripClock(stage.lab.clock)
    with pytest.raises(DeviceError) as info:
        stage.drv.move_to(200, 0, 0)
    assert info.value.code == "ALARM:1" and info.value.effect_unknown
    assert stage.fw.count(b"G90") == 1 and 0 < stage.fw.physical_mm[0] < 200


def test_a_move_held_on_the_way_times_out_with_unknown_effect(stage):
    class HoldClock:  # someone presses the feed-hold button while the stage moves
        def __init__(self, clock):
            self.clock = clock

        def now_s(self):
            return self.clock.now_s()

        def sleep(self, s):
            self.clock.sleep(s)
            if stage.fw.state == "Run":
                stage.fw.feed(b"!")

    stage.drv.clock = HoldClock(stage.lab.clock)
    t0 = stage.lab.clock.now_s()
    with pytest.raises(InstrumentTimeout, match="Hold:0") as info:
        stage.drv.move_to(200, 0, 0)
    assert info.value.effect_unknown and stage.fw.count(b"G90") == 1
    assert stage.lab.clock.now_s() - t0 == pytest.approx(OPTIONS.move_margin_s, abs=1.0)


def test_homing_failure_is_a_device_error(stage):
    stage.fw.homing_fails = True
    with pytest.raises(DeviceError) as info:
        stage.drv.home()
    assert info.value.code == "ALARM:9" and stage.fw.state == "Alarm"


# --- transport faults ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["no_reply", "partial", "late", "corrupt", "noise", "disconnect"])
def test_position_query_recovers_from_each_fault(tmp_path, kind):
    r = make(tmp_path)
    try:
        r.drv.connect()
        r.fw.reset_on_open = False  # an adapter re-enumerating without resetting the controller
        r.drv.move_to(12, 34, 5)
        n = r.fw.count(b"?")
        r.dev.faults.inject(kind)
        assert r.drv.position() == (12.0, 34.0, 5.0)
        assert r.dev.faults.applied == [kind] and r.fw.count(b"?") == n + 2
    finally:
        r.drv.close()
        r.dev.stop()


@pytest.mark.parametrize("kind", ["no_reply", "partial", "late", "corrupt"])
def test_lost_reply_to_a_move_is_resolved_by_status_not_by_resending(stage, kind, caplog):
    spoil_reply_to(stage, b"G90", kind)
    assert stage.drv.move_to(20, 30, 4) == (20.0, 30.0, 4.0)
    assert "asking the controller instead of resending" in caplog.text
    assert stage.fw.count(b"G90") == 1, "the move was never resent"
    assert stage.dev.faults.applied == [kind]
    time.sleep(0.3 if kind == "late" else 0)
    assert stage.drv.position() == (20.0, 30.0, 4.0)  # a late "ok" is flushed, not read as a status


def test_move_that_never_arrived_is_reported_as_not_executed(stage):
    stage.fw._gcode = lambda line: None  # the controller swallows the line: no reply, no motion
    with pytest.raises(DeviceError, match="not executed") as info:
        stage.drv.move_to(20, 30, 4)
    assert not info.value.effect_unknown and stage.fw.count(b"G90") == 1


def test_disconnect_during_a_move_fails_it_and_the_next_move_rehomes_first(stage):
    spoil_reply_to(stage, b"G90", "disconnect")
    with pytest.raises(DeviceError, match="restarted when its port was reopened") as info:
        stage.drv.move_to(20, 30, 4)
    assert info.value.effect_unknown and "not resent" in str(info.value) and "homes it before its next move" in str(info.value)
    assert stage.fw.count(b"G90") == 1 and stage.dev.disconnects == 1 and stage.drv.transport.reopens == 1
    homings = stage.fw.count(b"$H")
    assert stage.drv.move_to(20, 30, 4) == (20.0, 30.0, 4.0)
    assert stage.fw.count(b"$H") == homings + 1 and stage.fw.count(b"G90") == 2
    lines = [f for f in stage.fw.received if f[:1] in (b"$", b"G")]
    assert lines[-2:] == [b"$H\n", b"G90 G21 G53 G1 X20.000 Y30.000 Z4.000 F500.0\n"], "homed before the move"
    assert positions(stage.lab)[-2:] == [(0.0, 0.0, 0.0), (20.0, 30.0, 4.0)]


def test_after_a_reset_without_rehome_allowed_moves_are_refused_until_homed(tmp_path):
    r = make(tmp_path, OPTIONS.model_copy(update={"rehome_after_reset": False}))
    try:
        r.drv.connect()
        r.drv.move_to(20, 30, 4)
        r.dev.faults.inject("disconnect")  # the port drops while the stage is idle: the board resets
        with pytest.raises(DeviceError, match="no position to report: the controller restarted"):
            r.drv.position()
        sent = (r.fw.count(b"G90"), r.fw.count(b"$H"))
        with pytest.raises(DeviceError, match="rehome_after_reset") as info:
            r.drv.move_to_station("spin")
        assert info.value.code == "Alarm" and not info.value.effect_unknown
        assert (r.fw.count(b"G90"), r.fw.count(b"$H")) == sent, "nothing sent"
        r.drv.home()
        assert r.drv.move_to_station("spin") == (50.0, 60.0, 5.0)
    finally:
        r.drv.close()
        r.dev.stop()


def test_a_reset_while_idle_is_rehomed_before_a_station_path_is_planned(stage):
    stage.drv.move_to(200, 150, 2)
    stage.dev.faults.inject("disconnect")
    stage.drv.move_to_station("spin")
    # Homed first (the reset forgot 200,150,2), then lifted from home, travelled, lowered: no path from a stale start.
    assert positions(stage.lab)[-4:] == [(0.0, 0.0, 0.0), (0.0, 0.0, 40.0), (50.0, 60.0, 40.0), (50.0, 60.0, 5.0)]


def test_hard_limit_is_rehomed_only_when_the_options_allow_it(tmp_path):
    r = make(tmp_path, OPTIONS.model_copy(update={"rehome_after_alarm": True}))
    try:
        r.drv.connect()
        r.fw.trigger_hard_limit()
        with pytest.raises(DeviceError) as info:
            r.drv.move_to(10, 10, 10)
        assert info.value.code == "ALARM:1"
        assert r.drv.move_to(10, 10, 10) == (10.0, 10.0, 10.0)
        assert r.fw.count(b"$H") == 2, "connect, then the re-homing"
    finally:
        r.drv.close()
        r.dev.stop()


def test_homing_failure_is_never_rehomed_automatically(tmp_path):
    r = make(tmp_path, OPTIONS.model_copy(update={"rehome_after_alarm": True}))
    try:
        r.drv.connect()
        r.fw.homing_fails = True
        with pytest.raises(DeviceError):
            r.drv.home()
        with pytest.raises(DeviceError, match="limit switches") as info:
            r.drv.move_to(10, 10, 10)
        assert info.value.code == "Alarm" and r.fw.count(b"$H") == 2 and r.fw.count(b"G90") == 0
    finally:
        r.drv.close()
        r.dev.stop()


def test_a_late_status_report_is_dropped_not_read_as_a_later_one(stage):
    slow_line(stage, 0.05)
    spoil_status_after(stage, b"G90", "late")  # the first poll of the move: <Run|MPos:0,0,0> comes 0.5 s late
    assert stage.drv.move_to(1, 0, 0, feed_mm_min=600) == (1.0, 0.0, 0.0)
    assert stage.dev.faults.applied == ["late"]
    end = time.monotonic() + 0.8  # past the late report's arrival
    while time.monotonic() < end:
        assert stage.drv.position() == (1.0, 0.0, 0.0), "a stale report was read as a fresh one"
    stage.drv.move_to(2, 0, 0)  # and no stale Run refuses the next move


def test_status_replies_garbled_three_times_in_a_row_do_not_fail_the_move(stage):
    spoil_status_after(stage, b"G90", "noise", "partial", "late")  # the soak's failing run, poll after poll
    assert stage.drv.move_to(20, 30, 4) == (20.0, 30.0, 4.0)
    assert stage.dev.faults.applied == ["noise", "partial", "late"] and stage.fw.count(b"G90") == 1


def test_a_wait_polls_on_when_a_status_cannot_be_had(tmp_path):
    r = make(tmp_path, OPTIONS.model_copy(update={"status_tries": 2, "late_reply_s": 0.05}))
    try:
        r.drv.connect()
        spoil_status_after(r, b"G90", "no_reply", "no_reply", "no_reply")  # one poll fails whole
        assert r.drv.move_to(20, 30, 4) == (20.0, 30.0, 4.0)
        assert r.dev.faults.applied == ["no_reply"] * 3 and r.fw.count(b"G90") == 1
    finally:
        r.drv.close()
        r.dev.stop()


def test_a_move_waits_for_earlier_motion_to_end(stage):
    stage.drv.transport.query(format_move(30, 0, 0, 600), end=b"\r\n", parse=parse_ok)  # 3 s of motion under way
    assert stage.drv.move_to(30, 10, 0) == (30.0, 10.0, 0.0)
    assert positions(stage.lab)[-2:] == [(30.0, 0.0, 0.0), (30.0, 10.0, 0.0)]


def test_a_move_is_refused_when_earlier_motion_never_ends(stage):
    stage.drv.transport.query(format_move(300, 0, 0, 10), end=b"\r\n", parse=parse_ok)  # 30 min at 10 mm/min
    with pytest.raises(DeviceError, match="still Run .* nothing was sent") as info:
        stage.drv.move_to(30, 10, 0)
    assert info.value.code == "Run" and not info.value.effect_unknown and stage.fw.count(b"G90") == 1


def test_firmware_speaks_grbl_line_by_line():
    lab = SimLab()
    fw = GrblFirmware("s", lab, ((0, 100), (0, 100), (0, 100)))
    assert fw.feed(b"G1 X1 F100\n") == [b"error:9\r\n"], "locked after power-up"
    assert fw.feed(b"$X\n") == [b"[MSG:Caution: Unlocked]\r\nok\r\n"]
    assert fw.feed(b"G1 X1\r\n") == [b"error:22\r\n", b"ok\r\n"], "no feed yet; CRLF is two lines"
    assert fw.feed(b"G91 G1 X10 F600\nX5\n") == [b"ok\r\n", b"ok\r\n"]
    lab.clock.advance(1.0)
    assert fw.feed(b"?") == [b"<Run|MPos:10.000,0.000,0.000|FS:600,0>\r\n"], "blocks run back to back"
    lab.clock.advance(10)
    assert fw.feed(b"?") == [b"<Idle|MPos:15.000,0.000,0.000|FS:0,0>\r\n"]
    assert positions(lab) == [(65.0, 50.0, 50.0)], "the physical position: unlocked, not homed"
    assert [fw.feed(line)[0] for line in (b"G0 X200\n", b"M3\n", b"G90 G91\n", b"$Q\n")] == [
        b"error:15\r\n", b"error:20\r\n", b"error:21\r\n", b"error:3\r\n"
    ]


def test_spec_names_the_simulator():
    assert SPEC.kind == "grbl" and SPEC.driver is GcodeStage and SPEC.serial.baudrate == 115200
    module, _, func = SPEC.firmware.partition(":")
    fw = getattr(importlib.import_module(module), func)("stage", OPTIONS, LIMITS, SimLab())
    assert isinstance(fw, GrblFirmware) and fw.travel_mm == ((0, 300), (0, 200), (0, 50))
