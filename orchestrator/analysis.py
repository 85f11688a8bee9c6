"""Analysis: raw readings (a spectrum, an I–V curve) → the campaign's outcomes. Pure functions.

Built-ins, named in a campaign's ``analysis:`` section:

``pl_peak(spectrum, min_snr=10, baseline_fraction=0.1)`` returns
    ``peak_nm`` (centroid of the top of the peak), ``peak_energy_ev`` (1239.84 / peak_nm, the optical gap
    read from the PL maximum), ``peak_counts`` (height above the baseline), ``peak_counts_per_ms`` (height
    per ms of integration, comparable across exposures), ``fwhm_nm`` (width at half height, interpolated
    between pixels) and ``integrated_counts`` (area above the baseline within 3 FWHM of the peak). The
    baseline is first the median of the lowest ``baseline_fraction`` of pixels, then, once the peak is
    found, the median of the pixels more than 3 FWHM away from it; the noise is their standard deviation. A spectrum whose peak is
    below ``min_snr`` times the noise has no peak: the experiment fails ("no PL peak"), it is not given a
    number. A saturated peak (at the detector's ceiling) fails too, naming the fix (shorter integration).

``iv_metrics(iv_curve)`` returns ``voc_v`` (zero crossing of the current), ``isc_a`` (current at 0 V,
    as a positive photocurrent), ``pmax_w`` (largest power delivered) and ``fill_factor``.

``values(reading)`` returns the numeric fields of a step's labelled reply (``as: mass`` on a balance's
    read step), for instruments that answer with numbers rather than a spectrum or a curve.

A user function ``package.module:function`` is called as ``function(reading, **options)`` and returns a
mapping of named quantities; ``outcomes:`` maps the quantities to campaign outcomes.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from instruments.readings import IVCurve, Reading, Spectrum, Values
from orchestrator.errors import ExperimentFailed, UserInputError
from orchestrator.lab_config import AnalysisSpec

HC_EV_NM = 1239.84193
SATURATION_COUNTS = 65535.0


def pl_peak(spectrum: Spectrum, min_snr: float = 10.0, baseline_fraction: float = 0.1) -> dict[str, float]:
    """Photoluminescence peak position, height and width (see the module docstring).

    Raises:
        ExperimentFailed: no peak above the noise, or a saturated peak.
    """
    wl = np.asarray(spectrum.wavelength_nm, dtype=float)
    counts = np.asarray(spectrum.counts, dtype=float)
    if wl.size < 5 or wl.size != counts.size or not np.all(np.isfinite(counts)):
        raise ExperimentFailed(f"spectrum unusable: {wl.size} wavelengths, {counts.size} counts, finite={np.all(np.isfinite(counts))}")
    n_base = max(3, int(baseline_fraction * counts.size))
    lowest = np.sort(counts)[:n_base]
    baseline, noise = float(np.median(lowest)), float(np.std(lowest)) or 1.0
    found = _peak(wl, counts - baseline, noise, min_snr)
    # Second pass: the baseline and noise from the pixels well away from the peak, where there are enough.
    far = np.abs(wl - found["peak_nm"]) > 3 * found["fwhm_nm"]
    if far.sum() >= 10:
        baseline, noise = float(np.median(counts[far])), float(np.std(counts[far])) or 1.0
        found = _peak(wl, counts - baseline, noise, min_snr)
    i = int(np.argmin(np.abs(wl - found["peak_nm"])))
    if np.max(counts[max(0, i - 2) : i + 3]) >= SATURATION_COUNTS:
        raise ExperimentFailed("PL peak saturated at the detector's ceiling; lower integration_ms")
    found["peak_counts_per_ms"] = found["peak_counts"] / spectrum.integration_ms
    return found


def _peak(wl: np.ndarray, signal: np.ndarray, noise: float, min_snr: float) -> dict[str, float]:
    i = int(np.argmax(signal))
    height = float(signal[i])
    if height < min_snr * noise:
        raise ExperimentFailed(f"no PL peak: the highest point is {height / noise:.1f} x the noise (needs {min_snr:g})")
    half = height / 2.0
    left = i
    while left > 0 and signal[left] > half:
        left -= 1
    right = i
    while right < signal.size - 1 and signal[right] > half:
        right += 1
    if signal[left] > half or signal[right] > half:
        raise ExperimentFailed("PL peak runs off the edge of the spectrum; widen the spectral range")
    wl_left = _cross(wl[left], wl[left + 1], signal[left], signal[left + 1], half)
    wl_right = _cross(wl[right - 1], wl[right], signal[right - 1], signal[right], half)
    fwhm = float(wl_right - wl_left)
    top = signal > 0.8 * height
    top[: left + 1] = False
    top[right:] = False
    peak_nm = float(np.sum(wl[top] * signal[top]) / np.sum(signal[top])) if top.any() else float(wl[i])
    window = np.abs(wl - peak_nm) <= 3 * fwhm
    return {
        "peak_nm": peak_nm,
        "peak_energy_ev": HC_EV_NM / peak_nm,
        "peak_counts": height,
        "fwhm_nm": fwhm,
        "integrated_counts": float(np.trapezoid(signal[window], wl[window])),
    }


def _cross(x0: float, x1: float, y0: float, y1: float, level: float) -> float:
    return float(x0 + (level - y0) * (x1 - x0) / (y1 - y0)) if y1 != y0 else float(x0)


def iv_metrics(curve: IVCurve) -> dict[str, float]:
    """Solar-cell figures of an illuminated I–V sweep (see the module docstring).

    Raises:
        ExperimentFailed: no zero crossing of the current (no photovoltaic response in the swept range).
    """
    v = np.asarray(curve.voltage_v, dtype=float)
    i = np.asarray(curve.current_a, dtype=float)
    order = np.argsort(v)
    v, i = v[order], i[order]
    if v.size < 3 or not np.all(np.isfinite(i)):
        raise ExperimentFailed("I-V curve unusable: fewer than 3 finite points")
    cross = np.nonzero((i[:-1] < 0) & (i[1:] >= 0))[0]
    if cross.size == 0:
        raise ExperimentFailed("no open-circuit voltage in the swept range (the current never changes sign)")
    k = int(cross[0])
    voc = _cross(v[k], v[k + 1], i[k], i[k + 1], 0.0)
    isc = -float(np.interp(0.0, v, i))
    power = -v * i
    pmax = float(np.max(power))
    ff = pmax / (voc * isc) if voc > 0 and isc > 0 else 0.0
    return {"voc_v": voc, "isc_a": isc, "pmax_w": pmax, "fill_factor": ff}


def values(reading: Values) -> dict[str, float]:
    """The numeric values of a labelled reply (a balance's mass, a custom rig's reading), as they are."""
    if not isinstance(reading, Values):
        raise ExperimentFailed(f"analysis 'values' needs a labelled reply, not a {reading.kind}")
    return {k: float(v) for k, v in reading.values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


BUILTIN_ANALYSES: dict[str, Callable[..., Mapping[str, float]]] = {
    "pl_peak": pl_peak,
    "iv_metrics": iv_metrics,
    "values": values,
}


def analysis_function(name: str) -> Callable[..., Mapping[str, float]]:
    """A built-in analysis or a user's ``package.module:function``.

    Raises:
        UserInputError: unknown name, or a module/function that cannot be imported.
    """
    if ":" not in name:
        if name not in BUILTIN_ANALYSES:
            raise UserInputError(f"unknown analysis '{name}'; built-in: {', '.join(BUILTIN_ANALYSES)}, or package.module:function")
        return BUILTIN_ANALYSES[name]
    module_name, _, func_name = name.partition(":")
    try:
        func = getattr(importlib.import_module(module_name), func_name, None)
    except ImportError as exc:
        raise UserInputError(f"analysis '{name}': cannot import '{module_name}' ({exc})") from None
    if not callable(func):
        raise UserInputError(f"analysis '{name}': '{module_name}' has no function '{func_name}'")
    return func


def analyze(specs: Sequence[AnalysisSpec], readings: Mapping[str, Reading]) -> dict[str, float]:
    """Runs every analysis on its reading and returns the campaign outcomes they fill.

    Raises:
        ExperimentFailed: a reading is missing, an analysis finds nothing to measure, or a quantity is not a
            finite number.
    """
    outcomes: dict[str, float] = {}
    for spec in specs:
        if spec.reading not in readings:
            raise ExperimentFailed(f"no reading '{spec.reading}' was taken; readings: {', '.join(readings) or 'none'}")
        quantities: Mapping[str, Any] = analysis_function(spec.function)(readings[spec.reading], **spec.options)
        for quantity, outcome in spec.outcomes.items():
            value = quantities.get(quantity)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ExperimentFailed(f"analysis {spec.function} gave {quantity}={value!r}, not a finite number")
            outcomes[outcome] = float(value)
    return outcomes
