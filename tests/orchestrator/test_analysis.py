"""Analysis of raw readings into outcomes: PL peaks and I-V curves."""

from __future__ import annotations

import numpy as np
import pytest

from instruments.readings import IVCurve, Spectrum, reading_from_json
from orchestrator.analysis import HC_EV_NM, analyze, iv_metrics, pl_peak
from orchestrator.errors import ExperimentFailed
from orchestrator.lab_config import AnalysisSpec


def gaussian_spectrum(peak_nm=760.0, height=5000.0, fwhm_nm=40.0, noise=20.0, seed=0, integration_ms=100.0):
    wl = np.linspace(400, 1000, 512)
    sigma = fwhm_nm / 2.3548
    rng = np.random.default_rng(seed)
    counts = 500 + height * np.exp(-0.5 * ((wl - peak_nm) / sigma) ** 2) + rng.normal(0, noise, wl.size)
    return Spectrum(tuple(wl), tuple(counts), integration_ms)


def test_pl_peak_recovers_position_height_and_width():
    q = pl_peak(gaussian_spectrum())
    assert q["peak_nm"] == pytest.approx(760.0, abs=1.0)
    assert q["peak_energy_ev"] == pytest.approx(HC_EV_NM / 760.0, abs=0.003)
    assert q["peak_counts"] == pytest.approx(5000, rel=0.05)
    assert q["peak_counts_per_ms"] == pytest.approx(50, rel=0.05)
    assert q["fwhm_nm"] == pytest.approx(40.0, abs=2.0)
    assert q["integrated_counts"] == pytest.approx(5000 * 40 / 0.9394, rel=0.05)


def test_flat_or_saturated_spectra_fail_the_experiment_with_a_reason():
    with pytest.raises(ExperimentFailed, match="no PL peak"):
        pl_peak(gaussian_spectrum(height=0.0))
    saturated = gaussian_spectrum(height=1e6)
    clipped = Spectrum(saturated.wavelength_nm, tuple(min(c, 65535.0) for c in saturated.counts), 100.0)
    with pytest.raises(ExperimentFailed, match="saturated"):
        pl_peak(clipped)
    with pytest.raises(ExperimentFailed, match="edge"):
        pl_peak(gaussian_spectrum(peak_nm=1000.0, fwhm_nm=80.0))


def test_iv_metrics_of_a_diode_under_light():
    v = np.linspace(-0.2, 1.4, 81)
    n_vt, i0, iph = 1.5 * 0.025852, 1e-17, 2e-3
    i = i0 * (np.exp(v / n_vt) - 1) - iph
    m = iv_metrics(IVCurve(tuple(v), tuple(i), 0.05))
    voc = n_vt * np.log(iph / i0 + 1)
    assert m["voc_v"] == pytest.approx(voc, abs=0.01)
    assert m["isc_a"] == pytest.approx(iph, rel=1e-3)
    assert 0.7 < m["fill_factor"] < 0.95
    with pytest.raises(ExperimentFailed, match="open-circuit"):
        iv_metrics(IVCurve((0.0, 0.5, 1.0), (1e-9, 2e-9, 3e-9), 0.05))


def test_analyze_maps_quantities_to_outcomes_and_checks_readings():
    spec = AnalysisSpec(reading="pl", function="pl_peak", outcomes={"peak_energy_ev": "band_gap_ev", "fwhm_nm": "fwhm_nm"})
    out = analyze([spec], {"pl": gaussian_spectrum()})
    assert set(out) == {"band_gap_ev", "fwhm_nm"}
    with pytest.raises(ExperimentFailed, match="no reading 'pl'"):
        analyze([spec], {})


def test_readings_round_trip_through_json():
    s = gaussian_spectrum()
    assert reading_from_json(s.to_json()) == s
    c = IVCurve((0.0, 1.0), (1e-3, -1e-3), 0.01)
    assert reading_from_json(c.to_json()) == c
