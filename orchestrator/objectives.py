"""The campaign's objectives as one number to maximize, computed from modelled outcomes.

The surrogates model the *outcomes*; the objective is a function applied to outcome samples, so a
target objective (``band_gap_ev`` near 1.68 eV) is ``-|y - target| / tolerance`` of the modelled band
gap, and a change of objective needs no refit.
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
        return cls(tuple(campaign.objectives), tuple(cols), tuple(scales))

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
