"""User-style simulators named from campaign files as ``tests.toy_simulators:function``."""

from __future__ import annotations

import math

from orchestrator.errors import ExperimentFailed

SOLVENT_GAIN = {"dmf": 1.0, "dmso": 1.3, "gbl": 0.7}


def toy_yield(conditions, rng, noise: float = 0.5):
    """Yield peaks at 85 degC, 3 layers, DMSO; a little noise; fails below 25 degC."""
    t, n, s = conditions["temp_c"], conditions["layers"], conditions["solvent"]
    if t < 25.0:
        raise ExperimentFailed("precursor did not dissolve below 25 degC")
    value = 60.0 * SOLVENT_GAIN[s] * math.exp(-(((t - 85.0) / 25.0) ** 2)) * (1.0 - 0.1 * (n - 3) ** 2)
    return {"yield_pct": value + noise * float(rng.normal())}


def branin_like(conditions, rng):
    """A smooth 2-D function for continuous-only tests (maximum 0 at x=0.3, y=0.7)."""
    x, y = conditions["x"], conditions["y"]
    return {"score": -((x - 0.3) ** 2) - (y - 0.7) ** 2 + 0.001 * float(rng.normal())}


def not_a_mapping(conditions, rng):
    return 42.0


def plate_film(conditions, rng):
    """A film whose PL depends only on the hotplate temperature: brightest at 150 degC, none below 70 degC."""
    t = conditions["temp_c"]
    if t < 70.0:
        raise ExperimentFailed("film did not crystallize below 70 degC")
    return {
        "band_gap_ev": 1.55 + 0.001 * (t - 100.0),
        "pl_intensity": max(1.0, 100.0 - ((t - 150.0) / 4.0) ** 2) * math.exp(0.02 * float(rng.normal())),
        "fwhm_nm": 35.0,
    }


def plate_sample(events):
    """Sample model for ``plate_film``: the film saw the hotplate's last set point."""
    setpoints = [e.data["setpoint_c"] for e in events if e.kind == "heater" and e.data.get("on")]
    return {"temp_c": setpoints[-1] if setpoints else 22.0}


def two_goals(conditions, rng):
    """Two conflicting objectives on [0, 1]^2: strength peaks at x=0.2, clarity at x=0.8; y helps both."""
    x, y = conditions["x"], conditions["y"]
    return {
        "strength": 1.0 - (x - 0.2) ** 2 + 0.3 * y + 0.01 * float(rng.normal()),
        "clarity": 1.0 - (x - 0.8) ** 2 + 0.3 * y + 0.01 * float(rng.normal()),
    }


def covered(conditions, rng):
    """Score rises with x, but film coverage drops below 0.9 once x > 0.6: the best usable x is 0.6."""
    x, y = conditions["x"], conditions["y"]
    return {"score": x - 0.2 * (y - 0.5) ** 2, "coverage": 1.0 - max(0.0, x - 0.55) * 2.0}


def cliff(conditions, rng):
    """Best at (0.3, 0.7); films fail to form for x > 0.6 (40 % of the square). A model blind to failures
    would keep exploring that never-measured region, where its outcome model is most uncertain."""
    x, y = conditions["x"], conditions["y"]
    if x > 0.6:
        raise ExperimentFailed("film delaminated (x > 0.6)")
    return {"score": -((x - 0.3) ** 2) - (y - 0.7) ** 2 + 0.002 * float(rng.normal())}


def uneven(conditions, rng):
    """Instruments that take different times: 0.6 to 1.4 s per experiment (real sleeps, for async tests)."""
    import time

    time.sleep(0.6 + 0.8 * float(rng.random()))
    x, y = conditions["x"], conditions["y"]
    return {"score": -((x - 0.3) ** 2) - (y - 0.7) ** 2}
