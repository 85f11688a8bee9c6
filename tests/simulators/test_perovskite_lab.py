"""The simulated bench's sample model: what a film is, from what the instruments did to it."""

from __future__ import annotations

import pytest

from orchestrator.errors import ExperimentFailed
from simulators.lab import Event, SimLab
from simulators.perovskite_film import perovskite_film
from simulators.perovskite_lab import STOCK_M, film_conditions

STATIONS = {"dispense": (10, 10, 5), "quench_toluene": (50, 10, 5), "hotplate": (100, 50, 5), "spectrometer": (200, 50, 5)}


def history(volumes, *, setpoint_c=150.0, anneal_s=600.0, quench="quench_toluene", heat_at_s=0.0):
    ev = [Event(heat_at_s, "hotplate", "heater", {"setpoint_c": setpoint_c, "on": True}), Event(900.0, "lab", "new_sample", {})]
    t = 1000.0
    for reagent, v in volumes.items():
        ev.append(Event(t, f"pump_{reagent}", "dispensed", {"volume_ul": v, "reagent": reagent, "direction": "infuse"}))
    for station in ("dispense", quench, "hotplate"):
        if station:
            ev.append(Event(t, "stage", "position", dict(zip(("x_mm", "y_mm", "z_mm"), STATIONS[station]))))
            t += 10.0
    t += anneal_s - 10.0
    ev.append(Event(t, "stage", "position", dict(zip(("x_mm", "y_mm", "z_mm"), STATIONS["spectrometer"]))))
    return ev


def test_composition_concentration_antisolvent_and_anneal_from_events():
    c = film_conditions(history({"FAPbI3": 60.0, "CsPbBr3": 20.0, "DMF": 20.0}), stations=STATIONS)
    assert c["cs_frac"] == pytest.approx(0.25)
    assert c["br_frac"] == pytest.approx(0.25)
    assert c["precursor_conc_m"] == pytest.approx(STOCK_M * 0.8)
    assert c["antisolvent"] == "toluene"
    assert c["anneal_time_min"] == pytest.approx(10.0)
    # The plate was switched on long before (tau 60 s), so the sample sees the set point.
    assert c["anneal_temp_c"] == pytest.approx(150.0, abs=0.01)


def test_a_plate_still_heating_gives_a_cooler_anneal_and_no_quench_means_none():
    c = film_conditions(history({"FAPbI3": 100.0}, heat_at_s=1010.0, quench=None), stations=STATIONS)
    assert c["antisolvent"] == "none"
    assert 100.0 < c["anneal_temp_c"] < 150.0


def test_no_precursor_is_a_failed_sample():
    with pytest.raises(ExperimentFailed, match="no precursor"):
        film_conditions(history({"DMF": 50.0}), stations=STATIONS)


def test_lab_measures_the_film_model_once_per_sample_and_fails_unannealed_films():
    lab = SimLab(truth=perovskite_film(noise_scale=0.0), sample_model=lambda ev: film_conditions(ev, stations=STATIONS))
    lab.events = history({"FAPbI3": 80.0, "CsPbI3": 20.0})
    out, why = lab.outcomes()
    assert out is not None and why == ""
    assert lab.emission().peak_nm == pytest.approx(1239.84193 / out["band_gap_ev"])
    lab.new_sample()  # nothing done to the new substrate: no film
    assert lab.emission() is None
    assert "no precursor" in lab.outcomes()[1]
