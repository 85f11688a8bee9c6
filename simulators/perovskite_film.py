"""Mixed-cation, mixed-halide perovskite thin film Cs_x FA_(1-x) Pb (I_(1-y) Br_y)_3, spin-coated and annealed.

x = ``cs_frac`` (Cs on the A site), y = ``br_frac`` (Br on the X site). Outcomes: ``band_gap_ev``,
``pl_intensity`` (arbitrary units, the best film scores about 100) and ``fwhm_nm`` (PL linewidth).

Band gap (Vegard's law with bowing in both sublattices)::

    Eg = (1-x)(1-y) E_FAI + (1-x) y E_FABr + x (1-y) E_CsI + x y E_CsBr - b_X y(1-y) - b_A x(1-x)

with E_FAI = 1.51, E_FABr = 2.23 eV (Eperon et al., Energy Environ. Sci. 7, 982, 2014 report 1.48 and 2.23),
E_CsI = 1.73, E_CsBr = 2.36 eV (Beal et al., J. Phys. Chem. Lett. 7, 746, 2016), halide bowing b_X = 0.33 eV
(Noh et al., Nano Lett. 13, 1764, 2013: Eg = 1.57 + 0.39 y + 0.33 y^2 for MAPb(I,Br)3) and a small cation bowing
b_A = 0.08 eV (Cs/FA mixing contracts and tilts the lattice non-linearly: Prasanna et al., JACS 139, 11117, 2017).

PL intensity is a product of smooth factors, each in (0, 1], scaled by ``PL_SCALE``::

    PL = PL_SCALE * q_a * f_phase * f_trap * f_seg * f_abs * f_cov * f_alpha * f_conv * f_surv * f_grain * f_crack

- f_phase = exp(-((t_G - 0.965) / 0.018)^2 / 2): Goldschmidt tolerance factor t_G = (r_A + r_X) / (sqrt2 (r_Pb + r_X))
  with composition-averaged radii (FA 2.53, Cs 1.88, Pb 1.19, I 2.20, Br 1.96 A; Kieslich et al., Chem. Sci. 5,
  4712, 2014). Pure FAPbI3 (t_G ~ 0.99) drifts to the yellow delta phase; ~15 % Cs pulls t_G into the stable
  window (Li et al., Chem. Mater. 28, 284, 2016). Br raises t_G, so the best Cs fraction grows with Br.
- f_trap = 1 - 0.35 exp(-y / 0.1): a little Br passivates iodide-vacancy traps.
- f_seg = 1 / (1 + exp((y - y_c) / 0.05)), y_c = 0.22 + 0.4 x: above y_c light-induced halide segregation (Hoke et
  al., Chem. Sci. 6, 613, 2015) and the larger non-radiative losses of wide-gap films lower the PL of the mixed
  phase; Cs raises the threshold (McMeekin et al., Science 351, 151, 2016).
- Thickness d = 400 nm per mol/L. f_abs = 1 - exp(-d / 220 nm) (near-band-edge excitation); f_crack = 1 / (1 +
  (d / 760 nm)^5) (thick films crack and trap solvent); f_cov = logistic((c - c_a) / 0.08 M), where c_a is the
  concentration the antisolvent a needs for full coverage (Jeon et al., Nat. Mater. 13, 897, 2014).
- Annealing at T for t, with Arrhenius rates k(T) = k0 exp(-Ea/R (1/T - 1/423 K)), (k0 in 1/min, Ea in kJ/mol):
  conversion of the intermediate f_conv = 1 - exp(-k_c t), (0.5, 80), slowed by thick films (x 500 nm / d);
  grain growth d_g = d_max - (d_max - d_a) exp(-k_g t), (0.15, 100), with d_max = 1.5 d and d_a the antisolvent's
  nucleus size, f_grain = d_g / (d_g + 250 nm); decomposition to PbI2 f_surv = exp(-k_d t), (0.003, 120), slowed by
  Cs (/ (1 + 5x)). f_alpha = logistic((T - T_alpha) / 8 K), T_alpha = 145 - 200 x degC: the black alpha phase needs
  a temperature that Cs lowers. These constants are illustrative, chosen for a realistic landscape, not fitted.
- q_a: antisolvent quality (chlorobenzene 1.0, diethyl ether 0.98, toluene 0.93, none 0.6).

The optimum is interior (x ~ 0.19, y ~ 0.15, T ~ 153 degC, t ~ 16 min, c ~ 1.24 M, chlorobenzene; see
:func:`best_pl_intensity`) and the knobs interact: Br shifts the best Cs fraction, Cs shifts the best temperature,
concentration shifts the conversion time and the antisolvent the grain size, hence the best thermal budget.

PL linewidth: FWHM (meV) = 60 (phonon broadening at room temperature) + 160 y(1-y) + 60 x(1-x) (alloy disorder)
+ 60 (1 - f_seg) (segregated I-rich emission) + 50 (1 - f_alpha f_conv) (unconverted, disordered material)
+ 30 * 250 nm / d_g (grain-boundary states), converted to nm at the band-gap wavelength (d lambda = hc dE / E^2).

Films fail (ExperimentFailed) where x * y > 0.28 (Cs- and Br-rich films phase-separate), where coverage < 25 %
(too dilute for the antisolvent, mostly "none" below ~0.85 M), and where the anneal decomposes > 98 % of the film;
about 17 % of uniformly drawn conditions fail.

Noise: PL is multiplied by exp(0.05 s z) (log-normal, median unbiased), the band gap gets 5 meV * s and the FWHM
0.5 nm * s of Gaussian noise, s = ``noise_scale``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import minimize

from orchestrator.errors import ExperimentFailed
from simulators.base import check_conditions, non_negative_option, single_threaded, strict_options

__all__ = [
    "ANTISOLVENTS",
    "OUTCOMES",
    "PARAMETERS",
    "PL_SCALE",
    "PerovskiteFilm",
    "band_gap_ev",
    "best_pl_intensity",
    "perovskite_film",
]

ANTISOLVENTS = ("chlorobenzene", "toluene", "diethyl_ether", "none")

PARAMETERS: tuple[dict[str, Any], ...] = (
    {"name": "cs_frac", "type": "continuous", "low": 0.0, "high": 0.4, "unit": "fraction"},
    {"name": "br_frac", "type": "continuous", "low": 0.0, "high": 1.0, "unit": "fraction"},
    {"name": "anneal_temp_c", "type": "continuous", "low": 60.0, "high": 220.0, "unit": "degC"},
    {"name": "anneal_time_min", "type": "continuous", "low": 1.0, "high": 90.0, "unit": "min"},
    {"name": "precursor_conc_m", "type": "continuous", "low": 0.6, "high": 1.8, "unit": "mol/L"},
    {"name": "antisolvent", "type": "categorical", "choices": list(ANTISOLVENTS)},
)
OUTCOMES: tuple[dict[str, Any], ...] = (
    {"name": "band_gap_ev", "unit": "eV", "goal": "target"},
    {"name": "pl_intensity", "unit": "a.u.", "goal": "maximize"},
    {"name": "fwhm_nm", "unit": "nm", "goal": "minimize"},
)

# Endmember band gaps (eV) and bowing parameters; sources in the module docstring.
E_FAI, E_FABR, E_CSI, E_CSBR = 1.51, 2.23, 1.73, 2.36
BOWING_HALIDE_EV, BOWING_CATION_EV = 0.33, 0.08
# Ionic radii (angstrom) for the tolerance factor.
R_FA, R_CS, R_PB, R_I, R_BR = 2.53, 1.88, 1.19, 2.20, 1.96
GAS_CONSTANT = 8.314  # J/(mol K)
T_REF_K = 423.15
# (rate at T_REF_K in 1/min, activation energy in J/mol); decomposition has the largest barrier, so long gentle
# anneals beat short hot ones until the alpha phase and grain growth ask for heat.
CONVERSION_RATE = (0.5, 80e3)
GRAIN_GROWTH_RATE = (0.15, 100e3)
DECOMPOSITION_RATE = (0.003, 120e3)
MAX_CS_TIMES_BR = 0.28  # miscibility limit of Cs- and Br-rich films
MIN_COVERAGE = 0.25  # below this the film is isolated islands, not a film
MIN_SURVIVAL = 0.02  # below this fraction of intact film there is nothing left to measure
# Per antisolvent: quality multiplier, concentration for full coverage (mol/L), nucleus size (nm).
# Diethyl ether nucleates densely (small grains, needs more thermal budget); no quench leaves sparse large islands.
ANTISOLVENT_PROPS = np.array([[1.00, 0.55, 200.0], [0.93, 0.65, 170.0], [0.98, 0.50, 110.0], [0.60, 0.95, 350.0]])
PL_SCALE = 200.0  # the best film's product of factors is ~0.5, so it scores ~100

_NAMES = tuple(p["name"] for p in PARAMETERS)
_CONTINUOUS_BOUNDS = np.array([[p["low"], p["high"]] for p in PARAMETERS[:5]])
# Reasons by failure code; filled in with the run's numbers so a failed row in the ledger explains itself.
_FAILURES = {
    1: "Cs- and Br-rich composition phase-separates: cs_frac * br_frac = {xy:.3f} > " + str(MAX_CS_TIMES_BR),
    2: "film did not cover the substrate: coverage {coverage:.0%} at {conc:.2f} M with antisolvent {solvent!r}",
    3: "anneal decomposed the film to PbI2: {lost:.1%} lost at {temp:.0f} degC for {time:.0f} min",
}


def band_gap_ev(cs_frac: np.ndarray | float, br_frac: np.ndarray | float) -> np.ndarray | float:
    """Band gap (eV) of Cs_x FA_(1-x) Pb (I_(1-y) Br_y)_3 by bilinear Vegard's law with bowing; broadcasts."""
    x, y = np.asarray(cs_frac, dtype=float), np.asarray(br_frac, dtype=float)
    linear = (1 - x) * (1 - y) * E_FAI + (1 - x) * y * E_FABR + x * (1 - y) * E_CSI + x * y * E_CSBR
    gap = linear - BOWING_HALIDE_EV * y * (1 - y) - BOWING_CATION_EV * x * (1 - x)
    return float(gap) if gap.ndim == 0 else gap


def _logistic(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free form of 1 / (1 + exp(-z))


def _rate(k_ref_per_min: float, ea_j_mol: float, temp_k: np.ndarray) -> np.ndarray:
    return k_ref_per_min * np.exp(-ea_j_mol / GAS_CONSTANT * (1.0 / temp_k - 1.0 / T_REF_K))


def _model(
    x: ArrayLike, y: ArrayLike, temp_c: ArrayLike, time_min: ArrayLike, conc_m: ArrayLike, solvent_idx: ArrayLike
) -> dict[str, np.ndarray]:
    """Vectorized noise-free model; all inputs broadcast. Returns outcomes and a failure code (0 = film formed)."""
    x, y, temp_c, time_min, conc_m = (np.asarray(v, dtype=float) for v in (x, y, temp_c, time_min, conc_m))
    quality, coverage_conc_m, nucleus_nm = ANTISOLVENT_PROPS[np.asarray(solvent_idx)].T
    r_a = (1 - x) * R_FA + x * R_CS
    r_x = (1 - y) * R_I + y * R_BR
    tolerance = (r_a + r_x) / (np.sqrt(2.0) * (R_PB + r_x))
    f_phase = np.exp(-0.5 * ((tolerance - 0.965) / 0.018) ** 2)
    f_trap = 1 - 0.35 * np.exp(-y / 0.1)
    f_seg = _logistic(-(y - (0.22 + 0.4 * x)) / 0.05)

    thickness_nm = 400.0 * conc_m
    f_abs = 1 - np.exp(-thickness_nm / 220.0)
    f_crack = 1 / (1 + (thickness_nm / 760.0) ** 5)
    coverage = _logistic((conc_m - coverage_conc_m) / 0.08)

    temp_k = temp_c + 273.15
    f_alpha = _logistic((temp_c - (145.0 - 200.0 * x)) / 8.0)
    f_conv = 1 - np.exp(-_rate(*CONVERSION_RATE, temp_k) * (500.0 / thickness_nm) * time_min)
    survival = np.exp(-_rate(*DECOMPOSITION_RATE, temp_k) / (1 + 5 * x) * time_min)
    grain_max_nm = 1.5 * thickness_nm
    grain_nm = grain_max_nm - (grain_max_nm - nucleus_nm) * np.exp(-_rate(*GRAIN_GROWTH_RATE, temp_k) * time_min)
    f_grain = grain_nm / (grain_nm + 250.0)

    pl = PL_SCALE * quality * f_phase * f_trap * f_seg * f_abs * f_crack * coverage * f_alpha * f_conv
    pl = pl * survival * f_grain
    gap = band_gap_ev(x, y)
    fwhm_mev = (
        60 + 160 * y * (1 - y) + 60 * x * (1 - x) + 60 * (1 - f_seg) + 50 * (1 - f_alpha * f_conv)
        + 30 * 250.0 / grain_nm
    )
    fwhm_nm = 1239.84 * fwhm_mev / 1000.0 / gap**2  # d(lambda) = hc dE / E^2
    # Codes index _FAILURES; the first matching condition names the failure.
    failure = np.select([x * y > MAX_CS_TIMES_BR, coverage < MIN_COVERAGE, survival < MIN_SURVIVAL], [1, 2, 3], 0)
    return {
        "band_gap_ev": gap, "pl_intensity": pl, "fwhm_nm": fwhm_nm, "failure": failure,
        "coverage": coverage, "survival": survival,
    }


class PerovskiteFilm:
    """Simulated spin-coated Cs/FA Pb(I/Br)3 film; see the module docstring for the model.

    Args:
        noise_scale: multiplies every measurement-noise amplitude; 0 gives the noise-free truth.
        failure_rate: probability that a run fails for a reason unrelated to the conditions (e.g. a
            clogged dispense tip), to exercise failure handling.
    """

    parameters: tuple[dict[str, Any], ...] = PARAMETERS
    outcomes: tuple[str, ...] = tuple(o["name"] for o in OUTCOMES)

    def __init__(self, noise_scale: float = 1.0, failure_rate: float = 0.0):
        self.noise_scale = non_negative_option("perovskite_film", "noise_scale", noise_scale)
        self.failure_rate = non_negative_option("perovskite_film", "failure_rate", failure_rate, upper=1.0)

    def _evaluate(self, conditions: Mapping[str, object]) -> tuple[dict[str, float] | None, str]:
        c = check_conditions("perovskite_film", conditions, PARAMETERS)
        out = _model(*(c[n] for n in _NAMES[:5]), ANTISOLVENTS.index(c["antisolvent"]))
        code = int(out["failure"])
        if code == 0:
            return {name: float(out[name]) for name in self.outcomes}, ""
        return None, _FAILURES[code].format(
            xy=c["cs_frac"] * c["br_frac"], coverage=float(out["coverage"]), conc=c["precursor_conc_m"],
            solvent=c["antisolvent"], lost=1 - float(out["survival"]), temp=c["anneal_temp_c"],
            time=c["anneal_time_min"],
        )

    def truth(self, conditions: Mapping[str, object]) -> dict[str, float] | None:
        """Noise-free outcomes, or None where the film fails to form (random faults excluded)."""
        return self._evaluate(conditions)[0]

    def __call__(self, conditions: Mapping[str, object], rng: np.random.Generator) -> dict[str, float]:
        """Measure one film; see :class:`simulators.base.Simulator`."""
        values, reason = self._evaluate(conditions)
        if values is None:
            raise ExperimentFailed(reason)
        # Always draw all four numbers, so a run's noise does not depend on failure_rate.
        z = rng.standard_normal(3)
        fault = rng.random()
        if fault < self.failure_rate:
            raise ExperimentFailed("random fault: precursor dispense failed (failure_rate)")
        s = self.noise_scale
        return {
            "band_gap_ev": values["band_gap_ev"] + 0.005 * s * float(z[0]),
            "pl_intensity": values["pl_intensity"] * float(np.exp(0.05 * s * z[1])),
            "fwhm_nm": max(values["fwhm_nm"] + 0.5 * s * float(z[2]), 0.0),
        }


@strict_options
def perovskite_film(noise_scale: float = 1.0, failure_rate: float = 0.0) -> PerovskiteFilm:
    """Factory for the campaign-file registry; options as in :class:`PerovskiteFilm`."""
    return PerovskiteFilm(noise_scale=noise_scale, failure_rate=failure_rate)


def _pl_or_zero(u: np.ndarray, solvent_idx: int) -> np.ndarray:
    """Noise-free PL at rows of ``u`` (n x 5 continuous values), 0 where the film fails."""
    out = _model(*np.atleast_2d(u).T, solvent_idx)
    return np.where(out["failure"] == 0, out["pl_intensity"], 0.0)


def _neg_pl_and_grad(u: np.ndarray, solvent_idx: int) -> tuple[float, np.ndarray]:
    """-PL at ``u`` and its central-difference gradient, from one vectorized model call (scipy minimizes)."""
    low, high = _CONTINUOUS_BOUNDS.T
    steps = np.diag(1e-6 * (high - low))
    points = np.clip(np.vstack([u, u + steps, u - steps]), low, high)
    pl = _pl_or_zero(points, solvent_idx)
    spread = np.diag(points[1:6] - points[6:11])
    return -float(pl[0]), -(pl[1:6] - pl[6:11]) / spread


def best_pl_intensity(seed: int = 0, n_random: int = 50_000) -> tuple[float, dict[str, float | str]]:
    """Estimate the noise-free maximum of ``pl_intensity`` over the whole space.

    Per antisolvent: ``n_random`` uniform points, then L-BFGS-B from the best five; about 0.3 s.
    Failed films count as 0, so the search never lands in the failure region.

    Returns:
        (best PL, its conditions).
    """
    rng = np.random.default_rng(seed)
    low, high = _CONTINUOUS_BOUNDS.T
    best_value, best_idx = -np.inf, 0
    best_u = np.zeros(5)
    for idx in range(len(ANTISOLVENTS)):
        u = low + rng.random((n_random, 5)) * (high - low)
        pl = _pl_or_zero(u, idx)
        for start in u[np.argsort(pl)[-5:]]:
            with single_threaded():
                res = minimize(
                    _neg_pl_and_grad, start, args=(idx,), jac=True, method="L-BFGS-B", bounds=_CONTINUOUS_BOUNDS
                )
            if -res.fun > best_value:
                best_value, best_u, best_idx = float(-res.fun), res.x, idx
    conditions: dict[str, float | str] = {n: float(v) for n, v in zip(_NAMES[:5], best_u, strict=True)}
    conditions["antisolvent"] = ANTISOLVENTS[best_idx]
    return best_value, conditions

