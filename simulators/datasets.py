"""Simulators over real recorded experiments: the Olympus datasets in ``simulators/data/<name>/``.

Two ways to turn recorded rows into a simulator:

- :class:`DatasetEmulator` (all-continuous datasets): a Gaussian process fitted once to the rows; a run returns its
  posterior mean plus Gaussian noise with the fitted noise level, so the response is smooth between the rows and
  as noisy as the real lab was.
- :class:`DatasetLookup` (categorical datasets, or exact replays): a run returns the recorded value for exactly
  those conditions; conditions nobody recorded fail as an experiment would.

Nothing is read or fitted at import time; a dataset is read when asked for and an emulator fits when built.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import gpytorch
import numpy as np
import torch
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.models.transforms import Normalize, Standardize
from gpytorch.mlls import ExactMarginalLogLikelihood
from scipy.optimize import minimize
from scipy.stats import qmc

from orchestrator.errors import ExperimentFailed, SimulatorError
from simulators.base import check_conditions, non_negative_option, single_threaded, strict_options

__all__ = [
    "DATA_DIR",
    "Dataset",
    "DatasetEmulator",
    "DatasetLookup",
    "available_datasets",
    "best_point",
    "best_value",
    "dataset_simulator",
    "load_dataset",
]

logger = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent / "data"
# Exact GP cost grows as n^3: 600 rows fit in 1-3 s on one CPU thread; all 1040 of photo_pce10 take ~14 s for
# little gain (R^2 on all rows 0.91 vs 0.85).
MAX_FIT_ROWS = 600
# gpytorch switches to iterative (CG) solves above 800 rows, which is slower here and less reproducible.
_MAX_CHOLESKY_SIZE = 4000
# A simplex point may miss sum 1 by round-off from the optimizer's equality constraint, not by more.
_SIMPLEX_ATOL = 1e-4


@dataclass(frozen=True, eq=False)
class Dataset:
    """One recorded dataset.

    Attributes:
        name: folder name, e.g. ``"suzuki"``.
        parameters: plain parameter dicts: ``{"name", "type": "continuous", "low", "high"}`` or
            ``{"name", "type": "categorical", "choices"}``, in column order.
        outcome: the measured quantity's name.
        goal: ``"maximize"`` or ``"minimize"``.
        simplex: the continuous parameters are fractions that sum to 1.
        positive: the measured quantity cannot be negative.
        X: ``n x d`` float array if every parameter is continuous, else a list of ``n`` row tuples.
        y: ``n`` recorded values.
    """

    name: str
    parameters: list[dict[str, Any]]
    outcome: str
    goal: str
    simplex: bool
    positive: bool
    X: np.ndarray | list[tuple[Any, ...]]
    y: np.ndarray

    @property
    def categorical(self) -> bool:
        """True if any parameter is categorical."""
        return any(p["type"] == "categorical" for p in self.parameters)

    def __len__(self) -> int:
        return len(self.y)


def available_datasets() -> list[str]:
    """Names of the datasets shipped in ``simulators/data``, sorted."""
    return sorted(d.name for d in DATA_DIR.iterdir() if (d / "config.json").is_file())


def load_dataset(name_or_path: str | PathLike[str]) -> Dataset:
    """Read a dataset by shipped name or by the path of a folder holding ``config.json`` and ``data.csv``.

    Raises:
        SimulatorError: unknown name, or a missing or malformed file (the message names the file).
    """
    if isinstance(name_or_path, str) and (DATA_DIR / name_or_path / "config.json").is_file():
        folder = DATA_DIR / name_or_path
    elif Path(name_or_path).is_dir():
        folder = Path(name_or_path)
    else:
        raise SimulatorError(
            f"unknown dataset {str(name_or_path)!r}: give one of {available_datasets()} or an existing folder"
        )
    parameters, outcome, goal, simplex, positive = _read_config(folder / "config.json")
    X, y = _read_rows(folder / "data.csv", parameters)
    if not any(p["type"] == "categorical" for p in parameters):
        X = np.asarray(X, dtype=float).reshape(len(y), len(parameters))
        X.flags.writeable = False
    y.flags.writeable = False
    return Dataset(folder.name, parameters, outcome, goal, simplex, positive, X, y)


def _read_config(path: Path) -> tuple[list[dict[str, Any]], str, str, bool, bool]:
    try:
        config = json.loads(path.read_text())
        parameters: list[dict[str, Any]] = []
        for p in config["parameters"]:
            if p["type"] == "continuous":
                low, high = float(p["low"]), float(p["high"])
                if not low < high:
                    raise ValueError(f"parameter {p['name']!r} needs low < high")
                parameters.append({"name": str(p["name"]), "type": "continuous", "low": low, "high": high})
            elif p["type"] == "categorical":
                choices = [str(c) for c in p["options"]]
                parameters.append({"name": str(p["name"]), "type": "categorical", "choices": choices})
            else:
                raise ValueError(f"parameter {p['name']!r} has unknown type {p['type']!r}")
        outcome = str(config["measurements"][0]["name"])
        goal = config["default_goal"]
        if goal not in ("maximize", "minimize"):
            raise ValueError(f"default_goal must be 'maximize' or 'minimize', got {goal!r}")
        constraints = config.get("constraints", {})
        simplex = constraints.get("parameters") == "simplex"
        positive = constraints.get("measurements") == "positive"
    except FileNotFoundError:
        raise SimulatorError(f"{path}: file not found") from None
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise SimulatorError(f"{path}: not a valid dataset config: {exc!r}") from exc
    if not parameters:
        raise SimulatorError(f"{path}: no parameters")
    return parameters, outcome, goal, simplex, positive


def _read_rows(path: Path, parameters: list[dict[str, Any]]) -> tuple[list[tuple[Any, ...]], np.ndarray]:
    rows: list[tuple[Any, ...]] = []
    values: list[float] = []
    try:
        with path.open(newline="") as f:
            for line_no, cells in enumerate(csv.reader(f), start=1):
                if not cells:
                    continue
                if len(cells) != len(parameters) + 1:
                    raise SimulatorError(
                        f"{path}:{line_no}: expected {len(parameters) + 1} columns (parameters, then the "
                        f"measurement), got {len(cells)}"
                    )
                row: list[Any] = []
                for p, cell in zip(parameters, cells, strict=False):
                    if p["type"] == "categorical":
                        if cell not in p["choices"]:
                            raise SimulatorError(f"{path}:{line_no}: {p['name']} = {cell!r} is not a listed option")
                        row.append(cell)
                    else:
                        row.append(_number(path, line_no, p["name"], cell))
                rows.append(tuple(row))
                values.append(_number(path, line_no, "measurement", cells[-1]))
    except FileNotFoundError:
        raise SimulatorError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SimulatorError(f"{path}: cannot read: {exc}") from exc
    if not rows:
        raise SimulatorError(f"{path}: no data rows")
    return rows, np.asarray(values, dtype=float)


def _number(path: Path, line_no: int, what: str, cell: str) -> float:
    try:
        value = float(cell)
    except ValueError:
        raise SimulatorError(f"{path}:{line_no}: {what} = {cell!r} is not a number") from None
    if not np.isfinite(value):
        raise SimulatorError(f"{path}:{line_no}: {what} = {cell!r} is not finite")
    return value


def _as_dataset(dataset: Dataset | str | PathLike[str]) -> Dataset:
    return dataset if isinstance(dataset, Dataset) else load_dataset(dataset)


class DatasetEmulator:
    """GP emulator of an all-continuous dataset (BoTorch SingleTaskGP, Normalize inputs, Standardize outcome).

    Args:
        dataset: a :class:`Dataset`, a shipped name, or a folder path.
        noise_scale: multiplies the fitted noise std; 0 returns the posterior mean.
        seed: seeds the row subsample and the hyperparameter fit (global torch RNG state is left untouched).
        max_rows: fit on a deterministic random subsample of this many rows when the dataset is larger.

    Attributes:
        noise_std: fitted observation-noise std, in the outcome's units.
        fit_time_s: wall time the fit took.
    """

    def __init__(
        self,
        dataset: Dataset | str | PathLike[str],
        noise_scale: float = 1.0,
        seed: int = 0,
        max_rows: int = MAX_FIT_ROWS,
    ):
        self.dataset = _as_dataset(dataset)
        if self.dataset.categorical:
            raise SimulatorError(f"{self.dataset.name}: categorical parameters cannot be emulated; use mode='lookup'")
        self.name = self.dataset.name
        self.parameters = tuple(self.dataset.parameters)
        self.outcomes = (self.dataset.outcome,)
        self.noise_scale = non_negative_option(self.name, "noise_scale", noise_scale)
        X, y = np.asarray(self.dataset.X), self.dataset.y
        if len(y) > max_rows:
            keep = np.sort(np.random.default_rng(seed).choice(len(y), size=max_rows, replace=False))
            X, y = X[keep], y[keep]
        bounds = torch.tensor(
            [[p["low"] for p in self.parameters], [p["high"] for p in self.parameters]], dtype=torch.float64
        )
        started = time.perf_counter()
        with single_threaded(), torch.random.fork_rng(devices=[]), gpytorch.settings.max_cholesky_size(
            _MAX_CHOLESKY_SIZE
        ):
            torch.manual_seed(seed)
            model = SingleTaskGP(
                torch.tensor(X, dtype=torch.float64),  # a copy: dataset arrays are read-only
                torch.tensor(y, dtype=torch.float64).unsqueeze(-1),
                input_transform=Normalize(d=X.shape[1], bounds=bounds),
                outcome_transform=Standardize(m=1),
            )
            fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
        model.eval()
        self._model = model
        self.fit_time_s = time.perf_counter() - started
        # The likelihood's noise lives in standardized units; the outcome transform's std converts it back.
        self.noise_std = float(model.likelihood.noise.detach().sqrt().item() * model.outcome_transform.stdvs.item())
        logger.debug("%s: fitted GP on %d rows in %.2f s", self.name, len(y), self.fit_time_s)

    def _mean_tensor(self, X: torch.Tensor) -> torch.Tensor:
        # One call is tiny; single_threaded() would cost more than it saves here, so only best_point uses it.
        with gpytorch.settings.max_cholesky_size(_MAX_CHOLESKY_SIZE):
            return self._model.posterior(X).mean.squeeze(-1)

    def predict_mean(self, X: np.ndarray) -> np.ndarray:
        """Posterior mean at ``n x d`` points (no bounds check), clipped at 0 for positive outcomes; shape ``n``."""
        with torch.no_grad():
            mean = self._mean_tensor(torch.tensor(np.atleast_2d(X), dtype=torch.float64)).numpy()
        return np.maximum(mean, 0.0) if self.dataset.positive else mean

    def _point(self, conditions: Mapping[str, object]) -> np.ndarray:
        checked = check_conditions(self.name, conditions, self.parameters)
        x = np.array([checked[p["name"]] for p in self.parameters], dtype=float)
        if self.dataset.simplex and abs(x.sum() - 1.0) > _SIMPLEX_ATOL:
            names = ", ".join(p["name"] for p in self.parameters)
            raise SimulatorError(f"{self.name}: parameters {names} are fractions that must sum to 1, got {x.sum():g}")
        return x

    def truth(self, conditions: Mapping[str, object]) -> dict[str, float]:
        """Posterior mean at ``conditions`` (the emulator never fails)."""
        return {self.dataset.outcome: float(self.predict_mean(self._point(conditions)[None])[0])}

    def __call__(self, conditions: Mapping[str, object], rng: np.random.Generator) -> dict[str, float]:
        """Posterior mean plus ``noise_scale * noise_std`` Gaussian noise; see :class:`simulators.base.Simulator`."""
        mean = self.truth(conditions)[self.dataset.outcome]
        value = mean + self.noise_scale * self.noise_std * float(rng.standard_normal())
        return {self.dataset.outcome: max(value, 0.0) if self.dataset.positive else value}


class DatasetLookup:
    """Replay of recorded rows: a run returns the recorded value for exactly these conditions.

    Repeated rows are averaged. Continuous values match when equal to 10 significant digits.

    Args:
        dataset: a :class:`Dataset`, a shipped name, or a folder path.
        noise_scale: adds Gaussian noise of ``noise_scale`` x 1 % of the recorded range; 0 replays exactly.
    """

    def __init__(self, dataset: Dataset | str | PathLike[str], noise_scale: float = 0.0):
        self.dataset = _as_dataset(dataset)
        self.name = self.dataset.name
        self.parameters = tuple(self.dataset.parameters)
        self.outcomes = (self.dataset.outcome,)
        self.noise_scale = non_negative_option(self.name, "noise_scale", noise_scale)
        self.noise_std = 0.01 * float(np.ptp(self.dataset.y))
        sums: dict[tuple[Any, ...], list[float]] = {}
        for row, value in zip(self.dataset.X, self.dataset.y, strict=True):
            entry = sums.setdefault(self._key(row), [0.0, 0])
            entry[0] += float(value)
            entry[1] += 1
        self.table: dict[tuple[Any, ...], float] = {key: total / count for key, (total, count) in sums.items()}

    @staticmethod
    def _key(values: Sequence[Any]) -> tuple[Any, ...]:
        return tuple(v if isinstance(v, str) else float(f"{float(v):.10g}") for v in values)

    def _lookup(self, conditions: Mapping[str, object]) -> tuple[float | None, dict[str, float | str]]:
        checked = check_conditions(self.name, conditions, self.parameters)
        return self.table.get(self._key([checked[p["name"]] for p in self.parameters])), checked

    def truth(self, conditions: Mapping[str, object]) -> dict[str, float] | None:
        """The recorded value (mean of repeats), or None if nobody recorded these conditions."""
        value, _ = self._lookup(conditions)
        return None if value is None else {self.dataset.outcome: value}

    def __call__(self, conditions: Mapping[str, object], rng: np.random.Generator) -> dict[str, float]:
        """Replay one recorded run; see :class:`simulators.base.Simulator`."""
        value, checked = self._lookup(conditions)
        if value is None:
            described = ", ".join(f"{k}={v!r}" for k, v in checked.items())
            raise ExperimentFailed(f"no recorded experiment for {described} in dataset {self.name!r}")
        return {self.dataset.outcome: value + self.noise_scale * self.noise_std * float(rng.standard_normal())}


@strict_options
def dataset_simulator(
    dataset: str | PathLike[str], mode: str = "auto", noise_scale: float | None = None, seed: int = 0
) -> DatasetEmulator | DatasetLookup:
    """Build a simulator over a recorded dataset (the campaign-file factory for ``"dataset"``).

    Args:
        dataset: shipped dataset name (see :func:`available_datasets`) or a folder path.
        mode: ``"emulator"``, ``"lookup"``, or ``"auto"``: lookup for categorical datasets, emulator otherwise.
        noise_scale: noise multiplier; None means 1 for the emulator and 0 (exact replay) for the lookup.
        seed: seeds the emulator's fit.
    """
    data = load_dataset(dataset)
    if mode not in ("auto", "emulator", "lookup"):
        raise SimulatorError(f"dataset {data.name!r}: mode must be 'auto', 'emulator' or 'lookup', got {mode!r}")
    if mode == "lookup" or (mode == "auto" and data.categorical):
        return DatasetLookup(data, noise_scale=0.0 if noise_scale is None else noise_scale)
    return DatasetEmulator(data, noise_scale=1.0 if noise_scale is None else noise_scale, seed=seed)


def best_point(
    sim: DatasetEmulator | DatasetLookup, seed: int = 0, n_sobol: int = 4096
) -> tuple[float, dict[str, float | str]]:
    """The best noise-free response in the dataset's goal direction, and where it is.

    For a :class:`DatasetLookup`: the best recorded value (repeats averaged). For a :class:`DatasetEmulator`: the
    best posterior mean over the recorded rows and ``n_sobol`` scrambled-Sobol points (mapped onto the simplex
    for simplex datasets), after polishing the five best with scipy (L-BFGS-B, or SLSQP on a simplex). Positive
    outcomes are clipped at 0 as the emulator clips them, so where the GP extrapolates below zero the optimum is 0
    (photo_pce10: at mat_3 > 0.9, beyond every recorded row).
    """
    if isinstance(sim, DatasetLookup):
        pick = max if sim.dataset.goal == "maximize" else min
        key = pick(sim.table, key=sim.table.__getitem__)
        return sim.table[key], {p["name"]: v for p, v in zip(sim.parameters, key, strict=True)}
    if not isinstance(sim, DatasetEmulator):
        raise SimulatorError(f"best_point needs a DatasetEmulator or DatasetLookup, got {type(sim).__name__}")
    sign = -1.0 if sim.dataset.goal == "maximize" else 1.0  # scipy minimizes
    low, high = np.array([[p["low"], p["high"]] for p in sim.parameters]).T
    u = qmc.Sobol(d=len(low), scramble=True, rng=np.random.default_rng(seed)).random(n_sobol)
    if sim.dataset.simplex:
        u = -np.log(np.clip(u, 1e-12, 1.0))  # normalized exponentials are uniform on the simplex
        u /= u.sum(axis=1, keepdims=True)
    candidates = np.vstack([np.asarray(sim.dataset.X), np.clip(low + u * (high - low), low, high)])
    scores = sign * sim.predict_mean(candidates)

    def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
        xt = torch.as_tensor(x, dtype=torch.float64).unsqueeze(0).requires_grad_(True)
        value = sign * sim._mean_tensor(xt).sum()
        value.backward()
        return float(value.detach()), xt.grad.squeeze(0).numpy()

    if sim.dataset.simplex:
        options: dict[str, Any] = {"method": "SLSQP", "constraints": [{"type": "eq", "fun": lambda x: x.sum() - 1}]}
    else:
        options = {"method": "L-BFGS-B"}
    with single_threaded():
        for start in candidates[np.argsort(scores)[:5]]:
            res = minimize(objective, start, jac=True, bounds=list(zip(low, high, strict=True)), **options)
            x = np.clip(res.x, low, high)
            if sim.dataset.simplex and abs(x.sum() - 1.0) > _SIMPLEX_ATOL:
                continue
            candidates = np.vstack([candidates, x])
            scores = np.append(scores, sign * sim.predict_mean(x[None])[0])
    best = int(np.argmin(scores))
    conditions = {p["name"]: float(v) for p, v in zip(sim.parameters, candidates[best], strict=True)}
    return float(sign * scores[best]), conditions


def best_value(sim: DatasetEmulator | DatasetLookup, seed: int = 0) -> float:
    """The achievable optimum of the noise-free response in the goal direction; see :func:`best_point`."""
    return best_point(sim, seed=seed)[0]
