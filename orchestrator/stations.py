"""Instruments on several lab PCs ("stations"): which steps of an experiment run where.

A campaign with a ``stations:`` section names, for each station, the Prefect work pool whose worker runs
on the PC that owns its instruments, and each instrument names its station. One experiment's steps are
cut into **segments**: maximal runs of consecutive steps on one station (a wait stays with the station
whose step came before it, where the sample is; leading waits go with the first station). The campaign's
flow proposes where it runs and sends each segment, in order, as a flow run of that station's deployment
(:mod:`orchestrator.station_dispatch`); the station's worker runs it on its own instruments
(:mod:`orchestrator.station_flow`). This module is the pure part: validation, segmenting and the JSON
form of steps that travels between the two.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from orchestrator.parameters import NAME_PATTERN
from orchestrator.procedures import Action, Step, Wait

if TYPE_CHECKING:
    from orchestrator.campaign import Campaign

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Segment:
    """Consecutive steps of one experiment that run on one station.

    Attributes:
        number: its position among the experiment's segments (0, 1, …).
        station: the station's name.
        first_index: the index of its first step in the whole procedure (step logs use procedure indexes).
        steps: its steps, in order.
    """

    number: int
    station: str
    first_index: int
    steps: tuple[Step, ...]

    @property
    def indexes(self) -> range:
        return range(self.first_index, self.first_index + len(self.steps))

    def actions(self) -> list[tuple[int, Action]]:
        """(procedure index, action) of its actions, waits left out."""
        return [(i, s) for i, s in zip(self.indexes, self.steps) if isinstance(s, Action)]


def station_of(campaign: "Campaign") -> dict[str, str]:
    """Instrument name → station name."""
    return {name: inst.station for name, inst in (campaign.instruments or {}).items() if inst.station is not None}


def split_segments(steps: Sequence[Step], stations: Mapping[str, str]) -> list[Segment]:
    """Cuts an experiment's steps into per-station segments, in order.

    Args:
        steps: the experiment's steps, as its procedure gives them.
        stations: instrument → station.

    Raises:
        KeyError: an action's instrument has no station (the campaign's checks rule this out).
    """
    cuts: list[tuple[str, int, list[Step]]] = []  # (station, first index, steps)
    leading: list[Step] = []
    for index, step in enumerate(steps):
        if isinstance(step, Wait):
            if cuts:
                cuts[-1][2].append(step)
            else:
                leading.append(step)
            continue
        station = stations[step.instrument]
        if cuts and cuts[-1][0] == station:
            cuts[-1][2].append(step)
        elif cuts:
            cuts.append((station, index, [step]))
        else:
            cuts.append((station, 0, [*leading, step]))
    return [Segment(n, station, first, tuple(seg)) for n, (station, first, seg) in enumerate(cuts)]


def station_problems(c: "Campaign") -> list[tuple[Loc, str]]:
    """What is wrong with a campaign's ``stations:`` and the instruments' ``station:`` fields."""
    problems: list[tuple[Loc, str]] = []
    instruments = c.instruments or {}
    if c.stations is None:
        for name, inst in instruments.items():
            if inst.station is not None:
                problems.append(
                    (("instruments", name, "station"), f"there is no 'stations:' section to define '{inst.station}' in; "
                     "add one (stations: {NAME: {pool: POOL}}) or remove the field")
                )
        return problems
    if not c.stations:
        return [(("stations",), "the section is empty; name each lab PC and its work pool, or remove it")]
    known = ", ".join(c.stations)
    for name in c.stations:
        if not re.fullmatch(NAME_PATTERN, name):
            problems.append((("stations", name), f"'{name}' is not a valid station name; use letters, digits, _"))
    used: set[str] = set()
    station_by_port: dict[str, tuple[str, str]] = {}
    for name, inst in instruments.items():
        if inst.station is None:
            problems.append(
                (("instruments", name, "station"), f"required when the campaign has stations; one of: {known}")
            )
            continue
        if inst.station not in c.stations:
            problems.append((("instruments", name, "station"), f"no station '{inst.station}'; stations: {known}"))
            continue
        used.add(inst.station)
        first = station_by_port.setdefault(inst.port, (name, inst.station))
        if first[1] != inst.station:
            problems.append(
                (("instruments", name, "station"), f"{inst.port} is also {first[0]}'s port, on station '{first[1]}'; "
                 "a serial port is attached to one PC, so instruments sharing it share a station")
            )
    for name in c.stations:
        if name not in used:
            problems.append((("stations", name), "no instrument is on this station; give it instruments or remove it"))
    return problems


# --- steps as JSON, between the campaign's flow and a station's --------------------------------------------


def step_to_json(step: Step) -> dict[str, Any]:
    if isinstance(step, Wait):
        return {"wait_s": step.seconds}
    out: dict[str, Any] = {"instrument": step.instrument, "action": step.action, "kwargs": dict(step.kwargs)}
    if step.label is not None:
        out["label"] = step.label
    return out


def step_from_json(data: Mapping[str, Any]) -> Step:
    """Inverse of :func:`step_to_json`.

    Raises:
        ValueError: not a step.
    """
    if "wait_s" in data:
        return Wait(float(data["wait_s"]))
    try:
        return Action(str(data["instrument"]), str(data["action"]), dict(data.get("kwargs") or {}), data.get("label"))
    except KeyError:
        raise ValueError(f"a step needs 'instrument' and 'action' (or 'wait_s'); got {dict(data)!r}") from None


@dataclass(frozen=True)
class StationLab:
    """What a station needs of the campaign, sent with each segment (the station PC needs no campaign file).

    Attributes:
        name: the campaign's name.
        seed: its seed (seeds a simulated station's noise).
        instruments: every instrument of the campaign; a station opens only its own, but a simulated one
            reads the others' options (the stage's stations) to interpret a sample's history.
        simulator: the campaign's ``simulator:`` section, for ``--simulate``.
    """

    name: str
    seed: int
    instruments: dict[str, Any]
    simulator: Any | None

    @classmethod
    def of(cls, campaign: "Campaign") -> "StationLab":
        return cls(campaign.name, campaign.seed, dict(campaign.instruments or {}), campaign.simulator)

    def on(self, station: str) -> list[str]:
        """The instruments attached to ``station``."""
        return [name for name, inst in self.instruments.items() if inst.station == station]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "seed": self.seed,
            "instruments": {k: v.model_dump(mode="json") for k, v in self.instruments.items()},
            "simulator": self.simulator.model_dump(mode="json") if self.simulator is not None else None,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "StationLab":
        """Raises ``pydantic.ValidationError`` where the data is not a campaign's lab."""
        from orchestrator.campaign import SimulatorSpec
        from orchestrator.lab_config import InstrumentSpec

        instruments = {k: InstrumentSpec.model_validate(v) for k, v in dict(data["instruments"]).items()}
        simulator = SimulatorSpec.model_validate(data["simulator"]) if data.get("simulator") is not None else None
        return cls(str(data["name"]), int(data["seed"]), instruments, simulator)


def segment_run_name(dispatch_key: str, segment: Segment, try_no: int) -> str:
    """The name, and idempotency key, of one try of a segment's flow run: unique across the Prefect server."""
    return f"{dispatch_key}-s{segment.number}-{segment.station}-t{try_no}"
