"""Simulated DFT sets: the helpful one tracks the truth with a bias, the misleading one does not; files regenerate."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.errors import SimulatorError
from orchestrator.formula import parse_formula, site_fractions
from simulators.base import Simulator
from simulators.dft import (
    BR_RANGE,
    CAMPAIGN_DATA_DIR,
    CS_RANGE,
    hse06_rows,
    perovskite_film_dft,
    perovskites_measured,
    write_csv,
    write_prior_files,
)
from simulators.perovskite_film import band_gap_ev

GROUPS = {"cs_frac": ("Cs", ["Cs", "FA"]), "br_frac": ("Br", ["I", "Br"])}


def _arrays(rows):
    x = np.array([r["cs_frac"] for r in rows])
    y = np.array([r["br_frac"] for r in rows])
    return x, y, np.array([r["gap_dft_ev"] for r in rows]), band_gap_ev(x, y)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_helpful_set_tracks_the_truth_with_a_bias(seed):
    x, y, gap, truth = _arrays(perovskite_film_dft("helpful", n=60, seed=seed))
    assert np.corrcoef(gap, truth)[0, 1] > 0.9
    assert abs(np.mean(truth - gap)) > 0.1  # systematically biased: DFT underestimates
    assert np.mean(gap) < np.mean(truth)
    residual = gap - np.polyval(np.polyfit(truth, gap, 1), truth)
    assert 0.02 < np.std(residual) < 0.06  # noisier than the 5 meV measurement


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_misleading_set_does_not_correlate_positively(seed):
    _, _, gap, truth = _arrays(perovskite_film_dft("misleading", n=60, seed=seed))
    _, _, helpful, _ = _arrays(perovskite_film_dft("helpful", n=60, seed=seed))
    assert np.corrcoef(gap, truth)[0, 1] < 0.0
    assert abs(np.mean(gap) - np.mean(helpful)) < 0.1  # same range, only the trend is wrong


def test_rows_cover_the_campaign_box_and_formulas_agree_with_the_fractions():
    rows = perovskite_film_dft("helpful", n=40, seed=5)
    assert list(rows[0]) == ["cs_frac", "br_frac", "formula", "gap_dft_ev"]
    x, y, _, _ = _arrays(rows)
    assert CS_RANGE[0] <= x.min() < 0.02 and 0.38 < x.max() <= CS_RANGE[1]
    assert BR_RANGE[0] <= y.min() < 0.03 and 0.57 < y.max() <= BR_RANGE[1]
    assert rows[0]["formula"] == f"Cs{x[0]:.2f}FA{1 - x[0]:.2f}Pb(I{1 - y[0]:.2f}Br{y[0]:.2f})3"
    for row in rows:
        fractions = site_fractions(parse_formula(row["formula"]), GROUPS)
        assert fractions == {"cs_frac": row["cs_frac"], "br_frac": row["br_frac"]}


def test_deterministic_per_seed_and_checked_arguments():
    assert perovskite_film_dft("misleading", seed=4) == perovskite_film_dft("misleading", seed=4)
    assert perovskite_film_dft("misleading", seed=4) != perovskite_film_dft("misleading", seed=5)
    with pytest.raises(SimulatorError, match="kind must be 'helpful' or 'misleading'"):
        perovskite_film_dft("useful")
    with pytest.raises(SimulatorError, match="n must be a positive whole number"):
        perovskite_film_dft("helpful", n=0)


def test_committed_files_are_what_the_generator_writes(tmp_path):
    written = write_prior_files(tmp_path)
    assert [p.name for p in written] == [
        "perovskite_film_dft_helpful.csv",
        "perovskite_film_dft_misleading.csv",
        "perovskites_hse06.csv",
    ]
    for path in written:
        committed = CAMPAIGN_DATA_DIR / path.name
        assert committed.read_bytes() == path.read_bytes(), f"regenerate with: python -m simulators.dft ({path.name})"
    hse = (CAMPAIGN_DATA_DIR / "perovskites_hse06.csv").read_text().splitlines()
    assert hse[0] == "organic,cation,anion,hse_gap_ev" and len(hse) == 193
    assert hse[1] == "ethylammonium,Ge,F,5.3704"


def test_write_csv_wants_rows_with_the_same_keys(tmp_path):
    with pytest.raises(SimulatorError, match="no rows"):
        write_csv([], tmp_path / "a.csv")
    with pytest.raises(SimulatorError, match="row 2 has keys"):
        write_csv([{"a": 1, "b": 2}, {"b": 2, "a": 1}], tmp_path / "a.csv")


def test_hse06_rows():
    rows = hse06_rows()
    assert len(rows) == 192
    assert {r["cation"] for r in rows} == {"Ge", "Sn", "Pb"} and {r["anion"] for r in rows} == {"F", "Cl", "Br", "I"}
    assert len({(r["organic"], r["cation"], r["anion"]) for r in rows}) == 192


def test_measured_perovskites_are_shifted_from_hse06_and_noisy():
    sim = perovskites_measured(seed=0, shift_ev=-0.6, scale=1.0, spread_ev=0.0, noise_ev=0.02)
    assert isinstance(sim, Simulator) and sim.outcomes == ("band_gap_ev",)
    hse = {(r["organic"], r["cation"], r["anion"]): r["hse_gap_ev"] for r in hse06_rows()}
    mapbi3 = {"organic": "methylammonium", "cation": "Pb", "anion": "I"}
    assert sim.truth(mapbi3)["band_gap_ev"] == pytest.approx(hse[("methylammonium", "Pb", "I")] - 0.6)
    rng = np.random.default_rng(1)
    draws = [sim(mapbi3, rng)["band_gap_ev"] for _ in range(200)]
    assert np.std(draws) == pytest.approx(0.02, rel=0.3)
    assert np.mean(draws) == pytest.approx(sim.truth(mapbi3)["band_gap_ev"], abs=0.01)


def test_measured_perovskites_defaults_are_plausible_and_seeded():
    a, b, c = perovskites_measured(seed=0), perovskites_measured(seed=0), perovskites_measured(seed=1)
    assert a.table == b.table != c.table
    ma_pb = {"organic": "methylammonium", "cation": "Pb"}
    halides = [a.truth({**ma_pb, "anion": x})["band_gap_ev"] for x in ("I", "Br", "Cl")]
    assert 1.6 < halides[0] < 2.0 and 2.2 < halides[1] < 2.6 and 2.8 < halides[2] < 3.2
    assert min(a.table.values()) > 0.5
    with pytest.raises(SimulatorError, match="unknown option"):
        perovskites_measured(shift=0.1)
    with pytest.raises(SimulatorError, match="is not one of"):
        a.truth({"organic": "methylammonium", "cation": "Xe", "anion": "I"})
