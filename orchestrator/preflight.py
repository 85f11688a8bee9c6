"""Pre-flight: run a campaign exactly as configured, many times, against its simulator, before any hardware.

Each run is the real loop (same space, objectives, batch size, asynchronous mode, budget and proposer) on
an in-memory ledger, with the campaign seed shifted by the run number, so runs differ in their design and
noise. Campaigns on instruments run through their byte-level simulators (``--simulate``).

Every completed experiment is scored with the campaign's objective; scales the file leaves open are set
from all runs' outcomes together, so scores are comparable across runs. Reported:

- the best score at the budget: median, a 90 % bootstrap confidence interval of the median, and the 10th
  and 90th percentiles across runs;
- experiments to target: how many experiments (failed ones included) each run needed before its best
  score reached the target. The target is the user's (``--target``, in score units), or else 95 % of the
  way from the worst to the best score any run reached. Runs that never reach it count as "> budget";
  the median's confidence interval is bootstrapped the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from orchestrator.campaign import Campaign
from orchestrator.ledger import Ledger
from orchestrator.loop import CampaignRunner, run_loop
from orchestrator.objectives import ScalarObjective
from orchestrator.space import DTYPE

_BOOTSTRAP = 2000


@dataclass(frozen=True)
class PreflightResult:
    """Per-run curves and the summary figures (see the module docstring).

    Attributes:
        curves: one list per run: the best score after each experiment (NaN before the first success).
        target: the score that counts as reaching the target.
        target_given: whether the user set it.
        to_target: per run, experiments until the target, or None where the run never reached it.
        failed: per run, how many experiments failed.
    """

    curves: list[list[float]]
    target: float
    target_given: bool
    to_target: list[int | None]
    failed: list[int]

    @property
    def best_at_budget(self) -> list[float]:
        return [c[-1] for c in self.curves]

    def best_summary(self, seed: int = 0) -> dict[str, float]:
        values = np.array([v for v in self.best_at_budget if math.isfinite(v)])
        if values.size == 0:
            return {"median": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p10": math.nan, "p90": math.nan}
        lo, hi = bootstrap_median_ci(values, seed)
        return {
            "median": float(np.median(values)),
            "ci_low": lo,
            "ci_high": hi,
            "p10": float(np.percentile(values, 10)),
            "p90": float(np.percentile(values, 90)),
        }

    def target_summary(self, budget: int, seed: int = 0) -> dict[str, float]:
        # A run that never reached the target counts as budget + 1 for the median, shown as "> budget".
        steps = np.array([t if t is not None else budget + 1 for t in self.to_target], dtype=float)
        lo, hi = bootstrap_median_ci(steps, seed)
        return {
            "median": float(np.median(steps)),
            "ci_low": lo,
            "ci_high": hi,
            "q1": float(np.percentile(steps, 25)),
            "q3": float(np.percentile(steps, 75)),
            "reached": float(sum(t is not None for t in self.to_target)),
        }


def bootstrap_median_ci(values: np.ndarray, seed: int = 0, level: float = 0.90) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the median."""
    if values.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(values, size=(_BOOTSTRAP, values.size), replace=True), axis=1)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(medians, tail)), float(np.percentile(medians, 100 - tail))


def run_preflight(
    campaign: Campaign,
    runs: int,
    backend: Callable[[Campaign], object],
    *,
    target: float | None = None,
    on_run: Callable[[int, int], None] | None = None,
) -> PreflightResult:
    """Runs the campaign ``runs`` times and summarizes (see the module docstring).

    Args:
        campaign: the campaign as configured.
        runs: how many runs (each with seed ``campaign.seed + i``).
        backend: makes the backend of one run (a simulator function, or an opened instrument bench).
        target: the score that counts as reaching the target (default: 95 % of the best reached).
        on_run: called after each run with its index and how many of its experiments failed.
    """
    outcome_names = [o.name for o in campaign.outcomes]
    histories: list[list[tuple[str, list[float] | None]]] = []
    for i in range(runs):
        variant = campaign.model_copy(update={"seed": campaign.seed + i})
        with Ledger(":memory:") as ledger:
            ledger.bind(variant)
            runner = CampaignRunner(variant, ledger, backend(variant))
            run_loop(runner)
            histories.append(
                [(e.state, [e.outcomes[n] for n in outcome_names] if e.outcomes else None) for e in ledger.experiments()]
            )
        if on_run is not None:
            on_run(i, sum(state == "failed" for state, _ in histories[-1]))
    all_Y = [y for h in histories for state, y in h if y is not None]
    Y = torch.tensor(all_Y, dtype=DTYPE).reshape(len(all_Y), len(outcome_names))
    objective = ScalarObjective.from_campaign(campaign, Y if len(all_Y) >= 2 else None)
    curves = [_curve(h, objective) for h in histories]
    finite = [v for c in curves for v in c if math.isfinite(v)]
    given = target is not None
    if target is None:
        target = (min(finite) + 0.95 * (max(finite) - min(finite))) if finite else math.nan
    to_target = [next((k + 1 for k, v in enumerate(c) if math.isfinite(v) and v >= target), None) for c in curves]
    failed = [sum(state == "failed" for state, _ in h) for h in histories]
    return PreflightResult(curves, float(target), given, to_target, failed)


def _curve(history: Sequence[tuple[str, list[float] | None]], objective: ScalarObjective) -> list[float]:
    best, out = -math.inf, []
    for _state, y in history:
        if y is not None:
            Y = torch.tensor([y], dtype=DTYPE)
            if bool(objective.feasible(Y)[0]):
                best = max(best, float(objective(Y)[0]))
        out.append(best if best > -math.inf else math.nan)
    return out


def default_backend(results_dir: Path) -> Callable[[Campaign], object]:
    """The backend of one pre-flight run: the simulator, or the simulated bench for instrument campaigns."""
    from contextlib import ExitStack

    from orchestrator.backends import open_backend

    stack = ExitStack()

    def make(campaign: Campaign) -> object:
        stack.close()
        return stack.enter_context(open_backend(campaign, results_dir, simulate=True))

    make.close = stack.close  # type: ignore[attr-defined]
    return make
