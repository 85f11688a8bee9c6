"""The perovskite thin-film simulator: determinism, band-gap physics, PL landscape, failures, options."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.errors import ExperimentFailed, SimulatorError
from simulators import BUILTIN_MODELS, Simulator
from simulators.perovskite_film import (
    ANTISOLVENTS,
    PARAMETERS,
    PerovskiteFilm,
    band_gap_ev,
    best_pl_intensity,
    perovskite_film,
)

GOOD = {
    "cs_frac": 0.19,
    "br_frac": 0.15,
    "anneal_temp_c": 150.0,
    "anneal_time_min": 16.0,
    "precursor_conc_m": 1.24,
    "antisolvent": "chlorobenzene",
}


def random_conditions(rng: np.random.Generator) -> dict[str, float | str]:
    conditions: dict[str, float | str] = {}
    for p in PARAMETERS:
        if p["type"] == "categorical":
            conditions[p["name"]] = p["choices"][rng.integers(len(p["choices"]))]
        else:
            conditions[p["name"]] = float(rng.uniform(p["low"], p["high"]))
    return conditions


conditions_strategy = st.fixed_dictionaries(
    {
        p["name"]: (
            st.sampled_from(p["choices"])
            if p["type"] == "categorical"
            else st.floats(p["low"], p["high"], allow_nan=False)
        )
        for p in PARAMETERS
    }
)


@pytest.fixture(scope="module")
def best() -> tuple[float, dict[str, float | str]]:
    return best_pl_intensity(seed=0)


def test_satisfies_the_simulator_protocol() -> None:
    sim = BUILTIN_MODELS["perovskite_film"]()
    assert isinstance(sim, Simulator)
    assert sim.outcomes == ("band_gap_ev", "pl_intensity", "fwhm_nm")
    assert set(sim(GOOD, np.random.default_rng(0))) == set(sim.outcomes)


@settings(max_examples=60, deadline=None)
@given(conditions=conditions_strategy, seed=st.integers(0, 2**32 - 1))
def test_same_conditions_and_rng_state_give_the_same_result(conditions: dict, seed: int) -> None:
    sim = perovskite_film(failure_rate=0.2)

    def run() -> dict[str, float] | str:
        try:
            return sim(conditions, np.random.default_rng(seed))
        except ExperimentFailed as exc:
            return exc.reason

    assert run() == run()


def test_different_rng_states_give_different_noise() -> None:
    sim = perovskite_film()
    assert sim(GOOD, np.random.default_rng(1)) != sim(GOOD, np.random.default_rng(2))


@settings(max_examples=60, deadline=None)
@given(conditions=conditions_strategy)
def test_truth_is_none_exactly_where_the_run_fails(conditions: dict) -> None:
    sim = perovskite_film(noise_scale=0.0)
    truth = sim.truth(conditions)
    if truth is None:
        with pytest.raises(ExperimentFailed):
            sim(conditions, np.random.default_rng(0))
    else:
        assert sim(conditions, np.random.default_rng(0)) == truth


def test_band_gap_endmembers_follow_the_literature_values() -> None:
    assert band_gap_ev(0.0, 0.0) == pytest.approx(1.51)
    assert band_gap_ev(0.0, 1.0) == pytest.approx(2.23)
    assert band_gap_ev(1.0, 0.0) == pytest.approx(1.73)
    assert band_gap_ev(1.0, 1.0) == pytest.approx(2.36)
    sim = perovskite_film(noise_scale=0.0)
    for br, expected in ((0.0, 1.51), (1.0, 2.23)):
        truth = sim.truth({**GOOD, "cs_frac": 0.0, "br_frac": br})
        assert truth is not None and truth["band_gap_ev"] == pytest.approx(expected)


def test_band_gap_bows_below_the_linear_interpolation() -> None:
    halide_mid = band_gap_ev(0.0, 0.5)
    assert halide_mid < (1.51 + 2.23) / 2 - 0.05  # bowing 0.33 eV -> 0.0825 eV below at the midpoint
    assert halide_mid == pytest.approx((1.51 + 2.23) / 2 - 0.33 / 4)
    assert band_gap_ev(0.5, 0.0) < (1.51 + 1.73) / 2
    y = np.linspace(0, 1, 11)
    assert np.all(np.diff(band_gap_ev(0.1, y)) > 0)  # more Br, wider gap, everywhere


def test_pl_optimum_is_interior_and_near_100(best: tuple[float, dict]) -> None:
    value, conditions = best
    assert 90.0 < value < 110.0
    assert conditions["antisolvent"] != "none"
    for p in PARAMETERS[:5]:
        span = p["high"] - p["low"]
        assert p["low"] + 0.05 * span < conditions[p["name"]] < p["high"] - 0.05 * span, p["name"]
    sim = perovskite_film(noise_scale=0.0)
    assert sim.truth(conditions)["pl_intensity"] == pytest.approx(value)
    for p in PARAMETERS[:5]:  # a local maximum: stepping either way along any knob loses PL
        step = 0.03 * (p["high"] - p["low"])
        for sign in (-1, 1):
            moved = sim.truth({**conditions, p["name"]: conditions[p["name"]] + sign * step})
            assert moved is not None and moved["pl_intensity"] < value, (p["name"], sign)


def test_knobs_interact(best: tuple[float, dict]) -> None:
    sim = perovskite_film(noise_scale=0.0)
    _, at_best = best

    def argmax(name: str, grid: np.ndarray, **fixed: float) -> float:
        pl = [(sim.truth({**at_best, **fixed, name: v}) or {"pl_intensity": 0.0})["pl_intensity"] for v in grid]
        return float(grid[int(np.argmax(pl))])

    cs_grid = np.linspace(0.0, 0.4, 81)
    assert argmax("cs_frac", cs_grid, br_frac=0.35) > argmax("cs_frac", cs_grid, br_frac=0.0) + 0.02
    temp_grid = np.linspace(60.0, 220.0, 161)
    assert argmax("anneal_temp_c", temp_grid, cs_frac=0.05) > argmax("anneal_temp_c", temp_grid, cs_frac=0.3) + 5


def test_failure_region_covers_a_plausible_fraction_and_names_a_reason() -> None:
    sim = perovskite_film()
    rng = np.random.default_rng(123)
    reasons = []
    for _ in range(3000):
        try:
            sim(random_conditions(rng), rng)
        except ExperimentFailed as exc:
            reasons.append(exc.reason)
    fraction = len(reasons) / 3000
    assert 0.03 < fraction < 0.40
    assert {r.split(":")[0] for r in reasons} == {
        "Cs- and Br-rich composition phase-separates",
        "film did not cover the substrate",
        "anneal decomposed the film to PbI2",
    }


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"antisolvent": "none", "precursor_conc_m": 0.7}, "did not cover"),
        ({"anneal_temp_c": 215.0, "anneal_time_min": 80.0}, "decomposed"),
        ({"cs_frac": 0.4, "br_frac": 0.9}, "phase-separates"),
    ],
)
def test_each_failure_mode_raises_experiment_failed(change: dict, reason: str) -> None:
    sim = perovskite_film()
    with pytest.raises(ExperimentFailed, match=reason):
        sim({**GOOD, **change}, np.random.default_rng(0))
    assert sim.truth({**GOOD, **change}) is None


def test_noise_scale_zero_equals_truth_and_noise_has_the_stated_size() -> None:
    truth = perovskite_film().truth(GOOD)
    assert perovskite_film(noise_scale=0.0)(GOOD, np.random.default_rng(5)) == truth
    sim = perovskite_film(noise_scale=1.0)
    rng = np.random.default_rng(7)
    runs = [sim(GOOD, rng) for _ in range(500)]
    log_pl = np.log([r["pl_intensity"] / truth["pl_intensity"] for r in runs])
    gaps = np.array([r["band_gap_ev"] for r in runs])
    assert 0.04 < log_pl.std() < 0.06
    assert abs(np.median(log_pl)) < 0.01
    assert 0.004 < gaps.std() < 0.006
    assert abs(gaps.mean() - truth["band_gap_ev"]) < 0.001


def test_failure_rate_knob() -> None:
    with pytest.raises(ExperimentFailed, match="random fault"):
        perovskite_film(failure_rate=1.0)(GOOD, np.random.default_rng(0))
    rng = np.random.default_rng(0)
    failures = 0
    for _ in range(400):
        try:
            perovskite_film(failure_rate=0.25)(GOOD, rng)
        except ExperimentFailed:
            failures += 1
    assert 60 < failures < 140


def test_unknown_or_bad_options_raise_simulator_error_naming_them() -> None:
    with pytest.raises(SimulatorError, match=r"'noise'.*allowed options: noise_scale, failure_rate"):
        BUILTIN_MODELS["perovskite_film"](noise=0.1)
    with pytest.raises(SimulatorError, match="noise_scale"):
        perovskite_film(noise_scale=-1.0)
    with pytest.raises(SimulatorError, match="failure_rate"):
        PerovskiteFilm(failure_rate=1.5)


@pytest.mark.parametrize(
    ("conditions", "message"),
    [
        ({**GOOD, "anneal_temp_c": 250.0}, "anneal_temp_c"),
        ({**GOOD, "antisolvent": "water"}, "antisolvent"),
        ({k: v for k, v in GOOD.items() if k != "cs_frac"}, "missing parameter 'cs_frac'"),
        ({**GOOD, "spin_rpm": 4000}, "spin_rpm"),
        ({**GOOD, "br_frac": "0.1"}, "br_frac"),
    ],
)
def test_conditions_outside_the_space_raise_simulator_error(conditions: dict, message: str) -> None:
    with pytest.raises(SimulatorError, match=message):
        perovskite_film()(conditions, np.random.default_rng(0))


def test_parameters_describe_the_space() -> None:
    by_name = {p["name"]: p for p in PARAMETERS}
    assert (by_name["anneal_temp_c"]["low"], by_name["anneal_temp_c"]["high"]) == (60.0, 220.0)
    assert (by_name["cs_frac"]["low"], by_name["cs_frac"]["high"]) == (0.0, 0.4)
    assert (by_name["precursor_conc_m"]["low"], by_name["precursor_conc_m"]["high"]) == (0.6, 1.8)
    assert by_name["antisolvent"]["choices"] == list(ANTISOLVENTS)
    assert set(ANTISOLVENTS) == {"chlorobenzene", "toluene", "diethyl_ether", "none"}
