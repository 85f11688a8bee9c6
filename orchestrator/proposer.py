"""The proposer: observations and a seed in, the next experiments out. Pure: no I/O, no hidden RNG.

First a scrambled Sobol design (point ``i`` of the design depends only on the seed and ``i``, so a
resumed campaign continues the same design); then one GP per outcome and Monte-Carlo acquisition
(qLogNoisyExpectedImprovement by default) of the campaign's objective, with running experiments as
pending points. Failed experiments train a success model whose prediction enters as a constraint,
so the search keeps away from where films do not form.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
import logging
import time
import warnings
from dataclasses import dataclass, field

import torch
from botorch.acquisition.logei import qLogExpectedImprovement, qLogNoisyExpectedImprovement
from botorch.acquisition.multi_objective.logei import qLogNoisyExpectedHypervolumeImprovement
from botorch.acquisition.multi_objective.objective import GenericMCMultiOutputObjective
from botorch.acquisition.objective import GenericMCObjective
from botorch.exceptions.warnings import OptimizationWarning
from botorch.optim import optimize_acqf, optimize_acqf_discrete
from botorch.optim.optimize_mixed import optimize_acqf_mixed_alternating
from botorch.sampling import SobolQMCNormalSampler

from orchestrator.campaign import OptimizerSettings
from orchestrator.errors import OrchestratorError
from orchestrator.objectives import ScalarObjective
from orchestrator.space import SearchSpace
from orchestrator.surrogates import Surrogate, fit_surrogate
from orchestrator.threads import single_threaded
from orchestrator.transfer import PriorModel

MAX_ENUMERATED_POINTS = 20_000
# Starting points in a constrained space come from a hit-and-run walk over the polytope. botorch's default walk
# (10 000 burn-in steps, every 32nd step kept) took 0.9 s of a 1.7 s proposal on the 4-component simplex;
# 200 and every 4th reach the same acquisition value at q = 1 and the same or a higher one at q = 4 (3 fitted
# cases each, photo_pce10 at 20 observations), in a quarter to half the time.
_POLYTOPE_START = {"n_burnin": 200, "n_thinning": 4}
# Raw samples are scored in chunks of this many. botorch otherwise uses ``batch_limit`` (the restarts, 6) for
# them too, and 43 chunks of 6 cost 0.12 s of a 0.7 s proposal on Hartmann-6 at 20 observations; the values
# are the same either way (every chunk shares the sampler's base samples).
INIT_BATCH_LIMIT = 512
# Relative tolerance on the log-acquisition at which a local search stops. scipy's L-BFGS-B default (2.2e-9)
# polishes values already final to 4 decimals; 1e-6 (SLSQP's default, used in constrained spaces) moves the
# proposal by at most 0.002 of a knob's range and takes 10-30 % less time (Hartmann-6, Branin, Suzuki at 12-30
# observations, 27 cases).
ACQ_FTOL = 1e-6
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Observations:
    """What the ledger knows, encoded.

    Attributes:
        X: ``n x d`` conditions of completed experiments.
        Y: ``n x m`` their measured outcomes.
        X_failed: ``f x d`` conditions of failed experiments.
        X_pending: ``p x d`` conditions proposed or running, not yet measured.
    """

    X: torch.Tensor
    Y: torch.Tensor
    X_failed: torch.Tensor
    X_pending: torch.Tensor

    @property
    def n_seen(self) -> int:
        return self.X.shape[0] + self.X_failed.shape[0] + self.X_pending.shape[0]


@dataclass(frozen=True)
class Proposal:
    """``X`` (``q x d``, encoded) and what produced it."""

    X: torch.Tensor
    generator: str
    info: dict = field(default_factory=dict)


class ProposerError(OrchestratorError):
    """Nothing left to propose (e.g. every point of a discrete space has been tried)."""


def propose(
    space: SearchSpace,
    obs: Observations,
    objective: ScalarObjective,
    *,
    q: int,
    seed: int,
    n_initial: int,
    settings: OptimizerSettings = OptimizerSettings(),
    surrogate: Surrogate | None = None,
) -> Proposal:
    """Proposes ``q`` experiments.

    Args:
        space: the search space.
        obs: completed, failed and pending experiments.
        objective: maps outcome samples (``... x m``) to scores.
        q: how many experiments to propose.
        seed: the campaign seed; each call mixes in ``obs.n_seen`` so iterations differ yet repeat exactly.
        n_initial: size of the Sobol design.
        settings: acquisition and optimizer settings.
        surrogate: models already fitted to ``obs`` (fitted here when absent).
    """
    if obs.n_seen < n_initial or obs.X.shape[0] < 2:
        return Proposal(sobol_points(space, seed, start=obs.n_seen, count=q), "sobol")
    step_seed = (seed * 1_000_003 + obs.n_seen) % (2**31)
    obs, objective = modelled_view(obs, objective)
    with single_threaded(), torch.random.fork_rng():
        torch.manual_seed(step_seed)
        if surrogate is None:
            surrogate = fit_surrogate(space, obs)
        t0 = time.perf_counter()
        try:
            acqf = _acquisition(surrogate, obs, objective, settings, step_seed)
            X = _optimize(space, obs, acqf, q, settings)
        except (RuntimeError, ValueError) as exc:  # numerical trouble (LinAlgError, NotPSDError …)
            # A campaign must not stop on a bad matrix: space-filling points are a safe, useful fallback.
            log.warning("acquisition failed numerically (%s); proposing design points instead", exc)
            X = space.initial_design(seed, start=obs.n_seen, count=q)
            return Proposal(X, "sobol:fallback", {"fallback": str(exc)[:200]})
    info = {"fit_s": surrogate.fit_s, "acq_s": time.perf_counter() - t0, "n_train": int(obs.X.shape[0])}
    if surrogate.transfer:
        info["transfer"] = list(surrogate.transfer.values())  # which prior method each outcome's model used
    return Proposal(X.detach(), "gp:qLogNEHVI" if objective.pareto else f"gp:{settings.acquisition}", info)


def modelled_view(obs: Observations, objective: ScalarObjective) -> tuple[Observations, ScalarObjective]:
    """Keeps only the outcomes an objective or outcome constraint uses (``n x m'``), re-indexing to match.

    Outcomes nothing mentions are still recorded in the ledger; fitting them would only cost time.
    """
    cols = list(objective.all_columns)
    reindexed = dataclasses.replace(
        objective,
        columns=tuple(cols.index(k) for k in objective.columns),
        bounds=tuple((cols.index(k), lo, hi) for k, lo, hi in objective.bounds),
    )
    return dataclasses.replace(obs, Y=obs.Y[:, cols]), reindexed


def fit_for_objective(
    space: SearchSpace, obs: Observations, objective: ScalarObjective, priors: Mapping[int, PriorModel] | None = None
) -> Surrogate:
    """Fits the surrogates ``propose`` needs for ``objective`` (see ``modelled_view``).

    Args:
        priors: fitted calculated data by outcome column of ``obs.Y``; used for the outcomes the objective models.
    """
    cols = list(objective.all_columns)
    modelled = {cols.index(k): p for k, p in (priors or {}).items() if k in cols}
    with single_threaded():
        return fit_surrogate(space, modelled_view(obs, objective)[0], modelled)


def sobol_points(space: SearchSpace, seed: int, start: int, count: int) -> torch.Tensor:
    """Points ``start .. start+count-1`` of the campaign's space-filling design (see ``initial_design``)."""
    return space.initial_design(seed, start, count)


def _acquisition(surrogate: Surrogate, obs: Observations, objective: ScalarObjective, settings, seed: int):
    m = obs.Y.shape[-1]
    constraints = []
    if surrogate.has_feasibility:
        # Feasible where the success model predicts more than 1/2; botorch wants c(Z) <= 0.
        constraints.append(lambda Z: 0.5 - Z[..., m])
    for k, lo, hi in objective.bounds:
        if lo is not None:
            constraints.append(lambda Z, k=k, lo=lo: lo - Z[..., k])
        if hi is not None:
            constraints.append(lambda Z, k=k, hi=hi: Z[..., k] - hi)
    sampler = SobolQMCNormalSampler(sample_shape=torch.Size([settings.mc_samples]), seed=seed)
    X_pending = obs.X_pending if obs.X_pending.shape[0] else None
    common = dict(sampler=sampler, constraints=constraints or None, X_pending=X_pending)
    model = surrogate.model
    baseline = torch.cat([obs.X, obs.X_failed]) if surrogate.has_feasibility else obs.X
    if objective.pareto:
        acqf = qLogNoisyExpectedHypervolumeImprovement(
            model,
            ref_point=objective.reference_point(obs.Y),
            X_baseline=baseline,
            objective=GenericMCMultiOutputObjective(lambda Z, X=None: objective.terms(Z[..., :m])),
            prune_baseline=True,
            **common,
        )
    elif settings.acquisition == "qLogEI":
        ok = objective.feasible(obs.Y)
        best = objective(obs.Y)[ok].max() if ok.any() else objective(obs.Y).min()
        mc_objective = GenericMCObjective(lambda Z, X=None: objective(Z[..., :m]))
        acqf = qLogExpectedImprovement(model, best_f=best, objective=mc_objective, **common)
    else:
        mc_objective = GenericMCObjective(lambda Z, X=None: objective(Z[..., :m]))
        acqf = qLogNoisyExpectedImprovement(model, X_baseline=baseline, objective=mc_objective, prune_baseline=True, **common)
    return acqf


def _optimize(space: SearchSpace, obs: Observations, acqf, q: int, settings: OptimizerSettings) -> torch.Tensor:
    with warnings.catch_warnings():
        # botorch restarts a failed local search itself; its warnings would only clutter a lab console.
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", OptimizationWarning)
        return _optimize_quietly(space, obs, acqf, q, settings)


def _optimize_quietly(space: SearchSpace, obs: Observations, acqf, q: int, settings: OptimizerSettings) -> torch.Tensor:
    bounds = space.bounds()
    ineq, eq = space.botorch_constraints()
    constraints = {"inequality_constraints": ineq or None, "equality_constraints": eq or None}
    n_points = space.n_combinations()
    if n_points is not None and n_points <= MAX_ENUMERATED_POINTS:
        choices = _untried(space.all_points(), torch.cat([obs.X, obs.X_failed, obs.X_pending]))
        if choices.shape[0] < q:
            raise ProposerError(f"only {choices.shape[0]} untried points remain in this discrete space; lower the budget")
        X, _ = optimize_acqf_discrete(acqf, q=q, choices=choices, unique=True)
        return X
    if space.int_dims or space.cat_dims or space.disc_dims:
        discrete = {i: space.discrete_values()[i] for i in space.int_dims + space.disc_dims}
        cats = {i: space.discrete_values()[i] for i in space.cat_dims}
        X, _ = optimize_acqf_mixed_alternating(
            acqf,
            bounds=bounds,
            discrete_dims=discrete or None,
            cat_dims=cats or None,
            q=q,
            raw_samples=settings.raw_samples,
            num_restarts=settings.num_restarts,
            # botorch's defaults (64 alternating rounds after a 100-step relaxed start) cost 1.5 s per proposal
            # here. On the mixed perovskite space (20-100 observations, 21 cases), one round (a discrete step:
            # the other categories; then 8 L-BFGS steps) after a 10-step relaxed start reached the acquisition
            # value of 2 rounds after a 25-step start (log-acquisition within 0.005 in every case, and at q = 3
            # within 0.02, as close as the two settings came to each other) with half the gradient evaluations.
            options={"maxiter_alternating": 1, "maxiter_init": 10},
            **constraints,
        )
        return X
    X, _ = optimize_acqf(
        acqf,
        bounds=bounds,
        q=q,
        num_restarts=settings.num_restarts,
        raw_samples=settings.raw_samples,
        options=acquisition_search_options(settings, constrained=bool(ineq or eq)),
        # A batch is built one point at a time, each with the ones before it pending (as the mixed optimizer
        # does): the joint search over q x d inputs from a few restarts found lower acquisition values.
        sequential=q > 1,
        **constraints,
    )
    return X


def acquisition_search_options(settings: OptimizerSettings, constrained: bool) -> dict:
    """``optimize_acqf`` options for a continuous space.

    Unconstrained, the restarts go to botorch's batched L-BFGS-B: each restart is its own problem with its own
    stopping test, all evaluated in one batch. botorch takes that path only when every option is one it
    knows, so the hit-and-run options (used only for constrained starts) stay out, and ``factr`` is set to
    ``None`` because it cannot be given beside ``ftol``. The fallback, one L-BFGS-B over all restarts joined,
    stops on the relative change of their summed value, so it ran on while any restart moved and sometimes
    stopped with a restart short of its optimum: on Hartmann-6 (seed 3, 23 proposals at 7-29 observations,
    the same fitted models) the batched search took a median 0.33 s instead of 0.59 s, reached the same
    acquisition value (within 0.01) in 16, a higher one in 5 (by up to 3.7 in log-acquisition) and a lower one
    in 2 (by up to 0.36).
    Constrained spaces use SLSQP, which has no batched form.
    """
    options = {"batch_limit": settings.num_restarts, "init_batch_limit": INIT_BATCH_LIMIT, "maxiter": 200,
               "ftol": ACQ_FTOL}
    if constrained:
        return options | _POLYTOPE_START
    return options | {"factr": None}


def _untried(points: torch.Tensor, tried: torch.Tensor) -> torch.Tensor:
    if tried.shape[0] == 0:
        return points
    same = (points.unsqueeze(1) - tried.unsqueeze(0)).abs().amax(dim=-1) < 1e-9
    return points[~same.any(dim=1)]
