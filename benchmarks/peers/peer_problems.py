"""The benchmark problems of ``benchmarks/peers.py``: search space, goal, measurement, noise-free truth, references.

Every problem is described once, in the campaign-file parameter format (``{"name", "type": "continuous", "low",
"high"}`` or ``{"name", "type": "categorical", "choices"}``); each tool adapter translates that description into
its own API. ``measure`` is what a tool is told (noisy, may raise ``ExperimentFailed``); ``truth`` is what the
benchmark scores (noise-free, ``None`` where the experiment cannot succeed). Scores, optimum and worst are in
the problem's *score* direction: the outcome itself for maximize/minimize, ``|outcome - target|`` (minimized)
for a target problem.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from orchestrator.errors import ExperimentFailed

PROBLEMS = ("hartmann6", "branin", "perovskite", "suzuki", "photo_pce10", "perovskites")
SIMPLEX_ATOL = 1e-4  # the dataset emulator's own tolerance on sum(fractions) == 1


@dataclass(frozen=True)
class Problem:
    """One benchmark problem.

    Attributes:
        name: CLI name.
        parameters: campaign-format parameter dicts, in column order.
        outcome: name of the measured quantity (what the tools model).
        goal: ``"maximize"``, ``"minimize"`` or ``"target"`` (bring ``outcome`` to ``target``).
        optimum: best achievable noise-free score.
        worst: bad end of the score scale (see ``worst_is``).
        worst_is: how ``worst`` was chosen, for the report.
        measure: ``(conditions, rng) -> outcome value``; raises ``ExperimentFailed`` for a failed experiment.
        truth: ``conditions -> noise-free outcome value`` or ``None`` where the experiment would fail.
        target: the target value of a ``"target"`` problem.
        simplex: the continuous parameters are fractions that must sum to 1.
        budget: default number of experiments.
        noise: a line describing the measurement noise, for the report.
    """

    name: str
    parameters: list[dict[str, Any]]
    outcome: str
    goal: str
    optimum: float
    worst: float
    worst_is: str
    measure: Callable[[Mapping[str, Any], np.random.Generator], float] = field(repr=False)
    truth: Callable[[Mapping[str, Any]], float | None] = field(repr=False)
    target: float | None = None
    simplex: bool = False
    budget: int = 30
    noise: str = ""

    @property
    def score_goal(self) -> str:
        """Direction of the score: a target problem minimizes ``|outcome - target|``."""
        return "minimize" if self.goal == "target" else self.goal

    def score(self, value: float | None) -> float | None:
        """Noise-free outcome value → score (``None`` stays ``None``)."""
        if value is None:
            return None
        return abs(value - self.target) if self.goal == "target" else value

    def info(self) -> dict[str, Any]:
        """JSON-friendly summary (no callables)."""
        keys = ("name", "parameters", "outcome", "goal", "target", "optimum", "worst", "worst_is", "simplex", "budget",
                "noise")
        return {k: getattr(self, k) for k in keys} | {"score_goal": self.score_goal}


def _analytic(name: str) -> Problem:
    from botorch.test_functions import Branin, Hartmann

    if name == "hartmann6":
        fn, sigma, params = Hartmann(dim=6), 0.05, [{"name": f"x{i}", "type": "continuous", "low": 0.0, "high": 1.0}
                                                     for i in range(6)]
        worst, worst_is = 0.0, "0 (H < 0 everywhere, -> 0 far from the four bumps)"
    else:
        fn, sigma = Branin(), 0.1
        params = [{"name": "x1", "type": "continuous", "low": -5.0, "high": 10.0},
                  {"name": "x2", "type": "continuous", "low": 0.0, "high": 15.0}]
        g = torch.stack(torch.meshgrid(torch.linspace(-5, 10, 301, dtype=torch.double),
                                       torch.linspace(0, 15, 301, dtype=torch.double), indexing="ij"), -1)
        worst, worst_is = float(fn(g.reshape(-1, 2)).max()), "max over a 301x301 grid of the domain"
    names = [p["name"] for p in params]

    def truth(c: Mapping[str, Any]) -> float:
        x = torch.tensor([[float(c[n]) for n in names]], dtype=torch.double)
        return float(fn.evaluate_true(x)[0])

    def measure(c: Mapping[str, Any], rng: np.random.Generator) -> float:
        return truth(c) + sigma * float(rng.standard_normal())

    return Problem(name, params, "y", "minimize", float(fn.optimal_value), worst, worst_is, measure, truth,
                   noise=f"Gaussian, sd {sigma}")


def _perovskite() -> Problem:
    from simulators.perovskite_film import PARAMETERS, best_pl_intensity, perovskite_film

    sim = perovskite_film(noise_scale=1.0)

    def truth(c: Mapping[str, Any]) -> float | None:
        t = sim.truth(c)
        return None if t is None else t["pl_intensity"]

    return Problem("perovskite", [dict(p) for p in PARAMETERS], "pl_intensity", "maximize", best_pl_intensity()[0],
                   0.0, "0 (PL >= 0; failed films give none)", lambda c, rng: sim(c, rng)["pl_intensity"], truth,
                   noise="log-normal, 5 % (noise_scale 1); ~17 % of random conditions fail")


def _emulated(name: str) -> Problem:
    from simulators.datasets import best_value, dataset_simulator

    sim = dataset_simulator(name, mode="emulator", seed=0)  # fitted once: every seed and tool sees one landscape
    d = sim.dataset
    return Problem(name, [dict(p) for p in d.parameters], d.outcome, d.goal, best_value(sim),
                   float(d.y.min() if d.goal == "maximize" else d.y.max()), "worst recorded row",
                   lambda c, rng: sim(c, rng)[d.outcome], lambda c: sim.truth(c)[d.outcome], simplex=d.simplex,
                   noise=f"Gaussian, sd {sim.noise_std:.3g} (the emulator's fitted noise)")


def _lookup(name: str, target: float) -> Problem:
    from simulators.datasets import dataset_simulator

    sim = dataset_simulator(name, mode="lookup")  # exact replay: noise-free, unrecorded conditions fail
    d = sim.dataset
    errors = [abs(v - target) for v in sim.table.values()]

    def truth(c: Mapping[str, Any]) -> float | None:
        t = sim.truth(c)
        return None if t is None else t[d.outcome]

    return Problem(name, [dict(p) for p in d.parameters], d.outcome, "target", min(errors), max(errors),
                   f"largest |{d.outcome} - {target}| of the {len(errors)} recorded rows",
                   lambda c, rng: sim(c, rng)[d.outcome], truth, target=target, noise="none (recorded DFT values)")


@functools.cache
def get_problem(name: str) -> Problem:
    """Builds a problem once per process (an emulator fit and an optimum search take a few seconds)."""
    if name in ("hartmann6", "branin"):
        return _analytic(name)
    if name == "perovskite":
        return _perovskite()
    if name in ("suzuki", "photo_pce10"):
        return _emulated(name)
    if name == "perovskites":
        # The project's own campaign (campaigns/perovskite_bandgap_lookup.yaml) targets 1.4 eV, the single-junction
        # optimum; the dataset's default goal (the smallest band gap) would be a physically pointless search.
        return _lookup(name, target=1.4)
    raise ValueError(f"unknown problem {name!r}; choose from {PROBLEMS}")


def clean_conditions(problem: Problem, conditions: Mapping[str, Any]) -> dict[str, Any]:
    """Plain Python values, continuous ones clipped into their bounds (undoes float round-off of a tool's
    unit-cube transforms; a genuinely out-of-range proposal would be moved, so the clip is logged by the caller)."""
    out: dict[str, Any] = {}
    for p in problem.parameters:
        v = conditions[p["name"]]
        out[p["name"]] = str(v) if p["type"] == "categorical" else min(max(float(v), p["low"]), p["high"])
    return out


def evaluate(problem: Problem, conditions: Mapping[str, Any], rng: np.random.Generator, normalize_simplex: bool
             ) -> tuple[float | None, float | None, str]:
    """Runs one experiment: (measured value or None, noise-free score or None, failure reason or "").

    Args:
        problem: the problem.
        conditions: the tool's proposal (already cleaned).
        rng: the experiment's own generator (same seed for every tool, so the same noise draw).
        normalize_simplex: divide the fractions by their sum first (a tool without simplex support).
    """
    if problem.simplex:
        names = [p["name"] for p in problem.parameters if p["type"] == "continuous"]
        total = sum(conditions[n] for n in names)
        if normalize_simplex and total > 0:
            conditions = dict(conditions) | {n: conditions[n] / total for n in names}
        elif abs(total - 1.0) > SIMPLEX_ATOL:
            return None, None, f"off the simplex: fractions sum to {total:.6g}"
    try:
        measured = problem.measure(conditions, rng)
    except ExperimentFailed as exc:
        return None, None, exc.reason
    return measured, problem.score(problem.truth(conditions)), ""
