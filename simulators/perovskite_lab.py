"""What a perovskite film made on the simulated bench *is*, from what the instruments did to it.

:func:`film_conditions` is the ``sample_model`` of ``campaigns/perovskite_film_hardware.yaml``: it reads the
events the byte-level simulators recorded (see :mod:`simulators.lab`) and returns the conditions of
:mod:`simulators.perovskite_film`:

- **Composition and concentration** from the syringe pumps' ``dispensed`` events. Four end-member precursor
  stocks, each ``STOCK_M`` = 1.6 mol/L in DMF:DMSO, and neat solvent for dilution::

      reagent    Cs  Br          cs_frac  = (V_CsPbI3 + V_CsPbBr3) / V_stock
      FAPbI3      0   0          br_frac  = (V_FAPbBr3 + V_CsPbBr3) / V_stock
      FAPbBr3     0   1          precursor_conc_m = STOCK_M * V_stock / (V_stock + V_DMF)
      CsPbI3      1   0
      CsPbBr3     1   1          (withdrawals count negative)

- **Antisolvent** from the stage: the last station named ``quench_<antisolvent>`` the sample visited
  (``quench_none`` is a position without a nozzle); no quench station at all counts as ``none``.
- **Anneal** from the stage and the hotplate: the sample's time at the station named ``hotplate`` is the
  anneal time; the anneal temperature is the plate's mean surface temperature over that time. The plate
  follows its set point as a first-order lag with time constant ``tau_s`` (as the hotplate simulator does),
  from every ``heater`` event so far, since a plate stays hot between samples.

A sample that never reached the plate, or got no precursor, is outside the film model's range: the lab
reports no emission and the experiment fails, as a real unannealed or empty substrate would.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from orchestrator.errors import ExperimentFailed
from simulators.lab import Event

STOCK_M = 1.6
AMBIENT_C = 22.0
STOCKS: dict[str, tuple[float, float]] = {  # reagent → (Cs share, Br share)
    "FAPbI3": (0.0, 0.0),
    "FAPbBr3": (0.0, 1.0),
    "CsPbI3": (1.0, 0.0),
    "CsPbBr3": (1.0, 1.0),
}
SOLVENT = "DMF"
_STATION_TOLERANCE_MM = 0.05


def film_conditions(
    events: Sequence[Event],
    *,
    stage: str = "stage",
    hotplate: str = "hotplate",
    stations: Mapping[str, Sequence[float]] | None = None,
    tau_s: float = 60.0,
) -> dict[str, Any]:
    """The current sample's film conditions (see the module docstring).

    Args:
        events: every event of the simulated lab so far (the sample's follow the last ``new_sample``).
        stage: the stage instrument's name.
        hotplate: the hotplate instrument's name.
        stations: the stage's stations, name → (x_mm, y_mm, z_mm).
        tau_s: the plate's thermal time constant.

    Raises:
        ExperimentFailed: no precursor was dispensed.
    """
    starts = [i for i, e in enumerate(events) if e.kind == "new_sample"]
    sample = list(events[starts[-1] + 1 :] if starts else events)
    volumes: dict[str, float] = {}
    for e in sample:
        if e.kind == "dispensed":
            sign = -1.0 if e.data.get("direction") == "withdraw" else 1.0
            reagent = str(e.data.get("reagent", ""))
            volumes[reagent] = volumes.get(reagent, 0.0) + sign * float(e.data["volume_ul"])
    v_stock = sum(max(0.0, volumes.get(r, 0.0)) for r in STOCKS)
    if v_stock <= 0:
        raise ExperimentFailed("no precursor stock was dispensed onto the substrate")
    cs = sum(max(0.0, volumes.get(r, 0.0)) * share[0] for r, share in STOCKS.items()) / v_stock
    br = sum(max(0.0, volumes.get(r, 0.0)) * share[1] for r, share in STOCKS.items()) / v_stock
    conc = STOCK_M * v_stock / (v_stock + max(0.0, volumes.get(SOLVENT, 0.0)))

    visits = _visits(sample, stage, stations or {}, end_s=sample[-1].t_s if sample else 0.0)
    quench = [name for name, _, _ in visits if name.startswith("quench_")]
    antisolvent = quench[-1].removeprefix("quench_") if quench else "none"
    heater = [(e.t_s, float(e.data.get("setpoint_c", AMBIENT_C)), bool(e.data.get("on", False))) for e in events if e.instrument == hotplate and e.kind == "heater"]
    anneal_s = 0.0
    weighted_c = 0.0
    for name, t0, t1 in visits:
        if name == "hotplate" and t1 > t0:
            anneal_s += t1 - t0
            weighted_c += _mean_plate_c(heater, t0, t1, tau_s) * (t1 - t0)
    return {
        "cs_frac": round(cs, 9),
        "br_frac": round(br, 9),
        "anneal_temp_c": weighted_c / anneal_s if anneal_s > 0 else AMBIENT_C,
        "anneal_time_min": anneal_s / 60.0,
        "precursor_conc_m": round(conc, 9),
        "antisolvent": antisolvent,
    }


def _visits(
    sample: Sequence[Event], stage: str, stations: Mapping[str, Sequence[float]], end_s: float
) -> list[tuple[str, float, float]]:
    """(station, arrival, departure) for each stop of the sample at a named station."""
    stops: list[tuple[str, float]] = []
    for e in sample:
        if e.instrument == stage and e.kind == "position":
            here = (float(e.data["x_mm"]), float(e.data["y_mm"]), float(e.data["z_mm"]))
            stops.append((_station_at(here, stations), e.t_s))
    out = []
    for i, (name, t0) in enumerate(stops):
        t1 = stops[i + 1][1] if i + 1 < len(stops) else end_s
        if name:
            out.append((name, t0, t1))
    return out


def _station_at(xyz: tuple[float, float, float], stations: Mapping[str, Sequence[float]]) -> str:
    for name, pos in stations.items():
        if all(abs(a - float(b)) <= _STATION_TOLERANCE_MM for a, b in zip(xyz, pos)):
            return name
    return ""


def _mean_plate_c(heater: Sequence[tuple[float, float, bool]], t0: float, t1: float, tau_s: float) -> float:
    """Mean plate temperature over [t0, t1] for a first-order lag toward the set point (ambient when off)."""
    temp_c, t, target = AMBIENT_C, -math.inf, AMBIENT_C
    changes = sorted(heater)
    area = 0.0
    i = 0
    # Advance the plate through each set-point change; integrate analytically over [t0, t1].
    while True:
        t_next = changes[i][0] if i < len(changes) else math.inf
        seg0, seg1 = max(t, t0), min(t_next, t1)
        if seg1 > seg0:
            start_c = _lag(temp_c, target, seg0 - t, tau_s) if t > -math.inf else temp_c
            dt = seg1 - seg0
            area += target * dt + (start_c - target) * tau_s * (1 - math.exp(-dt / tau_s))
        if t_next >= t1:
            break
        if t > -math.inf:
            temp_c = _lag(temp_c, target, t_next - t, tau_s)
        t = t_next
        target = changes[i][1] if changes[i][2] else AMBIENT_C
        i += 1
    return area / (t1 - t0)


def _lag(start_c: float, target_c: float, dt_s: float, tau_s: float) -> float:
    return target_c + (start_c - target_c) * math.exp(-dt_s / tau_s)
