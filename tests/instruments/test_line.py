"""The generic line-protocol driver, configured as a campaign file would, against the simulated rig on a pty."""


import importlib
import re
import time


import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from instruments.errors import DeviceError, InstrumentError, InstrumentTimeout, LimitError, ProtocolError
from instruments.line import SPEC, CommandSpec, LineDriver, format_command, parse_reply, template_fields
from instruments.transport import SerialSettings
from simulators.firmware.line import LineRig, make_firmware
from simulators.lab import SimLab
from tests.instruments.rig import serve

FAST = SerialSettings(timeout_s=0.3, reopen_backoff_s=0.05, reopen_attempts=8)
ERR = "ERR (?P<code>.+)"
NUM = r"[-+]?\d+(?:\.\d+)?"  # a number pattern, not \S+: a corrupted digit then fails to match and is retried
RIG = {
    "ready_banner": r"READY rig v\d+",
    "ready_timeout_s": 1.0,
    "commands": {
        "set_speed": {"send": "SET {value:.1f}", "reply": rf"OK (?P<value>{NUM})", "error": ERR, "idempotent": True,
                      "args": {"value": {"min": 0, "max": 80}}},
        "speed": {"send": "GET", "reply": rf"VAL (?P<value>{NUM})", "error": ERR, "idempotent": True},
        "pump_on": {"send": "ON", "reply": "OK ON", "error": ERR, "idempotent": True},
        "pump_off": {"send": "OFF", "reply": "OK OFF", "error": ERR, "idempotent": True},
        "output": {"send": "OUT?", "reply": r"OUT (?P<on>[01])", "error": ERR, "idempotent": True},
        "dose": {"send": "DOSE {volume_ul:.1f}", "reply": "OK", "error": ERR, "args": {"volume_ul": {"min": 1, "max": 500}},
                 "timeout_s": 0.3},
        "total": {"send": "TOTAL", "reply": rf"TOTAL (?P<total_ul>{NUM})", "error": ERR, "idempotent": True},
        "led": {"send": "LED {state:d}", "args": {"state": {"choices": [0, 1]}}, "idempotent": True},
        "raw": {"send": "{word}", "reply": r"(?P<answer>.*)", "error": ERR, "args": {"word": {"choices": ["PING", "GET"]}}},
    },
    "safe_state": ["pump_off", {"command": "set_speed", "args": {"value": 0}}],
}
OPTIONS = LineDriver.Options.model_validate(RIG)


def make(tmp_path, options=OPTIONS):
    lab = SimLab()
    fw = make_firmware("rig", options, LineDriver.Limits(), lab)
    return serve(tmp_path, fw, LineDriver, name="rig", link="usb-Arduino_Uno-if00", lab=lab, settings=FAST, options=options)


@pytest.fixture
def rig(tmp_path):
    r = make(tmp_path)
    yield r
    r.drv.close()
    r.dev.stop()


@pytest.fixture
def board(rig):
    rig.drv.connect()
    return rig


def options(**changes):
    return LineDriver.Options.model_validate({**RIG, **changes})


def command(**spec):
    return options(commands={"c": spec}, safe_state=[])


# --- pure protocol functions -----------------------------------------------------------------------


def test_format_and_parse_known_frames():
    assert format_command("SET {value:.1f}", {"value": 12.25}, "\n") == b"SET 12.2\n"
    assert format_command("P{ch:d} {v:.3f}", {"ch": 2, "v": 1}, "\r") == b"P2 1.000\r"
    with pytest.raises(LimitError):
        format_command("LED {state:d}", {"state": 0.5}, "\n")
    reply, error = re.compile(r"W (?P<mass_g>\S+) (?P<unit>\w+) ?(?P<flag>S)?"), re.compile(ERR)
    assert parse_reply(b"W 12.5 g\r\n", reply, error) == {"mass_g": 12.5, "unit": "g", "flag": None}
    assert parse_reply(b"  W -1e3 mg S \r\n", reply, error) == {"mass_g": -1000.0, "unit": "mg", "flag": "S"}
    assert parse_reply(b"W nan g\r\n", reply, error)["mass_g"] == "nan", "only decimal numbers become floats"
    with pytest.raises(DeviceError) as info:
        parse_reply(b"ERR overload\r\n", reply, error)
    assert info.value.code == "overload"
    for bad in (b"W 12.5\r\n", b"\x7f#~W 1 g\r\n", b"W \xff g\r\n"):
        with pytest.raises(ProtocolError):
            parse_reply(bad, reply, error)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=60), st.from_regex(rb"\A(OK|ERR|VAL|W) ?[-0-9.a-z ]{0,12}\r\n\Z")))
def test_parse_reply_raises_only_instrument_errors(frame):
    patterns = [re.compile(r"VAL (?P<value>\S+)"), re.compile(r"OK"), re.compile(r"(?P<any>.*)")]
    for reply in patterns:
        try:
            out = parse_reply(frame, reply, re.compile(ERR))
            assert isinstance(out, dict)
        except InstrumentError:
            pass


def test_templates_are_checked_when_the_options_load():
    assert template_fields("SET {a:.1f} {b} {{literal}}") == ["a", "b"]
    for template, why in [
        ("SET {value}", "not declared"),
        ("SET {}", "plain argument name"),
        ("SET {0}", "plain argument name"),
        ("SET {value.__class__}", "plain argument name"),
        ("SET {value[0]}", "plain argument name"),
        ("SET {value!r}", "conversions"),
        ("SET {value:{w}}", "nested"),
        ("SET {value:>1000000}", "width"),
        ("SET {value", "template"),
        ("SET\n{value}", "line break"),
    ]:
        args = {} if why == "not declared" else {"value": {"min": 0, "max": 1}}
        with pytest.raises(ValidationError, match=why) as info:
            command(send=template, args=args)
        assert "commands.c" in str(info.value), "the error names the field"
    for bad, why in [
        ({"send": "SET {v:.1f}", "args": {"v": {"min": 0}}}, "both 'min' and 'max'"),
        ({"send": "SET {v:.1f}", "args": {"v": {"choices": ["a"]}}}, "cannot format"),
        ({"send": "SET", "args": {"v": {"min": 0, "max": 1}}}, "not used"),
        ({"send": "GET", "reply": "VAL (?P<v"}, "not a valid regex"),
        ({"send": "GET", "reply": "VAL", "error": "ERR ("}, "not a valid regex"),
        ({"send": "GET", "timeout_s": 0}, "greater than 0"),
    ]:
        with pytest.raises(ValidationError, match=re.escape(why)):
            command(**bad)
    with pytest.raises(ValidationError, match="ready_banner"):
        options(ready_banner="READY (")
    with pytest.raises(ValidationError, match="no command 'purge'"):
        options(safe_state=["purge"])
    with pytest.raises(ValidationError, match="outside"):
        options(safe_state=[{"command": "set_speed", "args": {"value": 99}}])
    with pytest.raises(ValidationError, match="must be a letter"):
        options(commands={"set-speed": {"send": "SET"}})
    assert CommandSpec(send="P{n:d}", args={"n": {"min": 0, "max": 3}}).args["n"].max == 3.0, "whole bounds format as :d"


def test_the_documented_example_loads():
    import yaml

    import instruments.line

    doc = instruments.line.__doc__
    example = yaml.safe_load(doc[doc.index("    options:") : doc.index("Framing and choices:")])["options"]
    opts = LineDriver.Options.model_validate(example)
    assert opts.terminator == "\n" and opts.commands["set_speed"].args["value"].max == 80.0


# --- configured actions and limits -----------------------------------------------------------------


def test_actions_are_the_configured_commands(rig):
    drv = rig.drv
    assert drv.ACTIONS == frozenset(RIG["commands"]) and LineDriver.ACTIONS == frozenset()
    assert drv.action_parameters("dose") == ["volume_ul"] and drv.action_parameters("speed") == []


def test_limit_violations_send_nothing(rig):
    for action, kwargs in [
        ("set_speed", {"value": 80.5}),
        ("set_speed", {"value": -1}),
        ("set_speed", {"value": float("nan")}),
        ("set_speed", {"value": "10"}),
        ("set_speed", {"value": True}),
        ("set_speed", {}),
        ("set_speed", {"value": 1, "ramp": 2}),
        ("dose", {"volume_ul": 0.5}),
        ("led", {"state": 2}),
        ("led", {"state": "1"}),
        ("raw", {"word": "RESET"}),
        ("speed", {"value": 1}),
        ("explode", {}),
    ]:
        with pytest.raises(LimitError):
            rig.drv.perform(action, kwargs)
    assert rig.transcript.written() == b""
    assert not rig.drv.transport.is_open


def test_every_action_round_trips(board):
    drv, fw = board.drv, board.fw
    assert drv.perform("set_speed", {"value": 42.25}) == {"value": 42.2}
    assert fw.value == 42.2
    assert drv.call("speed") == {"value": 42.2}
    assert drv.call("pump_on") == {} and fw.output
    assert drv.call("output") == {"on": 1.0}
    assert drv.call("pump_off") == {} and not fw.output
    assert drv.call("dose", volume_ul=40) is not None and drv.call("dose", volume_ul=2.5) == {}
    assert drv.call("total") == {"total_ul": 42.5}
    assert drv.call("led", state=1) is None
    assert drv.call("raw", word="GET") == {"answer": "VAL 42.20"}
    time.sleep(0.05)
    assert fw.led == 1
    assert board.transcript.written().startswith(b"SET 42.2\nGET\nON\nOUT?\nOFF\nDOSE 40.0\n")
    lines = [e.data["line"] for e in board.lab.history if e.kind == "command"]
    assert lines[:3] == ["SET 42.2", "GET", "ON"] and "LED 1" in lines


def test_device_errors_are_typed(board):
    with pytest.raises(DeviceError) as info:
        board.drv.call("raw", word="PING")
    assert info.value.code == "unknown"
    board.fw.max_value = 50.0  # the rig's own range is narrower than the configured bounds
    with pytest.raises(DeviceError) as info:
        board.drv.call("set_speed", value=60)
    assert info.value.code == "range" and board.fw.value == 0.0
    board.fw.alarm = "overtemp"
    with pytest.raises(DeviceError, match="overtemp") as info:
        board.drv.call("dose", volume_ul=10)
    assert info.value.code == "overtemp" and not info.value.effect_unknown and board.fw.dosed_ul == 0.0


def test_reply_that_does_not_match_is_a_protocol_error(board):
    opts = options(commands={**RIG["commands"], "speed": {"send": "GET", "reply": r"SPEED (?P<v>\S+)", "idempotent": True}})
    drv = LineDriver(board.drv.transport, name="rig", options=opts, clock=board.lab.clock)
    with pytest.raises(ProtocolError, match="does not match"):
        drv.call("speed")
    assert board.fw.count(b"GET") == 3, "an idempotent query is tried three times"


# --- connecting ------------------------------------------------------------------------------------


def test_connect_waits_for_the_ready_banner(rig):
    rig.drv.connect()
    assert rig.fw.resets == 1
    assert rig.transcript.written() == b"", "nothing is sent before the banner"
    assert rig.drv.call("speed") == {"value": 0.0}
    rig.drv.connect()  # already open: no reset, no banner to wait for
    assert rig.fw.resets == 1


def test_connect_without_banner_times_out_clearly(rig):
    rig.fw.banner = None
    drv = LineDriver(rig.drv.transport, name="rig", options=options(ready_timeout_s=0.3), clock=rig.lab.clock)
    with pytest.raises(InstrumentTimeout, match="no ready banner"):
        drv.connect()


def test_reopening_resets_the_board_and_its_state(board):
    board.drv.call("set_speed", value=30)
    board.drv.close()
    time.sleep(0.1)  # the simulated board notices the port closing within 50 ms
    board.drv.connect()
    assert board.fw.resets == 2 and board.drv.call("speed") == {"value": 0.0}


# --- safe state ------------------------------------------------------------------------------------


def test_safe_state_runs_the_configured_commands(board):
    board.drv.call("set_speed", value=30)
    board.drv.call("pump_on")
    board.drv.safe_state()
    assert not board.fw.output and board.fw.value == 0.0
    assert board.transcript.written().endswith(b"OFF\nSET 0.0\n")


def test_safe_state_logs_failures_and_goes_on(board, caplog):
    board.drv.call("pump_on")
    board.fw.alarm = "overtemp"
    board.drv.safe_state()  # both commands are answered "ERR overtemp": logged, not raised
    assert board.fw.count(b"OFF") == 1 and board.fw.count(b"SET 0.0") == 1
    assert "safe-state command pump_off failed" in caplog.text


# --- transport faults ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["no_reply", "partial", "late", "corrupt", "noise", "disconnect"])
def test_idempotent_query_recovers_from_each_fault(board, kind):
    board.fw.reset_on_open, board.fw.banner = False, None  # an adapter re-enumerating without a board reset
    board.drv.call("set_speed", value=12.5)
    board.dev.faults.inject(kind)
    assert board.drv.call("speed") == {"value": 12.5}
    assert board.dev.faults.applied == [kind] and board.fw.count(b"GET") == 2


@pytest.mark.parametrize("kind", ["no_reply", "partial", "late", "corrupt", "disconnect"])
def test_lost_reply_to_a_dose_is_effect_unknown_and_not_resent(board, kind):
    board.fw.reset_on_open = False
    board.dev.faults.inject(kind)
    with pytest.raises(InstrumentError) as info:
        board.drv.call("dose", volume_ul=40)
    assert info.value.effect_unknown
    assert board.fw.count(b"DOSE") == 1 and board.fw.dosed_ul == 40.0
    time.sleep(0.3 if kind == "late" else 0)
    assert board.drv.call("total") == {"total_ul": 40.0}, "asking the rig tells what happened"


def test_spec_names_the_simulator():
    assert SPEC.kind == "line" and SPEC.driver is LineDriver
    module, _, func = SPEC.firmware.partition(":")
    fw = getattr(importlib.import_module(module), func)("rig", options(terminator="\r", reply_terminator="\n"), None, SimLab())
    assert isinstance(fw, LineRig) and fw.rx_end == b"\r" and fw.reply_terminator == b"\n"
    assert fw.feed(b"GET\r") == [b"VAL 0.00\n"] and fw.feed(b"FOO\r") == [b"ERR unknown\n"]
