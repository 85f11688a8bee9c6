"""The proposer: observations and a seed in, the next experiments out. Pure: no I/O, no hidden RNG.

First a scrambled Sobol design (point ``i`` of the design depends only on the seed and ``i``, so a
resumed campaign continues the same design); then one GP per outcome and Monte-Carlo acquisition
(qLogNoisyExpectedImprovement by default) of the campaign's objective, with running experiments as
pending points. Failed experiments train a success model whose prediction enters as a constraint,
so the search keeps away from where films do not form.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass, field

import torch
from botorch.acquisition.logei import qLogExpectedImprovement, qLogNoisyExpectedImprovement
from botorch.acquisition.objective import GenericMCObjective
from botorch.exceptions.warnings import OptimizationWarning
from botorch.optim import optimize_acqf, optimize_acqf_discrete
from botorch.optim.optimize_mixed import optimize_acqf_mixed_alternating
from botorch.sampling import SobolQMCNormalSampler
from torch.quasirandom import SobolEngine

from orchestrator.campaign import OptimizerSettings
from orchestrator.errors import OrchestratorError
from orchestrator.objectives import ScalarObjective
from orchestrator.space import DTYPE, SearchSpace
from orchestrator.surrogates import Surrogate, fit_surrogate

MAX_ENUMERATED_POINTS = 20_000


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
    with torch.random.fork_rng():
        torch.manual_seed(step_seed)
        if surrogate is None:
            surrogate = fit_surrogate(space, obs)
        t0 = time.perf_counter()
        acqf = _acquisition(surrogate, obs, objective, settings, step_seed)
        X = _optimize(space, obs, acqf, q, settings)
    info = {"fit_s": surrogate.fit_s, "acq_s": time.perf_counter() - t0, "n_train": int(obs.X.shape[0])}
    return Proposal(X.detach(), f"gp:{settings.acquisition}", info)


def modelled_view(obs: Observations, objective: ScalarObjective) -> tuple[Observations, ScalarObjective]:
    """Keeps only the outcomes some objective uses (``n x m'``), and re-indexes the objective to match.

    Outcomes no objective mentions are still recorded in the ledger; fitting them would only cost time.
    """
    cols = sorted(set(objective.columns))
    reindexed = dataclasses.replace(objective, columns=tuple(cols.index(k) for k in objective.columns))
    return dataclasses.replace(obs, Y=obs.Y[:, cols]), reindexed


def fit_for_objective(space: SearchSpace, obs: Observations, objective: ScalarObjective) -> Surrogate:
    """Fits the surrogates ``propose`` needs for ``objective`` (see ``modelled_view``)."""
    return fit_surrogate(space, modelled_view(obs, objective)[0])


def sobol_points(space: SearchSpace, seed: int, start: int, count: int) -> torch.Tensor:
    """Points ``start .. start+count-1`` of the campaign's scrambled Sobol design, ``count x d``."""
    engine = SobolEngine(space.dim, scramble=True, seed=seed)
    U = engine.draw(start + count, dtype=DTYPE)[start:]
    return space.from_unit_cube(U)


def _acquisition(surrogate: Surrogate, obs: Observations, objective: ScalarObjective, settings, seed: int):
    m = obs.Y.shape[-1]
    mc_objective = GenericMCObjective(lambda Z, X=None: objective(Z[..., :m]))
    constraints = None
    if surrogate.has_feasibility:
        # Feasible where the success model predicts more than 1/2; botorch wants c(Z) <= 0.
        constraints = [lambda Z: 0.5 - Z[..., m]]
    sampler = SobolQMCNormalSampler(sample_shape=torch.Size([settings.mc_samples]), seed=seed)
    X_pending = obs.X_pending if obs.X_pending.shape[0] else None
    if settings.acquisition == "qLogEI":
        best = objective(obs.Y).max()
        return qLogExpectedImprovement(
            surrogate.model, best_f=best, sampler=sampler, objective=mc_objective, constraints=constraints, X_pending=X_pending
        )
    baseline = torch.cat([obs.X, obs.X_failed]) if surrogate.has_feasibility else obs.X
    return qLogNoisyExpectedImprovement(
        surrogate.model,
        X_baseline=baseline,
        sampler=sampler,
        objective=mc_objective,
        constraints=constraints,
        X_pending=X_pending,
        prune_baseline=True,
    )


def _optimize(space: SearchSpace, obs: Observations, acqf, q: int, settings: OptimizerSettings) -> torch.Tensor:
    with warnings.catch_warnings():
        # botorch restarts a failed local search itself; its warnings would only clutter a lab console.
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", OptimizationWarning)
        return _optimize_quietly(space, obs, acqf, q, settings)


def _optimize_quietly(space: SearchSpace, obs: Observations, acqf, q: int, settings: OptimizerSettings) -> torch.Tensor:
    bounds = space.bounds()
    n_points = space.n_combinations()
    if n_points is not None and n_points <= MAX_ENUMERATED_POINTS:
        choices = _untried(space.all_points(), torch.cat([obs.X, obs.X_failed, obs.X_pending]))
        if choices.shape[0] < q:
            raise ProposerError(f"only {choices.shape[0]} untried points remain in this discrete space; lower the budget")
        X, _ = optimize_acqf_discrete(acqf, q=q, choices=choices, unique=True)
        return X
    if space.int_dims or space.cat_dims:
        discrete = {i: space.discrete_values()[i] for i in space.int_dims}
        cats = {i: space.discrete_values()[i] for i in space.cat_dims}
        X, _ = optimize_acqf_mixed_alternating(
            acqf,
            bounds=bounds,
            discrete_dims=discrete or None,
            cat_dims=cats or None,
            q=q,
            raw_samples=settings.raw_samples,
            num_restarts=settings.num_restarts,
            # 16 alternating rounds instead of botorch's 64: the acquisition value stops improving after a
            # handful, and each round costs hundreds of posterior evaluations.
            options={"maxiter_alternating": 16},
        )
        return X
    X, _ = optimize_acqf(
        acqf,
        bounds=bounds,
        q=q,
        num_restarts=settings.num_restarts,
        raw_samples=settings.raw_samples,
        options={"batch_limit": settings.num_restarts, "maxiter": 200},
    )
    return X


def _untried(points: torch.Tensor, tried: torch.Tensor) -> torch.Tensor:
    if tried.shape[0] == 0:
        return points
    same = (points.unsqueeze(1) - tried.unsqueeze(0)).abs().amax(dim=-1) < 1e-9
    return points[~same.any(dim=1)]
