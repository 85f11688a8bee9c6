"""Simulated DFT data sets for transfer-learning priors, and a "measured" twin of the HSE06 perovskite table.

Two kinds of prior data over the :mod:`simulators.perovskite_film` composition box (``cs_frac`` in [0, 0.4],
``br_frac`` in [0, 0.6], the box of ``campaigns/perovskite_film.yaml``; the simulator itself allows Br up to 1),
on a 0.01 composition grid as calculated compositions are reported:

- **helpful** (:func:`perovskite_film_dft` ``kind="helpful"``): what a semilocal (PBE-like) functional gives
  against experiment: the right trends, wrong numbers. With Eg the simulator's :func:`band_gap_ev` model::

      gap_dft_ev = 0.90 * Eg_dft(x, y) - 0.35 + N(0, 0.03^2)

  where ``Eg_dft`` is the same Vegard-with-bowing law with half the halide bowing (small ordered supercells miss
  part of the disorder that bows the real alloy). Gaps come out ~0.5 eV low (the self-interaction error of
  semilocal functionals underestimates gaps), compressed by 10 %, with 0.03 eV of scatter (supercell, k-point
  and relaxation choices). Pearson correlation with the truth is ~0.96 (above 0.92 for any seed at n = 60).
- **misleading** (``kind="misleading"``): the same value range with a wrong trend: the gap *falls* as Br
  replaces I, plus a spurious oscillation along the Cs axis (as from supercell-ordering artefacts)::

      gap_dft_ev = 1.20 - 0.25 (y - 0.3) + 0.10 cos(2 pi x / 0.4) + N(0, 0.03^2)

  It correlates negatively with the truth (about -0.5), so a model that trusts it is pulled the wrong way.

These constants are illustrative, chosen to give a clearly useful and a clearly harmful prior, not fitted to
any calculation.

The HSE06 table: 192 hybrid organic-inorganic perovskites (16 organic cations x Ge/Sn/Pb x F/Cl/Br/I), band
gaps calculated with the HSE06 hybrid functional, from the Olympus benchmark (``simulators/data/perovskites``,
MIT licence, see ``simulators/data/LICENSE``; data originally from Kim et al., Sci. Data 4, 170057, 2017).
:func:`perovskites_measured` builds a simulator of *measured* gaps derived from it: HSE06 without spin-orbit
coupling overestimates lead and tin halide gaps (MAPbI3: 2.46 eV calculated, ~1.6 eV measured), so::

    band_gap_ev = hse_gap_ev + shift_ev + (scale - 1) (hse_gap_ev - 2.5 eV) + d_material + N(0, noise_ev^2)

with a fixed per-material deviation ``d_material ~ N(0, spread_ev^2)`` drawn once from ``seed`` (the part of
experiment no affine correction captures). Defaults give MAPbI3 ~1.85, MAPbBr3 ~2.4, MAPbCl3 ~3.0 eV.

``python -m simulators.dft [folder]`` rewrites the committed files in ``campaigns/data`` (byte-for-byte the same
on every run).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from orchestrator.errors import SimulatorError
from simulators.base import check_conditions, non_negative_option, strict_options
from simulators.perovskite_film import (
    BOWING_CATION_EV,
    BOWING_HALIDE_EV,
    E_CSBR,
    E_CSI,
    E_FABR,
    E_FAI,
)

__all__ = [
    "BR_RANGE",
    "CAMPAIGN_DATA_DIR",
    "CS_RANGE",
    "PerovskitesMeasured",
    "film_formula",
    "hse06_rows",
    "perovskite_film_dft",
    "perovskites_measured",
    "write_csv",
    "write_prior_files",
]

logger = logging.getLogger(__name__)

CS_RANGE = (0.0, 0.4)
BR_RANGE = (0.0, 0.6)
# Compositions are reported to two decimals, so the formula column and the fraction columns agree exactly.
COMPOSITION_DECIMALS = 2
GAP_DECIMALS = 4

# helpful: gap_dft = SCALE * Eg_dft + OFFSET_EV + noise; Eg_dft keeps this share of the halide bowing.
HELPFUL_SCALE, HELPFUL_OFFSET_EV, HELPFUL_BOWING_SHARE = 0.90, -0.35, 0.5
# misleading: centre, slope per unit Br (wrong sign) and Cs-axis oscillation amplitude, all in eV.
MISLEADING_CENTRE_EV, MISLEADING_BR_SLOPE_EV, MISLEADING_CS_WAVE_EV = 1.20, -0.25, 0.10
DFT_NOISE_EV = 0.03

HSE06_DIR = Path(__file__).resolve().parent / "data" / "perovskites"
CAMPAIGN_DATA_DIR = Path(__file__).resolve().parents[1] / "campaigns" / "data"
# The HSE06 gap about which perovskites_measured's scale pivots (mid-range of the halide gaps).
PIVOT_EV = 2.5


def film_formula(cs_frac: float, br_frac: float) -> str:
    """``Cs0.20FA0.80Pb(I0.70Br0.30)3`` for a composition on the two-decimal grid."""
    d = COMPOSITION_DECIMALS
    return f"Cs{cs_frac:.{d}f}FA{1 - cs_frac:.{d}f}Pb(I{1 - br_frac:.{d}f}Br{br_frac:.{d}f})3"


def _dft_gap_helpful_ev(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    linear = (1 - x) * (1 - y) * E_FAI + (1 - x) * y * E_FABR + x * (1 - y) * E_CSI + x * y * E_CSBR
    gap = linear - HELPFUL_BOWING_SHARE * BOWING_HALIDE_EV * y * (1 - y) - BOWING_CATION_EV * x * (1 - x)
    return HELPFUL_SCALE * gap + HELPFUL_OFFSET_EV


def _dft_gap_misleading_ev(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    centre_br = 0.5 * (BR_RANGE[0] + BR_RANGE[1])
    period = CS_RANGE[1] - CS_RANGE[0]
    return (
        MISLEADING_CENTRE_EV
        + MISLEADING_BR_SLOPE_EV * (y - centre_br)
        + MISLEADING_CS_WAVE_EV * np.cos(2 * np.pi * (x - CS_RANGE[0]) / period)
    )


def perovskite_film_dft(
    kind: Literal["helpful", "misleading"], n: int = 60, seed: int = 0
) -> list[dict[str, float | str]]:
    """A simulated DFT data set over the perovskite film's composition box (bias model in the module docstring).

    Compositions are a Latin hypercube in (cs_frac, br_frac), rounded to two decimals.

    Args:
        kind: ``"helpful"`` (biased, noisy, right trend) or ``"misleading"`` (wrong trend).
        n: number of calculations.
        seed: seeds the compositions and the scatter.

    Returns:
        ``n`` rows ``{"cs_frac", "br_frac", "formula", "gap_dft_ev"}``.
    """
    if kind not in ("helpful", "misleading"):
        raise SimulatorError(f"kind must be 'helpful' or 'misleading', got {kind!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise SimulatorError(f"n must be a positive whole number, got {n!r}")
    rng = np.random.default_rng(seed)
    # Latin hypercube: one point per 1/n stripe in each axis, so even small sets span the whole box.
    u = (np.argsort(rng.random((n, 2)), axis=0) + rng.random((n, 2))) / n
    x = np.round(CS_RANGE[0] + u[:, 0] * (CS_RANGE[1] - CS_RANGE[0]), COMPOSITION_DECIMALS)
    y = np.round(BR_RANGE[0] + u[:, 1] * (BR_RANGE[1] - BR_RANGE[0]), COMPOSITION_DECIMALS)
    mean = _dft_gap_helpful_ev(x, y) if kind == "helpful" else _dft_gap_misleading_ev(x, y)
    gap = np.round(mean + DFT_NOISE_EV * rng.standard_normal(n), GAP_DECIMALS)
    return [
        {"cs_frac": float(xi), "br_frac": float(yi), "formula": film_formula(xi, yi), "gap_dft_ev": float(gi)}
        for xi, yi, gi in zip(x, y, gap, strict=True)
    ]


def hse06_rows() -> list[dict[str, float | str]]:
    """The 192 HSE06 band gaps as rows ``{"organic", "cation", "anion", "hse_gap_ev"}``, in the file's order.

    Read with the csv module rather than :func:`simulators.datasets.load_dataset`, which would import torch.
    """
    path = HSE06_DIR / "data.csv"
    rows: list[dict[str, float | str]] = []
    try:
        with path.open(newline="") as f:
            for line_no, cells in enumerate(csv.reader(f), start=1):
                if not cells:
                    continue
                if len(cells) != 4:
                    raise SimulatorError(f"{path}:{line_no}: expected organic,cation,anion,gap, got {len(cells)} cells")
                organic, cation, anion, gap = cells
                rows.append({"organic": organic, "cation": cation, "anion": anion, "hse_gap_ev": float(gap)})
    except (OSError, ValueError) as exc:
        raise SimulatorError(f"{path}: cannot read the HSE06 table: {exc}") from exc
    return rows


def _hse06_parameters() -> tuple[dict[str, Any], ...]:
    config = json.loads((HSE06_DIR / "config.json").read_text())
    return tuple(
        {"name": p["name"], "type": "categorical", "choices": list(p["options"])} for p in config["parameters"]
    )


class PerovskitesMeasured:
    """Measured band gaps of the 192 HSE06 perovskites: shifted, scaled, per-material deviations, noise.

    Follows :class:`simulators.base.Simulator`; the model is in the module docstring.

    Attributes:
        parameters: ``organic``, ``cation``, ``anion`` (categorical, the HSE06 table's choices).
        outcomes: ``("band_gap_ev",)``.
        table: (organic, cation, anion) -> noise-free measured gap (eV).
    """

    name = "perovskites_measured"
    outcomes = ("band_gap_ev",)

    def __init__(
        self, seed: int = 0, shift_ev: float = -0.6, scale: float = 1.2, spread_ev: float = 0.05, noise_ev: float = 0.02
    ):
        self.noise_ev = non_negative_option(self.name, "noise_ev", noise_ev)
        spread_ev = non_negative_option(self.name, "spread_ev", spread_ev)
        self.scale = non_negative_option(self.name, "scale", scale)
        if not isinstance(shift_ev, (int, float)) or isinstance(shift_ev, bool) or not np.isfinite(shift_ev):
            raise SimulatorError(f"{self.name}: option 'shift_ev' must be a finite number, got {shift_ev!r}")
        self.shift_ev = float(shift_ev)
        self.parameters = _hse06_parameters()
        rows = hse06_rows()
        hse = np.array([r["hse_gap_ev"] for r in rows], dtype=float)
        deviation = spread_ev * np.random.default_rng(seed).standard_normal(len(rows))
        measured = hse + self.shift_ev + (self.scale - 1.0) * (hse - PIVOT_EV) + deviation
        self.table: dict[tuple[str, str, str], float] = {
            (str(r["organic"]), str(r["cation"]), str(r["anion"])): float(m)
            for r, m in zip(rows, measured, strict=True)
        }

    def truth(self, conditions: Mapping[str, object]) -> dict[str, float]:
        """Noise-free measured gap (eV)."""
        checked = check_conditions(self.name, conditions, self.parameters)
        key = (str(checked["organic"]), str(checked["cation"]), str(checked["anion"]))
        return {"band_gap_ev": self.table[key]}

    def __call__(self, conditions: Mapping[str, object], rng: np.random.Generator) -> dict[str, float]:
        """One measurement: the noise-free gap plus ``noise_ev`` Gaussian noise."""
        gap = self.truth(conditions)["band_gap_ev"]
        return {"band_gap_ev": gap + self.noise_ev * float(rng.standard_normal())}


@strict_options
def perovskites_measured(
    seed: int = 0, shift_ev: float = -0.6, scale: float = 1.2, spread_ev: float = 0.05, noise_ev: float = 0.02
) -> PerovskitesMeasured:
    """Factory for :class:`PerovskitesMeasured` (unknown options raise SimulatorError naming the allowed ones).

    Args:
        seed: fixes the per-material deviations.
        shift_ev: measured minus HSE06 gap at an HSE06 gap of 2.5 eV.
        scale: slope of measured against HSE06 gap.
        spread_ev: standard deviation of the per-material deviations.
        noise_ev: standard deviation of the measurement noise per call.
    """
    return PerovskitesMeasured(seed=seed, shift_ev=shift_ev, scale=scale, spread_ev=spread_ev, noise_ev=noise_ev)


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write rows with a header (the first row's keys, in order); floats in their shortest exact form.

    Raises:
        SimulatorError: no rows, or rows with different keys.
    """
    if not rows:
        raise SimulatorError(f"{path}: no rows to write")
    header = list(rows[0])
    for i, row in enumerate(rows):
        if list(row) != header:
            raise SimulatorError(f"{path}: row {i + 1} has keys {list(row)}, the first row {header}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # "\n" line ends and repr-exact floats: the regenerated files are byte-identical on every platform.
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([row[k] for k in header] for row in rows)
    return path


def write_prior_files(folder: str | Path = CAMPAIGN_DATA_DIR, seed: int = 0, n: int = 60) -> list[Path]:
    """(Re)write the committed prior files: both film DFT sets and the HSE06 table. Returns their paths."""
    folder = Path(folder)
    return [
        write_csv(perovskite_film_dft("helpful", n=n, seed=seed), folder / "perovskite_film_dft_helpful.csv"),
        write_csv(perovskite_film_dft("misleading", n=n, seed=seed), folder / "perovskite_film_dft_misleading.csv"),
        write_csv(hse06_rows(), folder / "perovskites_hse06.csv"),
    ]


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m simulators.dft [folder]``: regenerate the prior files (default ``campaigns/data``)."""
    parser = argparse.ArgumentParser(prog="python -m simulators.dft", description=main.__doc__)
    parser.add_argument("folder", nargs="?", default=str(CAMPAIGN_DATA_DIR), help="where to write the CSV files")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for path in write_prior_files(args.folder):
        logger.info("wrote %s", path)


if __name__ == "__main__":
    main()
