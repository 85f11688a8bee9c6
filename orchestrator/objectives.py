"""The campaign's objectives, computed from modelled outcomes.

The surrogates model the *outcomes*; an objective is a function applied to outcome samples, so a
target objective (``band_gap_ev`` near 1.68 eV) is ``-|y - target| / tolerance`` of the modelled band
gap, and a change of objective needs no refit.

Each objective gives a term to maximize: the outcome, its negative, or ``-|outcome - target|``. In
``weighted`` mode (the default) the proposer maximizes ``sum(weight * term / scale)``; in ``pareto`` mode
it searches the trade-off front of the terms (hypervolume improvement over a reference point). Outcome
constraints (``coverage >= 0.9``) are bounds on modelled outcomes that the acquisition weights by their
probability of holding; the best experiment is the best one that meets them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from orchestrator.campaign import Campaign, Objective


@dataclass(frozen=True)
class ScalarObjective:
    """``score(Y) = sum_i weight_i * s_i(Y[..., k_i]) / scale_i``, higher is better.

    Attributes:
        objectives: the campaign's objectives.
        columns: index of each objective's outcome in the outcome vector.
        scales: divisor of each term (the tolerance for targets; given or data-derived otherwise).
    """

    objectives: tuple[Objective, ...]
    columns: tuple[int, ...]
    scales: tuple[float, ...]
    bounds: tuple[tuple[int, float | None, float | None], ...] = ()
    pareto: bool = False

    @property
    def all_columns(self) -> tuple[int, ...]:
        """Outcome columns the proposer must model: objectives' and constrained ones."""
        return tuple(sorted(set(self.columns) | {k for k, _, _ in self.bounds}))

    @classmethod
    def from_campaign(cls, campaign: Campaign, Y: torch.Tensor | None = None) -> "ScalarObjective":
        """Builds the objective; ``Y`` (``n x m`` observed outcomes) sets scales the file leaves open.

        With a single objective the scale does not change which point is best, so it is 1.
        """
        names = [o.name for o in campaign.outcomes]
        cols, scales = [], []
        single = len(campaign.objectives) == 1
        for obj in campaign.objectives:
            k = names.index(obj.outcome)
            cols.append(k)
            if obj.goal == "target":
                scales.append(float(obj.tolerance))
            elif obj.scale is not None:
                scales.append(float(obj.scale))
            elif single or Y is None or Y.shape[0] < 2:
                scales.append(1.0)
            else:
                std = float(Y[:, k].std())
                scales.append(std if std > 1e-12 else 1.0)
        bounds = tuple((names.index(oc.outcome), oc.min, oc.max) for oc in campaign.outcome_constraints)
        pareto = campaign.optimizer.multi_objective == "pareto" and len(campaign.objectives) > 1
        return cls(tuple(campaign.objectives), tuple(cols), tuple(scales), bounds, pareto)

    def terms(self, Y: torch.Tensor) -> torch.Tensor:
        """``... x m`` outcomes → ``... x k`` objective terms, each to maximize (unweighted, unscaled)."""
        out = []
        for obj, k in zip(self.objectives, self.columns):
            y = Y[..., k]
            out.append(y if obj.goal == "maximize" else -y if obj.goal == "minimize" else -(y - obj.target).abs())
        return torch.stack(out, dim=-1)

    def feasible(self, Y: torch.Tensor) -> torch.Tensor:
        """``... x m`` outcomes → ``...`` booleans: every outcome constraint holds."""
        ok = torch.ones(Y.shape[:-1], dtype=torch.bool, device=Y.device)
        for k, lo, hi in self.bounds:
            if lo is not None:
                ok = ok & (Y[..., k] >= lo)
            if hi is not None:
                ok = ok & (Y[..., k] <= hi)
        return ok

    def reference_point(self, Y: torch.Tensor) -> torch.Tensor:
        """The hypervolume reference, ``k``: each objective's ``reference`` (in outcome units) where given,
        else 10 % of the observed range below the worst observed term."""
        t = self.terms(Y)
        lo, hi = t.min(dim=0).values, t.max(dim=0).values
        ref = lo - 0.1 * (hi - lo).clamp_min(1e-9)
        for j, obj in enumerate(self.objectives):
            if obj.reference is not None:
                r = torch.tensor([obj.reference], dtype=Y.dtype)
                ref[j] = r[0] if obj.goal == "maximize" else -r[0] if obj.goal == "minimize" else -(r[0] - obj.target).abs()
        return ref

    def pareto_mask(self, Y: torch.Tensor) -> torch.Tensor:
        """``n x m`` outcomes → ``n`` booleans: feasible and not dominated on the objective terms."""
        from botorch.utils.multi_objective.pareto import is_non_dominated

        ok = self.feasible(Y)
        mask = torch.zeros(Y.shape[0], dtype=torch.bool)
        if ok.any():
            idx = torch.nonzero(ok).squeeze(-1)
            mask[idx[is_non_dominated(self.terms(Y[idx]), deduplicate=False)]] = True
        return mask

    def __call__(self, Y: torch.Tensor) -> torch.Tensor:
        """``... x m`` outcomes → ``...`` scores."""
        total = torch.zeros(Y.shape[:-1], dtype=Y.dtype, device=Y.device)
        for obj, k, s in zip(self.objectives, self.columns, self.scales):
            y = Y[..., k]
            if obj.goal == "maximize":
                term = y
            elif obj.goal == "minimize":
                term = -y
            else:
                term = -(y - obj.target).abs()
            total = total + obj.weight * term / s
        return total

    def score(self, outcomes: Mapping[str, float], outcome_names: Sequence[str]) -> float:
        """Score of one measured experiment."""
        y = torch.tensor([[float(outcomes[n]) for n in outcome_names]], dtype=torch.double)
        return float(self(y)[0])
