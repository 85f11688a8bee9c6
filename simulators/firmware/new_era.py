"""Byte-level simulator of New Era NE-1000 syringe pumps on one RS-232 network, for ``instruments.new_era``.

A :class:`NewEraNetwork` is the firmware of one port; it hosts one :class:`SimPump` per address and only
the addressed pump answers (a command without an address goes to address 0; an address no pump has gets
no reply). ``make_firmware`` builds a network with one pump; :meth:`NewEraNetwork.add_device` (alias
``add_pump``) adds the next pump configured on the same port.

Behaviour of a pump (see the driver's docstring for the protocol):

- Replies ``STX <2-digit address> <prompt> [data] ETX``; an unknown command or malformed data gets
  ``?``, an out-of-range value ``?OOR``, a setting changed while pumping ``?NA`` (DIA, VOL, DIR, CLD and
  RAT are refused while running).
- Pumping progresses with ``lab.clock`` only: at the rate set, until the volume set (``VOL 0``: until
  stopped). ``STP`` pauses a running pump (``P``, ``RUN`` resumes) and stops a paused one (``S``).
  When a stretch of pumping ends (done, paused, stalled) the pump records
  ``lab.record(name, "dispensed", volume_ul=…, reagent=…, direction="infuse"|"withdraw")``, at the first
  command on the port after it ended (the firmware runs only when bytes arrive; the driver polls).
- Setting ``DIA`` also sets the volume units: µL for 14.0 mm and below, mL above (a modelling choice after
  the manual's note that the diameter sets the units; the threshold is assumed); ``VOLUL``/``VOLML`` set them. The allowed
  rates follow from the diameter through the plunger speed: ``MIN_SPEED_MM_MIN`` to ``MAX_SPEED_MM_MIN``
  times the syringe's cross-section (mm² = µL/mm), the speeds implied by the NE-1000 specification
  (1699 mL/h with a 26.59 mm syringe, 0.73 µL/h with a 4.699 mm one); ``RAT`` outside → ``?OOR``.
- An alarm replaces the reply to the pump's next command, which is not carried out, and is then cleared.

Knobs (on a pump, ``network.pump(name or address)``): ``pending_alarm`` (``"R"`` at start, as after power-
up: ``power_reset=False`` to start without); ``stall_next_run`` (the next ``RUN`` stalls after
``stall_fraction`` of its volume: the pump stops and the reply to the following command is ``A?S``).

Fault plan (``simulators.faults``): ``device_error`` stalls the addressed pump now (a running pump stops where
it is, its stretch recorded) and answers the command with ``A?S`` instead of carrying it out. ``bad_value`` is
not shown: a pump measures nothing (its ``DIS`` counts motor steps, which do not come back as NaN).
"""

from __future__ import annotations

import math
import re
from typing import Any

from simulators.lab import SimLab
from simulators.serial_device import Firmware

STX, ETX = b"\x02", b"\x03"
MAX_SPEED_MM_MIN = 51.0
MIN_SPEED_MM_MIN = 0.0007
DIAMETER_RANGE_MM = (0.1, 50.0)
RATE_UNITS = {"UM": 1.0, "UH": 1.0 / 60.0, "MM": 1000.0, "MH": 1000.0 / 60.0}
VOLUME_UNITS = {"UL": 1.0, "ML": 1000.0}
VERSION = "NE1000V3.928"
_NUMBER = re.compile(r"\d{1,4}(?:\.\d{0,3})?|\.\d{1,3}")
_COMMAND = re.compile(r"(\d{0,2})([A-Z]{0,3})(.*)")


def rate_range_ul_min(diameter_mm: float) -> tuple[float, float]:
    """The lowest and highest rate (µL/min) the pump runs with a syringe of this inner diameter."""
    area_mm2 = math.pi * diameter_mm**2 / 4.0
    return MIN_SPEED_MM_MIN * area_mm2, MAX_SPEED_MM_MIN * area_mm2


def _number(text: str) -> float | None:
    """A number in the pump's format (at most 4 digits, 3 decimals), or None."""
    if not _NUMBER.fullmatch(text) or sum(c.isdigit() for c in text) > 4:
        return None
    return float(text)


def _fmt(value: float) -> str:
    for decimals in (3, 2, 1, 0):
        text = f"{value:.{decimals}f}"
        if sum(c.isdigit() for c in text) <= 4:
            return text
    return f"{value:.0f}"


class SimPump:
    """One NE-1000 on the network.

    Args:
        name: the instrument's name (in recorded events).
        address: its network address.
        lab: the simulated lab.
        diameter_mm: the syringe diameter it was last set to.
        reagent: what its syringe holds (in recorded events).
        power_reset: start with the power-up alarm ``A?R`` pending.
    """

    def __init__(
        self, name: str, address: int, lab: SimLab, *, diameter_mm: float, reagent: str = "", power_reset: bool = True
    ):
        self.name, self.address, self.lab, self.reagent = name, address, lab, reagent
        self.diameter_mm = diameter_mm
        self.volume_units = "UL" if diameter_mm <= 14.0 else "ML"
        self.target_ul = 0.0
        self.rate_value, self.rate_units = 1.0, "UM"
        self.direction = "INF"
        self.infused_ul = self.withdrawn_ul = 0.0  # finished stretches since CLD
        self.state = "S"
        self.pending_alarm: str | None = "R" if power_reset else None
        self.stall_next_run = False
        self.stall_fraction = 0.5
        self._phase_done_ul = 0.0  # pumped in this run before the current stretch
        self._stretch_start_t = 0.0
        self._stall_at_ul: float | None = None

    @property
    def rate_ul_min(self) -> float:
        return self.rate_value * RATE_UNITS[self.rate_units]

    @property
    def running(self) -> bool:
        return self.state in ("I", "W")

    # --- pumping with the clock -------------------------------------------------------------------
    def _pumped_in_run(self, now: float) -> float:
        if not self.running:
            return self._phase_done_ul
        return self._phase_done_ul + self.rate_ul_min * max(0.0, now - self._stretch_start_t) / 60.0

    def update(self, now: float) -> None:
        """Stops the pump if its volume is done, or it stalls, by ``now``."""
        if not self.running:
            return
        end = self.target_ul if self.target_ul > 0 else math.inf
        stall = self._stall_at_ul if self._stall_at_ul is not None else math.inf
        stop_at = min(end, stall)
        if self._pumped_in_run(now) >= stop_at:
            self._end_stretch(stop_at)
            self.state = "S"
            self._phase_done_ul = 0.0
            if stall <= end:
                self.pending_alarm = "S"
            self._stall_at_ul = None

    def _end_stretch(self, pumped_in_run: float) -> None:
        stretch = pumped_in_run - self._phase_done_ul
        self._phase_done_ul = pumped_in_run
        if self.state == "I":
            self.infused_ul += stretch
        else:
            self.withdrawn_ul += stretch
        direction = "infuse" if self.state == "I" else "withdraw"
        self.lab.record(self.name, "dispensed", volume_ul=stretch, reagent=self.reagent, direction=direction)

    def dispensed_ul(self, now: float) -> tuple[float, float]:
        """(infused, withdrawn) since the last CLD, including the stretch under way."""
        live = self._pumped_in_run(now) - self._phase_done_ul if self.running else 0.0
        infusing, withdrawing = self.state == "I", self.state == "W"
        return self.infused_ul + (live if infusing else 0.0), self.withdrawn_ul + (live if withdrawing else 0.0)

    # --- commands ---------------------------------------------------------------------------------
    def handle(self, command: str, data: str, now: float) -> str:
        """The reply body (prompt and data, or ``A?x``) to one command."""
        self.update(now)
        if self.pending_alarm is not None:
            alarm, self.pending_alarm = self.pending_alarm, None
            return f"A?{alarm}"
        handler = getattr(self, f"_cmd_{command.lower()}", None) if command else self._cmd_status
        if handler is None:
            return self.state + "?"
        return handler(data, now)

    def _setting(self, data: str) -> str | None:
        """None if a setting may be changed now, else the error reply."""
        return self.state + "?NA" if self.running else None

    def _cmd_status(self, data: str, now: float) -> str:
        return self.state + ("?" if data else "")

    def _cmd_ver(self, data: str, now: float) -> str:
        return self.state + ("?" if data else VERSION)

    def _cmd_dia(self, data: str, now: float) -> str:
        if not data:
            return self.state + _fmt(self.diameter_mm)
        value = _number(data)
        if value is None:
            return self.state + "?"
        if (refused := self._setting(data)) is not None:
            return refused
        if not DIAMETER_RANGE_MM[0] <= value <= DIAMETER_RANGE_MM[1]:
            return self.state + "?OOR"
        self.diameter_mm = value
        self.volume_units = "UL" if value <= 14.0 else "ML"
        return self.state

    def _cmd_rat(self, data: str, now: float) -> str:
        if not data:
            return self.state + _fmt(self.rate_value) + self.rate_units
        m = re.fullmatch(r"([\d.]+)(UM|MM|UH|MH)?", data)
        value = _number(m[1]) if m else None
        if m is None or value is None:
            return self.state + "?"
        if (refused := self._setting(data)) is not None:
            return refused
        units = m[2] or self.rate_units
        low, high = rate_range_ul_min(self.diameter_mm)
        if not low <= value * RATE_UNITS[units] <= high:
            return self.state + "?OOR"
        self.rate_value, self.rate_units = value, units
        return self.state

    def _cmd_vol(self, data: str, now: float) -> str:
        if not data:
            return self.state + _fmt(self.target_ul / VOLUME_UNITS[self.volume_units]) + self.volume_units
        if (refused := self._setting(data)) is not None:
            return refused
        if data in VOLUME_UNITS:
            self.volume_units = data
            return self.state
        value = _number(data)
        if value is None:
            return self.state + "?"
        self.target_ul = value * VOLUME_UNITS[self.volume_units]
        return self.state

    def _cmd_dir(self, data: str, now: float) -> str:
        if not data:
            return self.state + self.direction
        if data not in ("INF", "WDR", "REV"):
            return self.state + "?"
        if (refused := self._setting(data)) is not None:
            return refused
        self.direction = {"INF": "INF", "WDR": "WDR", "REV": "WDR" if self.direction == "INF" else "INF"}[data]
        return self.state

    def _cmd_cld(self, data: str, now: float) -> str:
        if data not in ("INF", "WDR"):
            return self.state + "?"
        if (refused := self._setting(data)) is not None:
            return refused
        if data == "INF":
            self.infused_ul = 0.0
        else:
            self.withdrawn_ul = 0.0
        return self.state

    def _cmd_dis(self, data: str, now: float) -> str:
        if data:
            return self.state + "?"
        infused, withdrawn = self.dispensed_ul(now)
        factor = VOLUME_UNITS[self.volume_units]
        return f"{self.state}I{_fmt(infused / factor)}W{_fmt(withdrawn / factor)}{self.volume_units}"

    def _cmd_run(self, data: str, now: float) -> str:
        if data:
            return self.state + "?"
        if self.running:
            return self.state
        if self.state == "S":
            low, high = rate_range_ul_min(self.diameter_mm)
            if not low <= self.rate_ul_min <= high:
                return self.state + "?OOR"
            self._phase_done_ul = 0.0
            self._stall_at_ul = None
            if self.stall_next_run:
                self.stall_next_run = False
                self._stall_at_ul = self.stall_fraction * (self.target_ul if self.target_ul > 0 else 1.0)
        self._stretch_start_t = now
        self.state = "I" if self.direction == "INF" else "W"
        return self.state

    def _cmd_stp(self, data: str, now: float) -> str:
        if data:
            return self.state + "?"
        if self.running:
            self._end_stretch(self._pumped_in_run(now))
            self.state = "P"
        elif self.state == "P":
            self.state = "S"
            self._phase_done_ul = 0.0
            self._stall_at_ul = None
        return self.state


class NewEraNetwork(Firmware):
    """The pumps on one port. See the module docstring."""

    rx_end = b"\r"

    def __init__(self, lab: SimLab):
        super().__init__()
        self.lab = lab
        self.pumps: dict[int, SimPump] = {}

    def add_device(self, name: str, options: Any, limits: Any = None, *, power_reset: bool = True) -> SimPump:
        """Adds the pump configured as ``options`` (the driver's Options: address, diameter, reagent).

        Raises:
            ValueError: the address is taken.
        """
        address = int(options.address)
        if address in self.pumps:
            raise ValueError(f"address {address} on this port is already {self.pumps[address].name}'s")
        diameter = float(options.syringe_diameter_mm)
        pump = SimPump(name, address, self.lab, diameter_mm=diameter, reagent=options.reagent, power_reset=power_reset)
        self.pumps[address] = pump
        return pump

    add_pump = add_device

    def pump(self, key: str | int) -> SimPump:
        """A pump by address or instrument name (for knobs and assertions)."""
        if isinstance(key, int):
            return self.pumps[key]
        return next(p for p in self.pumps.values() if p.name == key)

    def express(self, kind: str, frame: bytes) -> bytes | None:
        m = _COMMAND.fullmatch(frame[: -len(self.rx_end)].decode("ascii", "replace").strip())
        if kind != "device_error" or m is None:
            return None
        address = int(m[1]) if m[1] else 0
        pump = self.pumps.get(address)
        if pump is None:
            return None
        now = self.lab.clock.now_s()
        for each in self.pumps.values():
            each.update(now)
        if pump.running:
            pump._end_stretch(pump._pumped_in_run(now))
            pump.state, pump._phase_done_ul, pump._stall_at_ul = "S", 0.0, None
        return STX + f"{address:02d}A?S".encode("ascii") + ETX

    def handle(self, frame: bytes) -> bytes | None:
        m = _COMMAND.fullmatch(frame[: -len(self.rx_end)].decode("ascii", "replace").strip())
        if m is None:
            return None
        address = int(m[1]) if m[1] else 0
        now = self.lab.clock.now_s()
        for pump in self.pumps.values():
            pump.update(now)
        pump = self.pumps.get(address)
        if pump is None:
            return None
        body = pump.handle(m[2], m[3].replace(" ", ""), now)
        return STX + f"{address:02d}{body}".encode("ascii") + ETX


def make_firmware(name: str, options: Any, limits: Any, lab: SimLab) -> NewEraNetwork:
    """A network with the one pump ``options`` describes; add more with :meth:`NewEraNetwork.add_device`."""
    network = NewEraNetwork(lab)
    network.add_device(name, options, limits)
    return network
