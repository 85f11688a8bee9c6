"""Safety limits, judged from the wire: random and hostile proposals go through every registered driver to its
firmware simulator on a real pseudo-terminal, and an independent parser per protocol reads every byte the
driver wrote (the transport's :class:`Transcript`) and checks that no command outside the instrument's
configured limits was ever sent.

The parsers below are written from the protocols (NAMUR, New Era basic mode, GRBL, SCPI, the spectrometer's
line protocol, the rig's line commands), not from the drivers' formatting code: they read the number *as it
went out* (after the driver rounded it), so a value that passes a check but rounds past a limit when
formatted is caught. Each driver is tried with round limits and with "off-grid" limits that the driver's
number format cannot represent exactly (149.97 °C sent with one decimal, 1999.9996 ms with three …).

Every call must either work or raise an :class:`InstrumentError`; an action refused by ``validate`` must
send nothing at all, and an action refused later may only have sent queries.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from instruments.errors import InstrumentError, LimitError
from instruments.gcode import GcodeStage
from instruments.ika import IkaHotplate
from instruments.line import LineDriver
from instruments.new_era import NewEraPump
from instruments.registry import driver_specs
from instruments.scpi import Keithley2400
from instruments.spectrometer import Spectrometer
from instruments.transport import Transport
from orchestrator.executor import Executor
from orchestrator.procedures import Action, Wait
from simulators.lab import SimLab
from tests.instruments.rig import serve

INF, NAN = math.inf, math.nan
# Hypothesis examples per driver and limit variant. The draws are derandomized: with free draws the floor on
# refused actions below failed by chance (4 of 78 once), and the bounds themselves are tried in the list test.
EXAMPLES = 30


# --- the checkers: one small, independent parser per protocol ----------------------------------------------


def _decimal(text: str) -> float | None:
    """A plain decimal number (no exponent, no nan/inf), else None."""
    return float(text) if re.fullmatch(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)", text) else None


def _nr(text: str) -> float | None:
    """A SCPI / printf number (NR1, NR2, NR3), finite, else None."""
    if not re.fullmatch(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?", text):
        return None
    value = float(text)
    return value if math.isfinite(value) else None


class Checker:
    """Reads the bytes a driver wrote, command by command, and notes every command outside the limits.

    ``feed`` returns the commands in the bytes that change the device's state (everything but queries), so a
    refused action can be checked to have changed nothing.
    """

    end = b"\n"

    def __init__(self, case: "Case"):
        self.case = case
        self.limits = case.limits
        self.options = case.options
        self.violations: list[str] = []
        self.checked = 0  # numbers checked
        self._buf = b""

    def bad(self, command: str, why: str) -> None:
        self.violations.append(f"{command!r}: {why}")

    def within(self, command: str, what: str, value: float | None, low: float, high: float, positive: bool = False) -> None:
        self.checked += 1
        if value is None:
            self.bad(command, f"{what} is not a plain finite number")
        elif not low <= value <= high:
            self.bad(command, f"{what} {value!r} is outside [{low!r}, {high!r}]")
        elif positive and value <= 0:
            self.bad(command, f"{what} {value!r} is not positive")

    def feed(self, data: bytes) -> list[str]:
        changed: list[str] = []
        self._buf += data
        while (i := self._buf.find(self.end)) >= 0:
            line, self._buf = self._buf[:i], self._buf[i + len(self.end) :]
            try:
                text = line.decode("ascii")
            except UnicodeDecodeError:
                self.bad(repr(line), "not ASCII")
                continue
            if self.command(text):
                changed.append(text)
        return changed

    def command(self, text: str) -> bool:
        """Checks one command; returns whether it changes the device's state."""
        raise NotImplementedError

    def begin_call(self) -> None:
        """Called before each action."""


class NamurChecker(Checker):
    """IKA NAMUR: ``OUT_SP_1`` within [0, min(max_temp_c, the device's safety temperature)], ``OUT_SP_4`` within
    [0, max_stir_rpm], the watchdog armed with the configured time; nothing else but the documented commands."""

    end = b"\r\n"
    SAFETY_TEMP_C = 350.0  # what the simulated device answers to IN_SP_3
    QUERIES = {"IN_NAME", "IN_PV_1", "IN_PV_2", "IN_PV_4", "IN_SP_1", "IN_SP_3", "IN_SP_4"}
    SETS = {"RESET", "START_1", "STOP_1", "START_4", "STOP_4"}

    def command(self, text: str) -> bool:
        if text in self.QUERIES:
            return False
        if text in self.SETS:
            return True
        if m := re.fullmatch(r"OUT_SP_1 (\S+)", text):
            self.within(text, "temperature set point", _decimal(m[1]), 0.0, min(self.limits.max_temp_c, self.SAFETY_TEMP_C))
        elif m := re.fullmatch(r"OUT_SP_4 (\S+)", text):
            self.within(text, "stirring speed", _decimal(m[1]), 0.0, self.limits.max_stir_rpm)
        elif m := re.fullmatch(r"OUT_WD1@(\S+)", text):
            wd = float(self.options.watchdog_s)
            self.within(text, "watchdog time", _decimal(m[1]), wd, wd)
        else:
            self.bad(text, "not a NAMUR command this hotplate is driven with")
        return True


class NewEraChecker(Checker):
    """New Era basic mode: only the configured address; ``DIA`` the configured syringe; each ``VOL`` (in the
    units last set by ``VOLUL``/``VOLML``) within (0, max_volume_ul or syringe_volume_ul]; each ``RAT`` (in its
    units) within (0, max_rate_ul_min]; numbers of at most 4 digits; ``RUN`` only after a volume and a rate."""

    end = b"\r"
    VOLUME = {"UL": 1.0, "ML": 1000.0}
    RATE = {"UM": 1.0, "MM": 1000.0, "UH": 1 / 60.0, "MH": 1000.0 / 60.0}
    NUMBER = r"(\d{1,4}(?:\.\d{0,3})?|\.\d{1,3})"

    def __init__(self, case: "Case"):
        super().__init__(case)
        self.units: str | None = None
        self.volume_set = self.rate_set = False

    def number(self, text: str, command: str) -> float | None:
        if not re.fullmatch(self.NUMBER, text) or sum(c.isdigit() for c in text) > 4:
            self.bad(command, f"{text!r} is not a number of at most 4 digits")
            return None
        return float(text)

    def command(self, text: str) -> bool:
        m = re.fullmatch(r"(\d{1,2})([A-Z]{0,3})(.*)", text)
        if m is None:
            self.bad(text, "not <address><command><data>")
            return True
        address, cmd, data = int(m[1]), m[2], m[3]
        if address != self.options.address:
            self.bad(text, f"address {address}, not the configured {self.options.address}")
        if cmd in ("", "VER", "DIS") and not data or cmd in ("DIA", "VOL", "RAT", "DIR") and not data:
            return False  # status and queries
        if cmd == "DIA":
            value, want = self.number(data, text), self.options.syringe_diameter_mm
            if value is not None and abs(value - want) > 1e-3 * want:
                self.bad(text, f"diameter {value} mm is not the configured syringe's {want} mm")
        elif cmd == "VOL" and data in self.VOLUME:
            self.units = data
        elif cmd == "VOL":
            value = self.number(data, text)
            if self.units is None:
                self.bad(text, "a volume before its units were set")
            elif value is not None:
                high = self.limits.max_volume_ul or self.limits.syringe_volume_ul
                self.within(text, "volume µL", value * self.VOLUME[self.units], 0.0, high, positive=True)
                self.within(text, "volume µL", value * self.VOLUME[self.units], 0.0, self.limits.syringe_volume_ul)
            self.volume_set = True
        elif cmd == "RAT":
            rm = re.fullmatch(r"(.*)(UM|MM|UH|MH)", data)
            value = self.number(rm[1], text) if rm else None
            if rm is None:
                self.bad(text, "rate without units")
            elif value is not None:
                self.within(text, "rate µL/min", value * self.RATE[rm[2]], 0.0, self.limits.max_rate_ul_min, positive=True)
            self.rate_set = True
        elif cmd in ("DIR", "CLD"):
            if data not in ("INF", "WDR"):
                self.bad(text, "direction is not INF or WDR")
        elif cmd == "RUN" and not data:
            if not (self.volume_set and self.rate_set):
                self.bad(text, "RUN before a volume and a rate were set")
        elif cmd == "STP" and not data:
            pass
        else:
            self.bad(text, "not a command this pump is driven with")
        return True


class GrblChecker(Checker):
    """GRBL: real-time bytes apart, every line is ``$H`` or one absolute (G90), metric (G21), machine-coordinate
    (G53) feed move (G1, never the rapid G0) with X, Y, Z inside the envelope and 0 < F <= max_feed_mm_min."""

    REALTIME = {"?": False, "!": True, "~": True, "\x18": True}

    def feed(self, data: bytes) -> list[str]:
        changed: list[str] = []
        rest = bytearray()
        for byte in data:  # real-time bytes act at once, wherever they are
            ch = chr(byte)
            if ch in self.REALTIME:
                if self.REALTIME[ch]:
                    changed.append(repr(ch))
            else:
                rest.append(byte)
        return changed + super().feed(bytes(rest))

    def command(self, text: str) -> bool:
        line = text.replace(" ", "").upper()
        if line == "$H":
            return True
        words = re.findall(r"([A-Z])([-+]?(?:\d+(?:\.\d*)?|\.\d+))", line)
        if "".join(a + b for a, b in words) != line:
            self.bad(text, "not a line of G-code words")
            return True
        codes = [float(v) for letter, v in words if letter == "G"]
        axes = {letter: float(v) for letter, v in words if letter in "XYZF"}
        if sorted(codes) != [1.0, 21.0, 53.0, 90.0] or len(axes) != 4 or len(words) != 8:
            self.bad(text, "not one absolute metric G53 G1 move with X, Y, Z and F (G0, G91, G20 … cannot be checked)")
        lim = self.limits
        for axis, (low, high) in (("X", lim.x_mm), ("Y", lim.y_mm), ("Z", lim.z_mm)):
            self.within(text, axis, axes.get(axis), low, high)
        feed = axes.get("F")
        self.within(text, "feed", feed, 0.0, lim.max_feed_mm_min, positive=True)
        return True


class ScpiChecker(Checker):
    """Keithley 2400 SCPI: |source level| and the source range <= max_voltage_v, compliance within
    [1 nA, max_current_a]; and, tracking what *RST restores (0 V, 105 µA), the output is only switched on
    while the level and compliance in effect are within the limits."""

    QUERIES = {"*IDN?", ":SYST:ERR?", ":SOUR:VOLT?", ":SENS:CURR:PROT?", ":OUTP?", ":READ?"}
    SETS = {"*CLS", ":SOUR:FUNC VOLT", ':SENS:FUNC "CURR"', ":SENS:CURR:RANG:AUTO ON", ":FORM:ELEM VOLT,CURR", ":OUTP OFF"}

    def __init__(self, case: "Case"):
        super().__init__(case)
        self.end = case.options.terminator.encode()
        self.level_v, self.compliance_a = 0.0, 105e-6  # the 2400's power-on/*RST state

    def command(self, text: str) -> bool:
        lim = self.limits
        if text in self.QUERIES:
            return False
        if text in self.SETS:
            return True
        if text == "*RST":
            self.level_v, self.compliance_a = 0.0, 105e-6
        elif m := re.fullmatch(r":SOUR:VOLT:RANG (\S+)", text):
            value = _nr(m[1])
            self.within(text, "source range", value, 0.0, lim.max_voltage_v)
        elif m := re.fullmatch(r":SOUR:VOLT (\S+)", text):
            value = _nr(m[1])
            self.within(text, "source level", value, -lim.max_voltage_v, lim.max_voltage_v)
            self.level_v = value if value is not None else NAN
        elif m := re.fullmatch(r":SENS:CURR:PROT (\S+)", text):
            value = _nr(m[1])
            self.within(text, "current compliance", value, 1e-9, lim.max_current_a)
            self.compliance_a = value if value is not None else NAN
        elif text == ":OUTP ON":
            self.within(text, "compliance in effect", self.compliance_a, 1e-9, lim.max_current_a)
            self.within(text, "level in effect", self.level_v, -lim.max_voltage_v, lim.max_voltage_v)
        else:
            self.bad(text, "not a command this SourceMeter is driven with")
        return True


class SpectrometerChecker(Checker):
    """The spectrometer line protocol: ``INT`` within [min_integration_ms, max_integration_ms], at most
    ``max_averages`` exposures (``MEAS?``) per action."""

    QUERIES = {"*IDN?", "PIX?", "CAL?", "INT?", "SHUT?"}

    def begin_call(self) -> None:
        self.exposures = 0

    def command(self, text: str) -> bool:
        lim = self.limits
        if text in self.QUERIES:
            return False
        if text == "MEAS?":
            self.exposures = getattr(self, "exposures", 0) + 1
            if self.exposures > lim.max_averages:
                self.bad(text, f"exposure {self.exposures} in one action; max_averages is {lim.max_averages}")
            return True
        if text in ("SHUT OPEN", "SHUT CLOSE"):
            return True
        if m := re.fullmatch(r"INT (\S+)", text):
            self.within(text, "integration time ms", _decimal(m[1]), lim.min_integration_ms, lim.max_integration_ms)
        else:
            self.bad(text, "not a command of the spectrometer protocol")
        return True


class RigChecker(Checker):
    """The line rig as configured below: ``SET <x>`` and ``DOSE <x>`` inside the bounds the test configured
    for them (the test's own table, not the driver's), ``LED 0|1``, and the argument-less commands."""

    QUERIES = {"GET", "OUT?", "TOTAL"}

    def command(self, text: str) -> bool:
        bounds = self.case.extra["bounds"]
        if text in self.QUERIES:
            return False
        if text in ("ON", "OFF", "LED 0", "LED 1"):
            return True
        if m := re.fullmatch(r"(SET|DOSE) (\S+)", text):
            low, high = bounds[m[1]]
            self.within(text, m[1].lower(), _nr(m[2]), low, high)
        else:
            self.bad(text, "not a command of the rig")
        return True


# --- random and hostile values -------------------------------------------------------------------------------


def edges(low: float, high: float) -> list[float]:
    """The bounds, just past them (1e-9, one ulp, a relative 1e-12), plainly past them, and numbers that round
    across them."""
    out = [low, high, high + 1e-9, math.nextafter(high, INF), high * (1 + 1e-12) if high > 0 else high + 1e-12]
    out += [low - 1e-9, math.nextafter(low, -INF), low * (1 - 1e-12) if low > 0 else low - 1e-12]
    out += [high + 1, high * 1.5 + 1, round(high) + 1, low - 1, -abs(high)]
    for decimals in (0, 1, 2, 3):
        step = 10.0**-decimals
        out += [high + 0.4 * step, high - 0.4 * step, low - 0.4 * step, low + 0.4 * step]
    return out


NONFINITE = [NAN, INF, -INF, 1e308, -1e308, 10**400, -(10**400)]
WRONG_TYPES: list[Any] = ["100", "150.0", "nan", "", True, False, None, b"100", [1.0], {"x": 1}, 1 + 0j]


def spanning(low: float, high: float, inside: tuple[float, float] | None = None) -> st.SearchStrategy[Any]:
    """Numbers inside [low, high] (or the cheaper ``inside`` part of it), at and across its edges, far outside,
    and not finite."""
    lo, hi = inside or (low, high)
    width = high - low
    within = st.floats(lo, hi)
    return st.one_of(
        within, within, within,  # most proposals are inside: the ones that are sent are the ones checked
        st.sampled_from(edges(low, high)),
        st.floats(high - 0.01 * width, high + 0.01 * width),
        st.floats(low - 0.01 * width, low + 0.01 * width) if inside is None else st.floats(low - width, low),
        st.one_of(
            st.floats(high, high + 10 * width),
            st.floats(low - 10 * width, low),
            st.sampled_from(NONFINITE),
            st.integers(math.floor(low) - 2, math.ceil(high) + 2),
        ),
    )


def act(action: str, **kwargs: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple[str, dict[str, Any]]]:
    return st.tuples(st.just(action), st.fixed_dictionaries(kwargs))


def plain(*actions: str) -> st.SearchStrategy[tuple[str, dict[str, Any]]]:
    """The actions without arguments, as one choice (so they do not crowd out the ones with numbers)."""
    return st.sampled_from(actions).map(lambda action: (action, {}))


def act_mixed(action: str, inside: dict[str, Any], anywhere: dict[str, Any]) -> st.SearchStrategy[tuple[str, dict]]:
    """An action with several arguments: half the time all inside the limits (so it is sent and its bytes are
    checked), else each argument anywhere."""
    return act(action, **inside) | act(action, **anywhere)


def hostile_calls(calls: dict[str, dict[str, list[Any]]], base: dict[str, dict[str, Any]]) -> list[tuple[str, dict]]:
    """For each action and argument, the action with that argument replaced by each hostile value (the others
    from ``base``), plus extra, missing and misspelt arguments."""
    out: list[tuple[str, dict]] = []
    for action, args in calls.items():
        for arg, values in args.items():
            for value in values:
                out.append((action, {**base[action], arg: value}))
        out.append((action, {**base[action], "bogus": 1.0}))
        out.append((action, {**base[action], 1: 2}))
        if base[action]:
            first = next(iter(base[action]))
            out.append((action, {k: v for k, v in base[action].items() if k != first}))
    return out


UNKNOWN_ACTIONS = [
    ("connect", {}), ("close", {}), ("safe_state", {}), ("__init__", {}), ("validate", {}), ("_check_x", {}),
    ("transport", {}), ("", {}), ("SET", {}), ("format_command", {}),
]


# --- the drivers, with their limits --------------------------------------------------------------------------


@dataclass
class Case:
    kind: str
    variant: str
    limits: Any
    options: Any
    checker: type[Checker]
    actions: st.SearchStrategy[tuple[str, dict[str, Any]]]
    hostile: list[tuple[str, dict[str, Any]]]
    link: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.kind}-{self.variant}"


def ika_case(variant: str, max_temp_c: float, max_rpm: float) -> Case:
    limits = IkaHotplate.Limits(max_temp_c=max_temp_c, max_stir_rpm=max_rpm)
    # The longest watchdog lets the driver poll every 10 virtual minutes: holds and waits stay a few polls long.
    options = IkaHotplate.Options(watchdog_s=1500, poll_s=600.0)
    waits = st.floats(0.0, 3000.0)
    actions = st.one_of(
        act("set_temperature", temp_c=spanning(0.0, max_temp_c)),
        act("set_stir_rate", rpm=spanning(0.0, max_rpm)),
        act("wait_for_temperature", tolerance_c=spanning(0.1, 100.0), timeout_s=st.one_of(waits, st.sampled_from([-1.0, 86400.5, NAN]))),
        act("hold", duration_s=st.one_of(waits, st.sampled_from([-1e-9, 7 * 86400.0 + 1, INF])), tolerance_c=st.none() | spanning(0.1, 100.0)),
        plain("heat_off", "stir_off", "read_temperature", "keepalive"),
    )
    rounding_t = [max_temp_c + 0.004, max_temp_c + 0.04, max_temp_c - 0.04, max_temp_c + 0.049999, -0.04, -0.0, -1e-300]
    rounding_r = [max_rpm + 0.4, max_rpm + 0.49, max_rpm - 0.4, -0.4, -0.49, 0.49, -0.0]
    values_t = edges(0.0, max_temp_c) + NONFINITE + WRONG_TYPES + rounding_t + [-1.0, 0.0, 351.0, 1e6]
    values_r = edges(0.0, max_rpm) + NONFINITE + WRONG_TYPES + rounding_r + [-1, 0, 10**6]
    base = {
        "set_temperature": {"temp_c": 50.0}, "set_stir_rate": {"rpm": 300.0},
        "wait_for_temperature": {"tolerance_c": 5.0, "timeout_s": 600.0}, "hold": {"duration_s": 60.0, "tolerance_c": None},
        "heat_off": {},
    }
    calls = {
        "set_temperature": {"temp_c": values_t},
        "set_stir_rate": {"rpm": values_r},
        "wait_for_temperature": {"tolerance_c": [0.0, 0.0999, 100.1, *NONFINITE, *WRONG_TYPES], "timeout_s": [-1e-9, 86400.1, *NONFINITE, "60"]},
        "hold": {"duration_s": [-1e-9, 7 * 86400.0 + 1e-6, *NONFINITE, *WRONG_TYPES], "tolerance_c": [0.0, -1.0, 100.5, NAN, INF, "1", True]},
        "heat_off": {},
    }
    return Case("ika_namur", variant, limits, options, NamurChecker, actions, hostile_calls(calls, base), "usb-IKA_RCT_digital-if00")


def new_era_case(variant: str, syringe_ul: float, max_rate: float, max_volume: float | None) -> Case:
    limits = NewEraPump.Limits(syringe_volume_ul=syringe_ul, max_rate_ul_min=max_rate, max_volume_ul=max_volume)
    options = NewEraPump.Options(address=3, syringe_diameter_mm=4.699, reagent="DMF", poll_s=60.0, run_margin_s=60.0)
    top = max_volume or syringe_ul

    @st.composite
    def pumping(draw: Any, action: str) -> tuple[str, dict[str, Any]]:
        inside = draw(st.booleans())
        rate = draw(st.floats(0.1, max_rate) if inside else spanning(0.0, max_rate))
        volume = draw(st.floats(0.0, top) if inside else spanning(0.0, top))
        if isinstance(rate, (int, float)) and isinstance(volume, (int, float)) and 0 < rate <= max_rate and 0 < volume <= top:
            volume = min(volume, 15.0 * rate)  # at most a quarter of an hour of pumping (virtual time, 15 polls)
        return action, {"volume_ul": volume, "rate_ul_min": rate}

    actions = st.one_of(pumping("dispense"), pumping("withdraw"), act("stop"))
    rounding_v = [top + 0.04, top + 0.0004, top - 0.04, top * 1.0004, top * (1 + 4e-5), 0.0004, 1e-9, -0.0]
    rounding_r = [max_rate + 0.04, max_rate + 0.0004, max_rate * 1.0004, max_rate * (1 + 4e-5), 0.0004, 1e-9, -0.0]
    values_v = edges(0.0, top) + NONFINITE + WRONG_TYPES + rounding_v + [syringe_ul, syringe_ul + 1e-9, -1.0]
    values_r = edges(0.0, max_rate) + NONFINITE + WRONG_TYPES + rounding_r + [0.0, -1.0]
    base = {"dispense": {"volume_ul": 10.0, "rate_ul_min": 100.0}, "withdraw": {"volume_ul": 10.0, "rate_ul_min": 100.0}}
    calls = {
        "dispense": {"volume_ul": values_v, "rate_ul_min": values_r},
        "withdraw": {"volume_ul": values_v, "rate_ul_min": values_r},
    }
    return Case("new_era", variant, limits, options, NewEraChecker, actions, hostile_calls(calls, base), "usb-NE-1000-if00")


def grbl_case(variant: str, x: tuple, y: tuple, z: tuple, max_feed: float) -> Case:
    limits = GcodeStage.Limits(x_mm=x, y_mm=y, z_mm=z, max_feed_mm_min=max_feed)
    options = GcodeStage.Options(
        stations={"spin": (10.0, 20.0, 5.0), "quench": (150.0, 80.0, 1.0), "corner": tuple(math.floor(v * 1000) / 1000 for v in (x[1], y[1], z[1]))},
        safe_z_mm=30.0, feed_mm_min=500.0, poll_s=60.0, move_margin_s=10.0, ready_timeout_s=1.0, homing_timeout_s=120.0,
    )
    # Feeds of at least 50 mm/min inside the limits keep any move within a few polls of virtual time.
    feed = st.none() | spanning(0.0, max_feed, inside=(50.0, max_feed))
    actions = st.one_of(
        act_mixed(
            "move_to",
            {"x_mm": st.floats(*x), "y_mm": st.floats(*y), "z_mm": st.floats(*z), "feed_mm_min": st.none() | st.floats(50.0, max_feed)},
            {"x_mm": spanning(*x), "y_mm": spanning(*y), "z_mm": spanning(*z), "feed_mm_min": feed},
        ),
        act("move_to_station", station=st.sampled_from(["spin", "quench", "corner", "nowhere", "", "SPIN"]), feed_mm_min=feed),
        plain("home", "position", "halt"),
    )
    feeds = edges(0.0, max_feed) + NONFINITE + WRONG_TYPES + [0.0, -0.0, 1e-9, 0.04, 0.049, -50.0, max_feed + 0.04, max_feed + 0.049]
    base = {
        "move_to": {"x_mm": 10.0, "y_mm": 10.0, "z_mm": 10.0, "feed_mm_min": 1000.0},
        "move_to_station": {"station": "spin", "feed_mm_min": 1000.0},
    }
    calls = {
        "move_to": {
            "x_mm": edges(*x) + NONFINITE + WRONG_TYPES + [x[1] + 0.0004, x[0] - 0.0004, x[1] + 0.00049],
            "y_mm": edges(*y) + NONFINITE + WRONG_TYPES + [y[1] + 0.0004, y[0] - 0.0004],
            "z_mm": edges(*z) + NONFINITE + WRONG_TYPES + [z[1] + 0.0004, z[0] - 0.0004],
            "feed_mm_min": feeds,
        },
        "move_to_station": {"station": ["nowhere", "", None, 1, ["spin"], "spin ", "SPIN"], "feed_mm_min": feeds},
    }
    return Case("grbl", variant, limits, options, GrblChecker, actions, hostile_calls(calls, base), "usb-grbl-if00")


def scpi_case(variant: str, max_v: float, max_a: float) -> Case:
    limits = Keithley2400.Limits(max_voltage_v=max_v, max_current_a=max_a, max_points=11, max_settle_s=0.5)
    options = Keithley2400.Options()
    volts, amps = spanning(-max_v, max_v), spanning(1e-9, max_a)
    points = st.one_of(st.integers(2, 11), st.sampled_from([0, 1, 12, -2, 10**400, 2.0, True, "5", None]))
    actions = st.one_of(
        act_mixed(
            "source_voltage",
            {"voltage_v": st.floats(-max_v, max_v), "compliance_a": st.floats(1e-9, max_a)},
            {"voltage_v": volts, "compliance_a": amps},
        ),
        act_mixed(
            "iv_sweep",
            {"start_v": st.floats(-max_v, max_v), "stop_v": st.floats(-max_v, max_v), "points": st.integers(2, 11),
             "compliance_a": st.floats(1e-9, max_a), "settle_s": st.floats(0.0, 0.5)},
            {"start_v": volts, "stop_v": volts, "points": points, "compliance_a": amps, "settle_s": spanning(0.0, 0.5)},
        ),
        plain("output_off", "identify", "measure"),
    )
    values_v = edges(-max_v, max_v) + NONFINITE + WRONG_TYPES + [max_v * (1 + 4e-7), -max_v * (1 + 4e-7), max_v + 4e-7, 1e-320]
    values_a = edges(1e-9, max_a) + NONFINITE + WRONG_TYPES + [0.0, -0.0, 9.9999996e-10, max_a * (1 + 4e-7), -max_a, 5e-324]
    base = {
        "source_voltage": {"voltage_v": 0.5, "compliance_a": max_a / 2},
        "iv_sweep": {"start_v": -0.5, "stop_v": 0.5, "points": 3, "compliance_a": max_a / 2, "settle_s": 0.0},
        "measure": {}, "output_off": {},
    }
    calls = {
        "source_voltage": {"voltage_v": values_v, "compliance_a": values_a},
        "iv_sweep": {
            "start_v": values_v, "stop_v": values_v, "compliance_a": values_a,
            "points": [0, 1, 12, -1, 2.0, 11.0, True, "3", None, 10**400],
            "settle_s": [-1e-9, 0.5 + 1e-9, *NONFINITE, "0"],
        },
        "measure": {}, "output_off": {},
    }
    return Case("scpi_smu", variant, limits, options, ScpiChecker, actions, hostile_calls(calls, base), "usb-Keithley_2400-if00")


def spectrometer_case(variant: str, low: float, high: float) -> Case:
    limits = Spectrometer.Limits(min_integration_ms=low, max_integration_ms=high, max_averages=4)
    options = Spectrometer.Options(transfer_timeout_s=0.5)
    averages = st.one_of(st.integers(1, 4), st.sampled_from([0, -1, 5, 10**400, 2.0, True, None, "2"]))
    integration = st.none() | spanning(low, high)
    actions = st.one_of(
        act("set_integration", integration_ms=spanning(low, high)),
        act_mixed("measure", {"integration_ms": st.floats(low, high), "averages": st.integers(1, 4)}, {"integration_ms": integration, "averages": averages}),
        act_mixed("dark", {"integration_ms": st.floats(low, high), "averages": st.integers(1, 4)}, {"integration_ms": integration, "averages": averages}),
        plain("identify"),
    )
    values = edges(low, high) + NONFINITE + WRONG_TYPES + [high + 0.0004, high + 0.00049, low - 0.0004, low - 0.00049, 0.0, -0.0]
    base = {
        "set_integration": {"integration_ms": 10.0},
        "measure": {"integration_ms": 10.0, "averages": 1}, "dark": {"integration_ms": 10.0, "averages": 1},
    }
    counts = [0, -1, 5, 10**400, 1.0, True, None, "1", NAN]
    calls = {
        "set_integration": {"integration_ms": values},
        "measure": {"integration_ms": values, "averages": counts},
        "dark": {"integration_ms": values, "averages": counts},
    }
    return Case("line_spectrometer", variant, limits, options, SpectrometerChecker, actions, hostile_calls(calls, base), "usb-LabSpec_SPX-512-if00")


def line_case(variant: str, set_bounds: tuple[float, float], dose_bounds: tuple[float, float]) -> Case:
    err, num = "ERR (?P<code>.+)", r"[-+]?\d+(?:\.\d+)?"
    config = {
        "ready_banner": r"READY rig v\d+",
        "ready_timeout_s": 1.0,
        "commands": {
            "set_speed": {"send": "SET {value:.1f}", "reply": rf"OK (?P<value>{num})", "error": err, "idempotent": True,
                          "args": {"value": {"min": set_bounds[0], "max": set_bounds[1]}}},
            "set_speed_exact": {"send": "SET {value}", "reply": r"OK (?P<value>\S+)", "error": err, "idempotent": True,
                                "args": {"value": {"min": set_bounds[0], "max": set_bounds[1]}}},
            "speed": {"send": "GET", "reply": rf"VAL (?P<value>{num})", "error": err, "idempotent": True},
            "pump_on": {"send": "ON", "reply": "OK ON", "error": err, "idempotent": True},
            "pump_off": {"send": "OFF", "reply": "OK OFF", "error": err, "idempotent": True},
            "output": {"send": "OUT?", "reply": r"OUT (?P<on>[01])", "error": err, "idempotent": True},
            "dose": {"send": "DOSE {volume_ul:.2f}", "reply": "OK", "error": err,
                     "args": {"volume_ul": {"min": dose_bounds[0], "max": dose_bounds[1]}}},
            "total": {"send": "TOTAL", "reply": rf"TOTAL (?P<total_ul>{num})", "error": err, "idempotent": True},
            "led": {"send": "LED {state:d}", "args": {"state": {"choices": [0, 1]}}, "idempotent": True},
        },
        "safe_state": ["pump_off", {"command": "set_speed", "args": {"value": set_bounds[0]}}],
    }
    options = LineDriver.Options.model_validate(config)
    actions = st.one_of(
        act("set_speed", value=spanning(*set_bounds)),
        act("set_speed_exact", value=spanning(*set_bounds)),
        act("dose", volume_ul=spanning(*dose_bounds)),
        act("set_speed", value=st.floats(*set_bounds)) | act("dose", volume_ul=st.floats(*dose_bounds)),  # sent, so checked
        act("led", state=st.sampled_from([0, 1, 2, -1, "1", True, False, 1.0, 0.0, None])),
        plain("speed", "pump_on", "pump_off", "output", "total"),
    )
    s_lo, s_hi = set_bounds
    d_lo, d_hi = dose_bounds
    base = {
        "set_speed": {"value": s_lo}, "set_speed_exact": {"value": s_lo}, "dose": {"volume_ul": d_lo},
        "led": {"state": 1}, "pump_on": {},
    }
    calls = {
        "set_speed": {"value": edges(*set_bounds) + NONFINITE + WRONG_TYPES + [s_hi + 0.04, s_hi + 0.049, s_lo - 0.04, -0.0]},
        "set_speed_exact": {"value": edges(*set_bounds) + NONFINITE + WRONG_TYPES + [1e-300, -0.0, 1e16]},
        "dose": {"volume_ul": edges(*dose_bounds) + NONFINITE + WRONG_TYPES + [d_hi + 0.004, d_lo - 0.004, d_lo - 0.0049]},
        "led": {"state": [2, -1, "1", True, False, 1.0, 0.5, None, NAN, 10**400, [1]]},
        "pump_on": {},
    }
    bounds = {"SET": set_bounds, "DOSE": dose_bounds}
    return Case("line", variant, LineDriver.Limits(), options, RigChecker, actions, hostile_calls(calls, base), "usb-Arduino_Uno-if00", {"bounds": bounds})


CASES = [
    ika_case("round", 150.0, 1000.0),
    ika_case("offgrid", 149.97, 999.6),
    new_era_case("round", 1000.0, 500.0, None),
    new_era_case("offgrid", 1000.0, 333.33, 777.77),
    grbl_case("round", (0.0, 300.0), (0.0, 200.0), (0.0, 50.0), 2000.0),
    grbl_case("offgrid", (-10.0006, 199.9996), (-5.0006, 99.9996), (-0.0006, 49.9996), 1234.56),
    scpi_case("round", 2.0, 1e-3),
    scpi_case("offgrid", 1.23456789, 1.23456789e-5),
    spectrometer_case("round", 5.0, 2000.0),
    spectrometer_case("offgrid", 1.0004, 1999.9996),
    line_case("round", (0.0, 80.0), (1.0, 500.0)),
    line_case("offgrid", (0.0, 79.97), (1.005, 499.995)),
]
BY_ID = {case.id: case for case in CASES}


def truth(conditions: Any, rng: Any) -> dict[str, float]:
    return {"band_gap_ev": 1.6, "pl_intensity": 50.0, "fwhm_nm": 30.0}


@contextmanager
def wired(case: Case, tmp_path: Any, lab: SimLab | None = None) -> Iterator[SimpleNamespace]:
    """The case's driver, connected to its registered firmware simulator through a real pty, with a transcript."""
    spec = driver_specs()[case.kind]
    module, function = spec.firmware.split(":")
    lab = lab or SimLab(truth=truth, sample_model=lambda history: {})
    firmware = getattr(importlib.import_module(module), function)(case.kind, case.options, case.limits, lab)
    # A pty carries bytes, not bits: it refuses 7E1, so every port runs 8N1 here (the protocols are ASCII).
    settings_ = dataclasses.replace(spec.serial, bytesize=8, parity="N", timeout_s=0.2, reopen_backoff_s=0.05)
    r = serve(
        tmp_path, firmware, spec.driver, name=case.kind, link=f"{case.id}-{case.link}", lab=lab, settings=settings_,
        limits=case.limits, options=case.options, connect=True,
    )
    r.case, r.checker = case, case.checker(case)
    try:
        yield r
    finally:
        try:
            r.drv.close()
        except InstrumentError:
            pass
        r.transport.close()
        r.dev.stop()


def tx_since(r: SimpleNamespace, start: int) -> bytes:
    return b"".join(bytes.fromhex(e["hex"]) for e in r.transcript.entries[start:] if e["dir"] == "tx")


def drive(r: SimpleNamespace, action: str, kwargs: dict[str, Any]) -> Any:
    """One ``perform`` with its transcript checked: within the limits; nothing sent if ``validate`` refuses it;
    only queries sent if it is refused later; nothing but an InstrumentError raised."""
    label = f"{r.case.id}: {action}({kwargs!r})"
    try:
        r.drv.validate(action, kwargs)
        refused = None
    except LimitError as exc:
        refused = exc
    except Exception as exc:  # noqa: BLE001 - the point: nothing but a LimitError may come out of validate
        pytest.fail(f"{label}: validate raised {type(exc).__name__}: {exc}")
    r.checker.begin_call()
    start = len(r.transcript.entries)
    outcome: Any = None
    try:
        outcome = r.drv.perform(action, kwargs)
    except InstrumentError as exc:
        outcome = exc
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"{label}: perform raised {type(exc).__name__}: {exc}")
    sent = tx_since(r, start)
    before = len(r.checker.violations)
    changed = r.checker.feed(sent)
    assert not r.checker.violations[before:], f"{label} sent commands outside the limits: {r.checker.violations[before:]}"
    if refused is not None:
        assert isinstance(outcome, LimitError), f"{label}: validate refused it ({refused}) but perform gave {outcome!r}"
        assert sent == b"", f"{label}: refused ({refused}) yet sent {sent!r}"
    elif isinstance(outcome, LimitError):
        assert not changed, f"{label}: refused ({outcome}) after sending commands {changed}"
    return outcome


# --- the tests -----------------------------------------------------------------------------------------------


def test_every_registered_driver_has_a_checker_and_cases():
    kinds = set(driver_specs())
    assert kinds == {case.kind for case in CASES}, f"drivers without a safety checker: {kinds - {c.kind for c in CASES}}"
    for case in CASES:
        assert case.limits.__class__ is driver_specs()[case.kind].driver.Limits
        assert case.hostile, case.id


@pytest.mark.parametrize("case_id", list(BY_ID))
def test_random_proposals_never_send_a_command_outside_the_limits(case_id, tmp_path):
    case = BY_ID[case_id]
    with wired(case, tmp_path) as r:
        r.checker.feed(tx_since(r, 0))  # what connect sent
        assert not r.checker.violations, r.checker.violations
        outcomes: list[Any] = []

        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(st.lists(case.actions, min_size=1, max_size=4))
        def proposals(calls: list[tuple[str, dict[str, Any]]]) -> None:
            for action, kwargs in calls:
                outcomes.append(drive(r, action, kwargs))

        proposals()
        start = len(r.transcript.entries)
        r.drv.safe_state()
        r.checker.feed(tx_since(r, start))
        assert not r.checker.violations, r.checker.violations
    # The random actions must have both worked and been refused, and numbers must have been sent and checked,
    # or the test proves little.
    worked = sum(not isinstance(o, InstrumentError) for o in outcomes)
    refused = sum(isinstance(o, LimitError) for o in outcomes)
    print(f"{case_id}: {len(outcomes)} actions, {worked} worked, {refused} refused, {r.checker.checked} numbers checked")
    assert worked >= 5 and refused >= 5 and r.checker.checked >= 5, (case_id, worked, refused, r.checker.checked)


@pytest.mark.parametrize("case_id", list(BY_ID))
def test_hostile_values_are_refused_or_sent_within_the_limits(case_id, tmp_path):
    case = BY_ID[case_id]
    with wired(case, tmp_path) as r:
        r.checker.feed(tx_since(r, 0))
        refused = 0
        for action, kwargs in case.hostile + UNKNOWN_ACTIONS:
            refused += isinstance(drive(r, action, kwargs), LimitError)
        start = len(r.transcript.entries)
        r.drv.safe_state()
        r.checker.feed(tx_since(r, start))
        assert not r.checker.violations, r.checker.violations
    assert refused >= len(UNKNOWN_ACTIONS)


def test_configured_values_that_would_round_past_a_limit_are_refused_at_construction():
    limits = GcodeStage.Limits(x_mm=(0.0, 199.9996), y_mm=(0.0, 100.0), z_mm=(0.0, 50.0), max_feed_mm_min=1234.56)
    port = Transport("/nonexistent/port")  # construction sends nothing
    with pytest.raises(LimitError, match="x as sent"):  # X199.9996 goes out as X200.000
        GcodeStage(port, name="s", limits=limits, options=GcodeStage.Options(stations={"edge": (199.9996, 0, 0)}, safe_z_mm=10))
    with pytest.raises(LimitError, match="as sent"):  # F1234.56 goes out as F1234.6
        GcodeStage(port, name="s", limits=limits, options=GcodeStage.Options(feed_mm_min=1234.56))
    with pytest.raises(LimitError, match="F0.0"):
        GcodeStage(port, name="s", limits=limits, options=GcodeStage.Options(feed_mm_min=0.04))


# One valid experiment touching every instrument; each hostile step is appended last.
VALID_STEPS = {
    "ika_namur": [("set_temperature", {"temp_c": 80.0}), ("set_stir_rate", {"rpm": 200.0})],
    "new_era": [("dispense", {"volume_ul": 20.0, "rate_ul_min": 100.0})],
    "grbl": [("move_to_station", {"station": "spin"}), ("move_to", {"x_mm": 20.0, "y_mm": 30.0, "z_mm": 10.0})],
    "scpi_smu": [("iv_sweep", {"start_v": -0.5, "stop_v": 0.5, "points": 3, "compliance_a": 5e-6})],
    "line_spectrometer": [("measure", {"integration_ms": 50.0, "averages": 2})],
    "line": [("set_speed", {"value": 20.0}), ("dose", {"volume_ul": 5.0})],
}
HOSTILE_LAST = [
    ("ika_namur", "set_temperature", {"temp_c": 149.96}),  # rounds to 150.0 with one decimal: over 149.97
    ("ika_namur", "set_temperature", {"temp_c": NAN}),
    ("new_era", "dispense", {"volume_ul": 777.77, "rate_ul_min": 100.0}),  # at the limit, sent as 777.8 µL
    ("new_era", "dispense", {"volume_ul": 10.0, "rate_ul_min": 1e308}),
    ("grbl", "move_to", {"x_mm": 199.9996, "y_mm": 0.0, "z_mm": 0.0}),  # at the limit, sent as X200.000
    ("grbl", "move_to", {"x_mm": 10.0, "y_mm": 10.0, "z_mm": 10.0, "feed_mm_min": "100"}),
    ("scpi_smu", "source_voltage", {"voltage_v": 1.23456789, "compliance_a": 1e-6}),  # sent as +1.234568E+00
    ("scpi_smu", "iv_sweep", {"start_v": 0.0, "stop_v": INF, "points": 3, "compliance_a": 1e-6}),
    ("line_spectrometer", "measure", {"integration_ms": 1999.9996}),  # sent as INT 2000.000
    ("line_spectrometer", "dark", {"averages": 5}),
    ("line", "set_speed", {"value": 79.96}),  # sent as SET 80.0
    ("line", "dose", {"volume_ul": 10**400}),
    ("ika_namur", "no_such_action", {}),
    ("line", "set_speed", {"value": 10.0, "extra": 1}),
]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """Every driver (off-grid limits) on its own pty, sharing one simulated lab, under one executor."""
    tmp_path = tmp_path_factory.mktemp("bench")
    lab = SimLab(truth=truth, sample_model=lambda history: {})
    with contextmanager_all([wired(BY_ID[f"{kind}-offgrid"], tmp_path, lab) for kind in driver_specs()]) as rigs:
        yield SimpleNamespace(lab=lab, rigs={r.case.kind: r for r in rigs}, executor=Executor({r.case.kind: r.drv for r in rigs}, lab.clock))


@contextmanager
def contextmanager_all(managers: list[Any]) -> Iterator[list[Any]]:
    entered: list[Any] = []
    try:
        for m in managers:
            entered.append(m.__enter__())
        yield entered
    finally:
        for m in reversed(managers[: len(entered)]):
            m.__exit__(None, None, None)


def _steps(extra: list[tuple[str, str, dict]]) -> list[Any]:
    steps: list[Any] = []
    for kind, calls in VALID_STEPS.items():
        steps += [Action(kind, action, kwargs) for action, kwargs in calls]
    steps.append(Wait(30.0))
    return steps + [Action(kind, action, kwargs) for kind, action, kwargs in extra]


def test_the_valid_experiment_runs_within_the_limits(bench):
    starts = {kind: len(r.transcript.entries) for kind, r in bench.rigs.items()}
    bench.executor.run(_steps([]), experiment_id=1)
    for kind, r in bench.rigs.items():
        sent = tx_since(r, starts[kind])
        assert sent, f"{kind}: the valid experiment sent nothing to it"
        r.checker.feed(sent)
        assert not r.checker.violations, r.checker.violations


@pytest.mark.parametrize("kind, action, kwargs", HOSTILE_LAST, ids=[f"{k}-{a}-{i}" for i, (k, a, _) in enumerate(HOSTILE_LAST)])
def test_an_experiment_whose_last_step_breaks_a_limit_sends_nothing(bench, kind, action, kwargs):
    starts = {k: len(r.transcript.entries) for k, r in bench.rigs.items()}
    clock = bench.lab.clock.now_s()
    with pytest.raises(LimitError):
        bench.executor.run(_steps([(kind, action, kwargs)]), experiment_id=2)
    for k, r in bench.rigs.items():
        assert tx_since(r, starts[k]) == b"", f"{k}: bytes were sent for an experiment refused at its last step"
    assert bench.lab.clock.now_s() == clock  # not even its wait ran
