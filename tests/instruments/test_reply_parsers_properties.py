"""Properties of every reply parser of every driver: whatever bytes arrive, a value or a typed error.

Each parser gets three kinds of frames: well-formed replies (which must parse to exactly the value they were
built from, or raise the DeviceError they encode), near misses made from those (cut short, a byte flipped,
bytes inserted or appended, a digit repeated, a wrong checksum) and arbitrary bytes. A near miss or noise
must give a value that passes the parser's own contract or an :class:`InstrumentError`; any other
exception (ValueError, IndexError, UnicodeDecodeError …) would escape the transport's retry logic.

Where a driver formats what the device echoes (a set point read back, an integration time, a move
target), the value is also sent through ``format_*`` and back through ``parse_*``: it must come back
within the protocol's resolution.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from instruments import gcode, ika, line, new_era, scpi, spectrometer
from instruments.ascii import check_idn, printable_text
from instruments.errors import DeviceError, InstrumentError, ProtocolError
from instruments.transport import ReplayPort, SerialSettings, Transport

# Reproducible in CI: a fixed seed per test, no example database.
PROPS = settings(
    max_examples=120, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)

PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)


def _text(alphabet: Any = PRINTABLE, min_size: int = 0, max_size: int = 20) -> st.SearchStrategy[str]:
    return st.text(alphabet=alphabet, min_size=min_size, max_size=max_size)


def _fixed(value: float, decimals: int) -> tuple[str, float]:
    """``value`` written with ``decimals`` decimals, and the number that text means."""
    text = f"{value:.{decimals}f}"
    return text, float(text)


# --- what a successful parse must look like -------------------------------------------------------------


def _finite(*values: float) -> bool:
    return all(isinstance(v, float) and math.isfinite(v) for v in values)


def _printable(text: str) -> bool:
    return isinstance(text, str) and all(0x20 <= ord(c) <= 0x7E for c in text)


def _idn_ok(text: str) -> bool:
    return _printable(text) and len(text.split(",")) == 4 and all(f.strip() for f in text.split(","))


def _status_ok(s: gcode.Status) -> bool:
    axes = [a for a in (s.mpos, s.wpos) if a is not None]
    return (
        s.base in gcode._STATES
        and bool(axes)
        and all(len(a) == 3 and _finite(*a) for a in axes)
        and (s.feed_mm_min is None or _finite(s.feed_mm_min))
    )


def _line_values_ok(values: Any) -> bool:
    return isinstance(values, dict) and all(
        v is None or isinstance(v, str) or (isinstance(v, float) and math.isfinite(v)) for v in values.values()
    )


# --- well-formed replies, each with the value it must parse to ------------------------------------------
# A strategy of (frame, expected); ``expected`` is the value, or a DeviceError subclass with its code.


@dataclass(frozen=True)
class Raises:
    """The reply encodes a device error: the parser must raise ``DeviceError`` with this code."""

    code: str


def _ika_value() -> st.SearchStrategy[tuple[str, float]]:
    return st.one_of(
        st.builds(_fixed, st.floats(-999.0, 99999.0), st.integers(0, 3)),
        st.integers(-999, 999_999).map(lambda n: (str(n), float(n))),
    )


def _ika_frame(body: str, blank: bool) -> bytes:
    return (body + (" " if blank else "")).encode() + ika.EOL


IKA_ERROR = st.builds(lambda n, blank: (_ika_frame(f"ER {n}", blank), Raises(f"ER {n}")), st.integers(0, 999), st.booleans())
IKA_READING = st.one_of(
    st.builds(
        lambda v, ch, blank: (_ika_frame(f"{v[0]} {ch}", blank), (v[1], ch)), _ika_value(), st.integers(0, 99), st.booleans()
    ),
    IKA_ERROR,
)
IKA_NAME = st.one_of(
    _text(min_size=1, max_size=80)
    .filter(lambda s: s.strip() and not ika._ERROR.fullmatch(s.strip()))
    .map(lambda s: (s.encode() + ika.EOL, s.strip())),
    IKA_ERROR,
)
IKA_ECHO = st.one_of(
    st.builds(
        lambda m, word: (_ika_frame(f"{m}{' ' + word if word else ''}", False), float(m)),
        st.integers(20, 1500),
        st.sampled_from(["", "s", "WD1", "OK"]),
    ),
    IKA_ERROR,
)


def _ne_frame(address: int, prompt: str, data: str) -> bytes:
    return new_era.STX + f"{address:02d}{prompt}{data}".encode() + new_era.ETX


NE_ADDRESS = st.integers(0, 99)
NE_PROMPT = st.sampled_from(sorted(new_era.PROMPTS))
NE_ALARM = st.builds(lambda a, c: (_ne_frame(a, "A", "?" + c), Raises("A?" + c)), NE_ADDRESS, st.sampled_from(sorted(new_era.ALARMS)))
NE_REFUSAL = st.builds(
    lambda a, p, e: (_ne_frame(a, p, "?" + e), Raises("?" + e)), NE_ADDRESS, NE_PROMPT, st.sampled_from(sorted(new_era.ERRORS))
)
NE_NUMBER = st.floats(0.0, 9999.0).map(new_era.format_number)


def _ne(data: st.SearchStrategy[tuple[str, Any]]) -> st.SearchStrategy[tuple[bytes, Any]]:
    """Replies carrying ``data`` (text, value) from any address and prompt, plus alarms and refusals."""
    ok = st.builds(lambda a, p, d: (_ne_frame(a, p, d[0]), (a, p, d[1])), NE_ADDRESS, NE_PROMPT, data)
    return st.one_of(ok, NE_ALARM, NE_REFUSAL)


def _units(units: dict[str, float]) -> st.SearchStrategy[tuple[str, float]]:
    return st.builds(lambda t, u: (t + u, float(t) * units[u]), NE_NUMBER, st.sampled_from(sorted(units)))


NE_DISPENSED = st.builds(
    lambda i, w, u: (f"I{i}W{w}{u}", (float(i) * new_era.VOLUME_UNITS[u], float(w) * new_era.VOLUME_UNITS[u])),
    NE_NUMBER,
    NE_NUMBER,
    st.sampled_from(sorted(new_era.VOLUME_UNITS)),
)
NE_VERSION = st.from_regex(r"\A[A-Z0-9][A-Z0-9 .\-]{0,30}\Z").filter(lambda s: not s.startswith("?")).map(lambda s: (s, s))


def _nr3(value: float) -> tuple[str, float]:
    text = f"{value:+.6E}"
    return text, float(text)


SCPI_END = st.sampled_from([b"\n", b"\r", b"\r\n"])
SCPI_FIELD = _text(PRINTABLE.filter(lambda c: c != ","), min_size=1, max_size=24).filter(str.strip)
SCPI_IDN = st.builds(lambda f, end: (",".join(f).encode() + end, ",".join(f)), st.lists(SCPI_FIELD, min_size=4, max_size=4), SCPI_END)
SCPI_REAL = st.floats(-9.8e37, 9.8e37, allow_nan=False).map(_nr3)
SCPI_NUMBER = st.one_of(
    st.builds(lambda v, end: (v[0].encode() + end, v[1]), SCPI_REAL, SCPI_END),
    st.builds(lambda n, end: (str(n).encode() + end, float(n)), st.integers(-(10**15), 10**15), SCPI_END),
)
SCPI_OUTPUT = st.builds(lambda on, end: (b"1" + end if on else b"0" + end, on), st.booleans(), SCPI_END)
SCPI_READ = st.one_of(
    st.builds(lambda v, i, end: (f"{v[0]},{i[0]}".encode() + end, (v[1], i[1])), SCPI_REAL, SCPI_REAL, SCPI_END),
    st.builds(lambda v, end: (f"{v[0]},+9.910000E+37".encode() + end, Raises("overflow")), SCPI_REAL, SCPI_END),
)
SCPI_ERROR = st.builds(
    lambda code, msg, end: (f'{code:+d},"{msg}"'.encode() + end, (code, msg)),
    st.integers(-99999, 99999),
    _text(PRINTABLE.filter(lambda c: c != '"'), max_size=40),
    SCPI_END,
)


def _spec_frame(body: str) -> bytes:
    return body.encode() + spectrometer.END


SPEC_ERROR = st.builds(
    lambda n, msg: (_spec_frame(f"ERR {n}" + (f" {msg}" if msg else "")), Raises(str(n))),
    st.integers(0, 999),
    _text(max_size=20),
)
SPEC_IDN = st.one_of(
    st.lists(SCPI_FIELD, min_size=4, max_size=4)
    .map(",".join)
    .filter(lambda s: not spectrometer._ERR.fullmatch(s))
    .map(lambda s: (_spec_frame(s), s)),
    SPEC_ERROR,
)
SPEC_OK = st.one_of(st.just((b"OK\n", None)), SPEC_ERROR)
SPEC_PIXELS = st.one_of(st.integers(1, spectrometer.MAX_PIXELS).map(lambda n: (_spec_frame(f"PIX {n}"), n)), SPEC_ERROR)
SPEC_REAL = st.floats(allow_nan=False, allow_infinity=False).map(lambda v: (repr(v), v))
SPEC_CAL = st.one_of(
    st.lists(SPEC_REAL, min_size=4, max_size=4).map(
        lambda cs: (_spec_frame("CAL " + ",".join(t for t, _ in cs)), tuple(v for _, v in cs))
    ),
    SPEC_ERROR,
)
SPEC_INT = st.one_of(
    st.floats(1e-3, 1e9).map(lambda ms: _fixed(ms, 3)).filter(lambda t: t[1] > 0).map(lambda t: (_spec_frame(f"INT {t[0]}"), t[1])),
    SPEC_ERROR,
)
SPEC_SHUTTER = st.one_of(st.booleans().map(lambda o: (_spec_frame("SHUT OPEN" if o else "SHUT CLOSED"), o)), SPEC_ERROR)
SPEC_COUNTS = st.lists(st.integers(0, spectrometer.FULL_SCALE_COUNTS), min_size=1, max_size=40)


def _data_line(counts: list[int]) -> tuple[bytes, int, int]:
    body = ",".join(map(str, counts)).encode()
    return body + spectrometer.END, len(counts), spectrometer.crc16(body)


SPEC_HEADER = st.one_of(
    SPEC_COUNTS.map(_data_line).map(lambda d: (_spec_frame(f"SPEC {d[1]} {d[2]:04X}"), (d[1], d[2]))),
    SPEC_ERROR,
)

GCODE_REPLY = st.one_of(
    st.just((b"ok\r\n", None)),
    st.integers(0, 999).map(lambda n: (f"error:{n}\r\n".encode(), Raises(f"error:{n}"))),
    st.integers(0, 999).map(lambda n: (f"ALARM:{n}\r\n".encode(), Raises(f"ALARM:{n}"))),
)
GCODE_AXIS = st.floats(-1e6, 1e6).map(lambda v: _fixed(v, 3))


@st.composite
def _gcode_status(draw: Any) -> tuple[bytes, Any]:
    if draw(st.integers(0, 9)) == 0:
        n = draw(st.integers(0, 999))
        return f"ALARM:{n}\r\n".encode(), Raises(f"ALARM:{n}")
    state = draw(st.sampled_from(sorted(gcode._STATES)))
    sub = draw(st.sampled_from(["", ":0", ":1"])) if state in ("Hold", "Door") else ""
    axes = draw(st.lists(GCODE_AXIS, min_size=3, max_size=3))
    key = draw(st.sampled_from(["MPos", "WPos"]))
    fields = [f"{key}:{','.join(t for t, _ in axes)}"]
    feed = None
    if draw(st.booleans()):
        f = draw(st.floats(0, 1e5).map(lambda v: _fixed(v, 1)))
        fields.append(f"FS:{f[0]},{draw(st.integers(0, 30000))}" if draw(st.booleans()) else f"F:{f[0]}")
        feed = f[1]
    fields += draw(st.lists(st.sampled_from(["Bf:15,128", "Ln:99", "Ov:100,100,100", "Pn:XYZ", "A:SFM", "WCO:0.000,-5.000,0.000"])))
    draw(st.randoms()).shuffle(fields)
    frame = f"<{state}{sub}|{'|'.join(fields)}>\r\n".encode()
    position = tuple(v for _, v in axes)
    expected = gcode.Status(state + sub, position if key == "MPos" else None, position if key == "WPos" else None, feed)
    return frame, expected


GCODE_BANNER = st.builds(
    lambda before, version: (before + f"\r\nGrbl {version} ['$' for help]\r\n".encode(), version),
    st.sampled_from([b"", b"ok\r\n", b"ALARM:1\r\n", b"[MSG:Reset to continue]\r\n"]),
    st.from_regex(r"\A[0-9][0-9.]{0,5}[a-z]?\Z"),
)


@dataclass(frozen=True)
class Rig:
    """A generic line-protocol rig's configured reply: what it parses with and how it frames."""

    reply: re.Pattern[str]
    error: re.Pattern[str] | None
    terminator: bytes
    encoding: str

    def parse(self, frame: bytes) -> Any:
        return line.parse_reply(frame, self.reply, self.error, self.terminator, self.encoding)


RIGS = {
    "value": Rig(re.compile(r"VAL (?P<value>[-+]?\d+(\.\d+)?)"), re.compile(r"ERR (?P<code>.+)"), b"\r\n", "ascii"),
    "word": Rig(re.compile(r"OK (?P<word>\S+)"), re.compile(r"E(?P<code>\d+)"), b"\n", "utf-8"),
    "any": Rig(re.compile(r"(?P<any>.*)"), None, b";", "latin-1"),
}


def _line_replies(rig: Rig) -> st.SearchStrategy[tuple[bytes, Any]]:
    if rig is RIGS["value"]:
        ok = st.builds(lambda v: (f"VAL {v[0]}\r\n".encode(), {"value": v[1]}), st.floats(-1e6, 1e6).map(lambda v: _fixed(v, 3)))
        err = _text(min_size=1).filter(str.strip).map(lambda c: (f"ERR {c}\r\n".encode(), Raises(f"ERR {c}".strip()[4:])))
        return st.one_of(ok, err)
    if rig is RIGS["word"]:
        word = _text(st.characters(blacklist_categories=("Cs", "Zs", "Cc", "Zl", "Zp")), min_size=1, max_size=10)
        word = word.filter(lambda w: not line._NUMBER.fullmatch(w) and len(w.split()) == 1 and w == w.strip())
        ok = word.map(lambda w: (f"OK {w}\n".encode(), {"word": w}))
        err = st.integers(0, 10**6).map(lambda n: (f"E{n}\n".encode(), Raises(str(n))))
        return st.one_of(ok, err)
    text = _text(st.characters(min_codepoint=0x21, max_codepoint=0xFF).filter(lambda c: c != ";"), max_size=20)
    return text.map(lambda t: (t.encode("latin-1") + b";", {"any": line._value(t.strip())}))


# --- the parsers ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One parser: its well-formed replies and what any successful parse must satisfy."""

    name: str
    parse: Callable[[bytes], Any]
    replies: st.SearchStrategy[tuple[bytes, Any]]
    valid: Callable[[Any], bool]
    # For parsers that take the reply's address: build the expected value from (address, prompt, value).
    address: bool = False


def _ne_case(name: str, parse: Any, data: Any, valid: Callable[[Any], bool], value: Callable[[Any], Any]) -> Case:
    replies = _ne(data).map(lambda fe: (fe[0], fe[1] if isinstance(fe[1], Raises) else value(fe[1])))
    return Case(name, parse, replies, valid, address=True)


CASES = [
    Case("ika.parse_reading", ika.parse_reading, IKA_READING, lambda r: _finite(r[0]) and 0 <= r[1] <= 99),
    Case(
        "ika.parse_temperature",
        ika.parse_temperature,
        IKA_READING.filter(lambda fe: isinstance(fe[1], Raises) or ika.ABSOLUTE_ZERO_C <= fe[1][0] <= ika.TEMPERATURE_MAX_C),
        lambda r: ika.ABSOLUTE_ZERO_C <= r[0] <= ika.TEMPERATURE_MAX_C and 0 <= r[1] <= 99,
    ),
    Case("ika.parse_name", ika.parse_name, IKA_NAME, lambda r: _printable(r) and 0 < len(r) <= 80),
    Case("ika.parse_watchdog_echo", ika.parse_watchdog_echo, IKA_ECHO, lambda r: _finite(r) and r >= 0),
    _ne_case(
        "new_era.parse_reply",
        new_era.parse_reply,
        st.one_of(st.just(("", "")), NE_NUMBER.map(lambda t: (t, t)), NE_VERSION),
        lambda r: 0 <= r.address <= 99 and r.prompt in new_era.PROMPTS and _printable(r.data) and not r.data.startswith("?"),
        lambda apv: new_era.Reply(*apv),
    ),
    _ne_case("new_era.parse_status", new_era.parse_status, st.just(("", None)), lambda r: r in new_era.PROMPTS, lambda apv: apv[1]),
    _ne_case(
        "new_era.parse_diameter",
        new_era.parse_diameter,
        NE_NUMBER.map(lambda t: (t, float(t))),
        lambda r: _finite(r) and r >= 0,
        lambda apv: apv[2],
    ),
    _ne_case("new_era.parse_rate", new_era.parse_rate, _units(new_era.RATE_UNITS), lambda r: _finite(r) and r >= 0, lambda apv: apv[2]),
    _ne_case(
        "new_era.parse_volume", new_era.parse_volume, _units(new_era.VOLUME_UNITS), lambda r: _finite(r) and r >= 0, lambda apv: apv[2]
    ),
    _ne_case(
        "new_era.parse_direction",
        new_era.parse_direction,
        st.sampled_from(["INF", "WDR"]).map(lambda d: (d, d)),
        lambda r: r in ("INF", "WDR"),
        lambda apv: apv[2],
    ),
    _ne_case(
        "new_era.parse_version", new_era.parse_version, NE_VERSION, lambda r: _printable(r) and 0 < len(r) <= 31, lambda apv: apv[2]
    ),
    _ne_case(
        "new_era.parse_dispensed",
        new_era.parse_dispensed,
        NE_DISPENSED,
        lambda r: r.prompt in new_era.PROMPTS and _finite(r.infused_ul, r.withdrawn_ul) and min(r.infused_ul, r.withdrawn_ul) >= 0,
        lambda apv: new_era.Dispensed(apv[1], *apv[2]),
    ),
    Case("scpi.parse_idn", scpi.parse_idn, SCPI_IDN, _idn_ok),
    Case("scpi.parse_number", scpi.parse_number, SCPI_NUMBER, _finite),
    Case("scpi.parse_output_state", scpi.parse_output_state, SCPI_OUTPUT, lambda r: isinstance(r, bool)),
    Case("scpi.parse_read", scpi.parse_read, SCPI_READ, lambda r: _finite(*r) and max(map(abs, r)) < scpi.OVERFLOW),
    Case(
        "scpi.parse_measurement",
        scpi.parse_measurement,
        SCPI_READ.filter(
            lambda fe: isinstance(fe[1], Raises) or (abs(fe[1][0]) <= scpi.MAX_READING_V and abs(fe[1][1]) <= scpi.MAX_READING_A)
        ),
        lambda r: abs(r[0]) <= scpi.MAX_READING_V and abs(r[1]) <= scpi.MAX_READING_A,
    ),
    Case("scpi.parse_error", scpi.parse_error, SCPI_ERROR, lambda r: isinstance(r[0], int) and _printable(r[1]) and '"' not in r[1]),
    Case("spectrometer.parse_ok", spectrometer.parse_ok, SPEC_OK, lambda r: r is None),
    Case("spectrometer.parse_idn", spectrometer.parse_idn, SPEC_IDN, _idn_ok),
    Case("spectrometer.parse_pixels", spectrometer.parse_pixels, SPEC_PIXELS, lambda r: 1 <= r <= spectrometer.MAX_PIXELS),
    Case("spectrometer.parse_calibration", spectrometer.parse_calibration, SPEC_CAL, lambda r: len(r) == 4 and _finite(*r)),
    Case("spectrometer.parse_integration", spectrometer.parse_integration, SPEC_INT, lambda r: _finite(r) and r > 0),
    Case("spectrometer.parse_shutter", spectrometer.parse_shutter, SPEC_SHUTTER, lambda r: isinstance(r, bool)),
    Case(
        "spectrometer.parse_header",
        spectrometer.parse_header,
        SPEC_HEADER,
        lambda r: 1 <= r[0] <= spectrometer.MAX_PIXELS and 0 <= r[1] <= 0xFFFF,
    ),
    Case("gcode.parse_ok", gcode.parse_ok, GCODE_REPLY, lambda r: r is None),
    Case("gcode.parse_status", gcode.parse_status, _gcode_status(), _status_ok),
    Case("gcode.parse_banner", gcode.parse_banner, GCODE_BANNER, lambda r: r is None or (isinstance(r, str) and r.strip() == r and r)),
    *(Case(f"line.parse_reply[{name}]", rig.parse, _line_replies(rig), _line_values_ok) for name, rig in RIGS.items()),
]
BY_NAME = {c.name: c for c in CASES}


def test_every_reply_parser_is_covered():
    """A parser added to a driver module without a case here fails this test."""
    covered = {c.name.split("[")[0] for c in CASES} | {"spectrometer.parse_data"}
    found = {
        f"{module.__name__.split('.')[-1]}.{name}"
        for module in (ika, new_era, scpi, spectrometer, gcode, line)
        for name in dir(module)
        if name.startswith("parse_") and callable(getattr(module, name))
    }
    assert found == covered


# --- near misses -----------------------------------------------------------------------------------------

_NOISE = st.binary(min_size=1, max_size=6) | st.sampled_from([b"\r", b"\n", b"\r\n", b"\x02", b"\x03", b"\xff", b"\x00", b",", b" "])


@st.composite
def near_miss(draw: Any, frame: bytes) -> bytes:
    """``frame`` with one to three corruptions that a serial line or a confused device produces."""
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(frame)))
        op = draw(st.sampled_from(["cut", "drop", "flip", "replace", "insert", "append", "prepend", "stretch", "digits", "twice"]))
        if op == "cut":
            frame = frame[:i]
        elif op == "drop":
            frame = frame[:i] + frame[i + 1 :]
        elif op == "flip" and i < len(frame):
            frame = frame[:i] + bytes([frame[i] ^ (1 << draw(st.integers(0, 7)))]) + frame[i + 1 :]
        elif op == "replace" and i < len(frame):
            frame = frame[:i] + bytes([draw(st.integers(0, 255))]) + frame[i + 1 :]
        elif op == "insert":
            frame = frame[:i] + draw(_NOISE) + frame[i:]
        elif op == "append":
            frame = frame + draw(_NOISE)
        elif op == "prepend":
            frame = draw(_NOISE) + frame
        elif op == "stretch" and i < len(frame):  # a byte repeated (a long name, a doubled separator)
            frame = frame[:i] + frame[i : i + 1] * draw(st.sampled_from([2, 7, 81])) + frame[i + 1 :]
        elif op == "digits" and (at := [k for k, b in enumerate(frame) if 0x30 <= b <= 0x39]):
            k = draw(st.sampled_from(at))  # a runaway number: 400 digits overflow a float
            frame = frame[:k] + frame[k : k + 1] * 400 + frame[k + 1 :]
        elif op == "twice":
            frame = frame + frame
    return frame


def _reply_and_noise(case: Case) -> st.SearchStrategy[bytes]:
    frames = case.replies.map(lambda fe: fe[0])
    return st.one_of(frames.flatmap(near_miss), st.binary(max_size=80), frames)


def _check(case: Case, parse: Callable[[bytes], Any], frame: bytes) -> None:
    try:
        result = parse(frame)
    except InstrumentError as exc:
        if isinstance(exc, DeviceError):
            assert isinstance(exc.code, str) and exc.code, f"{case.name}: DeviceError without a code for {frame!r}"
        return
    assert case.valid(result), f"{case.name}: {frame!r} parsed to the invalid value {result!r}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@PROPS
@given(data=st.data())
def test_well_formed_replies_parse_to_their_value(case, data):
    frame, expected = data.draw(case.replies, label="reply")
    address = frame[1:3] if case.address else None
    args = (int(address),) if address is not None else ()
    if isinstance(expected, Raises):
        with pytest.raises(DeviceError) as info:
            case.parse(frame, *args)
        assert info.value.code == expected.code
        return
    result = case.parse(frame, *args)
    assert result == expected
    assert case.valid(result)
    if case.address:  # the same reply is refused from any other address
        other = (int(address) + 1) % 100
        with pytest.raises(ProtocolError, match="address"):
            case.parse(frame, other)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@PROPS
@given(data=st.data())
def test_near_misses_and_noise_give_a_value_or_an_instrument_error(case, data):
    frame = data.draw(_reply_and_noise(case), label="frame")
    if case.address:
        address = data.draw(st.none() | st.integers(0, 99), label="address")
        _check(case, lambda f: case.parse(f, address), frame)
    else:
        _check(case, case.parse, frame)


@PROPS
@given(data=st.data())
def test_spectrum_data_lines_check_count_and_checksum(data):
    counts = data.draw(SPEC_COUNTS, label="counts")
    frame, n, crc = _data_line(counts)
    assert spectrometer.parse_data(frame, n, crc) == tuple(counts)
    wrong = crc ^ data.draw(st.integers(1, 0xFFFF), label="crc error")
    with pytest.raises(ProtocolError, match="checksum"):
        spectrometer.parse_data(frame, n, wrong)
    garbled = data.draw(near_miss(frame) | st.binary(max_size=80), label="garbled")
    expect_n = data.draw(st.sampled_from([n, n + 1, max(1, n - 1)]), label="n")
    for check_crc in (crc, spectrometer.crc16(garbled.rstrip(b"\n"))):  # stale and matching checksums
        try:
            got = spectrometer.parse_data(garbled, expect_n, check_crc)
        except InstrumentError:
            continue
        assert len(got) == expect_n and all(0 <= c <= spectrometer.FULL_SCALE_COUNTS for c in got)


@PROPS
@given(frame=st.binary(max_size=60) | _text(max_size=30).map(str.encode), text=st.text(max_size=40))
def test_shared_ascii_helpers(frame, text):
    try:
        assert _printable(printable_text(frame, frame))
    except InstrumentError:
        pass
    try:
        idn = check_idn(text, frame)
    except InstrumentError:
        return
    assert idn == text and len(text.split(",")) == 4


@PROPS
@given(coefficients=st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=4, max_size=4), n=st.integers(1, 64))
def test_wavelength_axis_is_finite_and_ascending_or_a_device_error(coefficients, n):
    try:
        axis = spectrometer.wavelengths(coefficients, n)
    except DeviceError as exc:
        assert exc.code == "calibration"
        return
    assert len(axis) == n and all(math.isfinite(w) for w in axis) and all(b > a for a, b in zip(axis, axis[1:]))


# --- through the transport: framing plus parsing ---------------------------------------------------------

# (case, command, end, start)
FRAMED = [
    ("ika.parse_reading", b"IN_PV_2\r\n", ika.EOL, None),
    ("new_era.parse_dispensed", b"0DIS\r", new_era.ETX, new_era.STX),
    ("scpi.parse_read", b":READ?\n", b"\n", None),
    ("spectrometer.parse_header", b"MEAS?\n", spectrometer.END, None),
    ("gcode.parse_status", b"?", gcode.EOL, None),
    ("line.parse_reply[value]", b"GET\n", b"\r\n", None),
]


@pytest.mark.parametrize("name, command, end, start", FRAMED, ids=[f[0] for f in FRAMED])
@PROPS
@given(data=st.data())
def test_transport_query_gives_a_value_or_an_instrument_error(name, command, end, start, data):
    """Whatever the line delivers (nothing, half a frame, noise around a frame, a runaway reply)."""
    case = BY_NAME[name]
    reply = data.draw(_reply_and_noise(case) | st.binary(min_size=70, max_size=90), label="reply bytes")
    entries = [{"dir": "tx", "port": "p", "hex": command.hex()}]
    if reply:
        entries.append({"dir": "rx", "port": "p", "hex": reply.hex()})
    parse = (lambda f: case.parse(f, 0)) if case.address else case.parse
    settings_ = SerialSettings(timeout_s=0.05, max_frame_bytes=64)
    transport = Transport("p", settings_, name="dev", opener=lambda: ReplayPort(entries))
    try:
        result = transport.query(command, end=end, start=start, parse=parse, idempotent=False)
    except InstrumentError as exc:
        assert exc.instrument == "dev"
        return
    finally:
        transport.close()
    assert case.valid(result)


# --- format, then parse: the value comes back within the protocol's resolution -------------------------


@PROPS
@given(temp_c=st.floats(0.0, 550.0), rpm=st.floats(0.0, 6000.0), watchdog_s=st.integers(ika.WATCHDOG_MIN_S, ika.WATCHDOG_MAX_S))
def test_ika_set_points_read_back_within_resolution(temp_c, rpm, watchdog_s):
    # The device answers IN_SP_1 / IN_SP_4 with the number it was sent, and echoes the watchdog time.
    sent = ika.format_set_temperature(temp_c).removeprefix(b"OUT_SP_1 ").removesuffix(ika.EOL)
    value, channel = ika.parse_reading(sent + b" 1" + ika.EOL)
    assert channel == 1 and abs(value - temp_c) <= 0.05 + 1e-9
    sent = ika.format_set_speed(rpm).removeprefix(b"OUT_SP_4 ").removesuffix(ika.EOL)
    value, channel = ika.parse_reading(sent + b" 4" + ika.EOL)
    assert channel == 4 and abs(value - rpm) <= 0.5 and value == int(value)
    echo = ika.format_watchdog(watchdog_s).removeprefix(b"OUT_WD1@")
    assert ika.parse_watchdog_echo(echo) == watchdog_s


@PROPS
@given(
    volume_ul=st.floats(1e-3, 9.999e6),
    rate_ul_min=st.floats(1e-3, 9.999e6),
    diameter_mm=st.floats(0.1, 50.0),
    address=st.integers(0, 99),
)
def test_new_era_settings_read_back_within_resolution(volume_ul, rate_ul_min, diameter_mm, address):
    # The pump answers a VOL / RAT / DIA query with the data it was set to.
    text, unit, sent = new_era.best_units(volume_ul, new_era.VOLUME_UNITS)
    assert sum(c.isdigit() for c in text) <= 4
    assert new_era.parse_volume(_ne_frame(address, "S", text + unit), address) == sent
    assert abs(sent - volume_ul) <= 0.5 * 10 ** -_decimals(text) * new_era.VOLUME_UNITS[unit] * (1 + 1e-9)
    command = new_era.format_rate(address, rate_ul_min)
    assert command.startswith(f"{address}RAT".encode()) and command.endswith(b"\r")
    data = command.removeprefix(f"{address}RAT".encode()).removesuffix(b"\r").decode()
    got = new_era.parse_rate(_ne_frame(address, "I", data), address)
    factor = new_era.RATE_UNITS[data[-2:]]
    assert abs(got - rate_ul_min) <= 0.5 * 10 ** -_decimals(data[:-2]) * factor * (1 + 1e-9)
    text = new_era.format_number(diameter_mm)
    got = new_era.parse_diameter(_ne_frame(address, "S", text), address)
    assert abs(got - diameter_mm) <= 0.5 * 10 ** -_decimals(text) * (1 + 1e-9) and _decimals(text) >= 2
    infused = new_era.format_number(volume_ul / 1000.0)
    d = new_era.parse_dispensed(_ne_frame(address, "S", f"I{infused}W0.000ML"), address)
    assert d == new_era.Dispensed("S", float(infused) * 1000.0, 0.0)


def _decimals(text: str) -> int:
    return len(text.partition(".")[2])


@PROPS
@given(voltage_v=st.floats(-1100.0, 1100.0), current_a=st.floats(1e-9, 10.5))
def test_scpi_values_read_back_within_resolution(voltage_v, current_a):
    # The 2400 answers :SOUR:VOLT? and :SENS:CURR:PROT? in the NR3 form it is sent (7 significant digits).
    level = scpi.format_source_voltage(voltage_v).removeprefix(b":SOUR:VOLT ")
    assert math.isclose(scpi.parse_number(level), voltage_v, rel_tol=5e-7, abs_tol=1e-300)
    compliance = scpi.format_compliance(current_a, "\r\n").removeprefix(b":SENS:CURR:PROT ")
    assert math.isclose(scpi.parse_number(compliance), current_a, rel_tol=5e-7)
    volts, amps = scpi.parse_read(level.rstrip(b"\n") + b"," + compliance)
    assert math.isclose(volts, voltage_v, rel_tol=5e-7, abs_tol=1e-300) and math.isclose(amps, current_a, rel_tol=5e-7)
    rng = scpi.format_voltage_range(-voltage_v).removeprefix(b":SOUR:VOLT:RANG ")
    assert math.isclose(scpi.parse_number(rng), abs(voltage_v), rel_tol=5e-7, abs_tol=1e-300)


@PROPS
@given(integration_ms=st.floats(1e-3, 1e9), counts=SPEC_COUNTS)
def test_spectrometer_values_read_back_within_resolution(integration_ms, counts):
    # INT <ms> is both the command and the INT? reply; SPEC <n> <crc> announces the data line.
    back = spectrometer.parse_integration(spectrometer.format_integration(integration_ms))
    assert abs(back - integration_ms) <= 5e-4 + 1e-12 * integration_ms
    frame, n, crc = _data_line(counts)
    header = spectrometer.parse_header(f"SPEC {n} {crc:04X}\n".encode())
    assert header == (n, crc)
    assert spectrometer.parse_data(frame, *header) == tuple(counts)


@PROPS
@given(target=st.tuples(*[st.floats(-1e6, 1e6)] * 3), feed=st.floats(0.05, 1e5), state=st.sampled_from(["Idle", "Run"]))
def test_gcode_move_target_reads_back_within_resolution(target, feed, state):
    # A status report gives the position in the form the move was sent in (3 decimals, feed 1 decimal).
    block = gcode.format_move(*target, feed).decode()
    words = dict((w[0], w[1:]) for w in block.split()[4:])
    assert set(words) == {"X", "Y", "Z", "F"}
    status = gcode.parse_status(f"<{state}|MPos:{words['X']},{words['Y']},{words['Z']}|FS:{words['F']},0>\r\n".encode())
    assert status.state == state and status.wpos is None
    assert all(abs(got - want) <= 5e-4 + 1e-9 for got, want in zip(status.mpos, target))
    assert abs(status.feed_mm_min - feed) <= 0.05 + 1e-9


@PROPS
@given(value=st.floats(-1e6, 1e6), word=st.sampled_from(["on", "off", "A1"]))
def test_line_command_format_reads_back_within_resolution(value, word):
    # A rig that echoes its set point: the template's precision is the resolution.
    sent = line.format_command("VAL {value:.3f}", {"value": value}, "\r\n")
    assert RIGS["value"].parse(sent)["value"] == pytest.approx(value, abs=5e-4 + 1e-12)
    sent = line.format_command("OK {word}", {"word": word}, "\n", "utf-8")
    assert RIGS["word"].parse(sent) == {"word": word}
