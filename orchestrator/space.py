"""The search space as tensors: encoding conditions for the models and decoding proposals back.

Encoding, one column per parameter (``d`` columns):
- continuous: position in ``[0, 1]`` between low and high (in log space when ``log_scale``);
- integer: the integer value itself (the optimizer keeps it on whole numbers);
- discrete: position in ``[0, 1]`` between the lowest and highest value (the optimizer keeps it on the
  positions of the listed values);
- categorical: the index of the choice, ``0 .. k-1`` (the mixed GP kernel treats it as a category).

Linear constraints (compositions and written inequalities, see :mod:`orchestrator.constraints`) involve
only continuous columns, whose encoding is affine, so they stay linear for the optimizer. Proposals are
decoded onto every composition's simplex exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from orchestrator.constraints import LinearConstraint
from orchestrator.errors import UserInputError
from orchestrator.parameters import (
    CategoricalParameter,
    ContinuousParameter,
    DiscreteParameter,
    IntegerParameter,
    Parameter,
)

DTYPE = torch.double
# Proposals are rounded to this many significant digits: far finer than any lab knob, and it keeps
# ledgers and instrument commands free of float noise such as 120.00000000000001.
SIGNIFICANT_DIGITS = 10


@dataclass(frozen=True)
class SearchSpace:
    """Maps between condition dicts (user units) and encoded tensors (``n x d``).

    Attributes:
        parameters: the knobs, in column order.
        constraints: linear constraints between continuous parameters (compositions first).
    """

    parameters: tuple[Parameter, ...]
    constraints: tuple[LinearConstraint, ...] = ()

    @classmethod
    def from_campaign(cls, campaign) -> "SearchSpace":
        from orchestrator.constraints import campaign_constraints

        return cls(tuple(campaign.parameters), campaign_constraints(campaign))

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.parameters]

    @property
    def dim(self) -> int:
        return len(self.parameters)

    @property
    def cat_dims(self) -> list[int]:
        return [i for i, p in enumerate(self.parameters) if isinstance(p, CategoricalParameter)]

    @property
    def int_dims(self) -> list[int]:
        return [i for i, p in enumerate(self.parameters) if isinstance(p, IntegerParameter)]

    @property
    def disc_dims(self) -> list[int]:
        return [i for i, p in enumerate(self.parameters) if isinstance(p, DiscreteParameter)]

    @property
    def cont_dims(self) -> list[int]:
        return [i for i, p in enumerate(self.parameters) if isinstance(p, ContinuousParameter)]

    @property
    def ordinal_dims(self) -> list[int]:
        """Columns whose order means something (everything but categoricals)."""
        return [i for i, p in enumerate(self.parameters) if not isinstance(p, CategoricalParameter)]

    def bounds(self) -> torch.Tensor:
        """Encoded bounds, ``2 x d``."""
        lo, hi = [], []
        for p in self.parameters:
            if isinstance(p, (ContinuousParameter, DiscreteParameter)):
                lo.append(0.0), hi.append(1.0)
            elif isinstance(p, IntegerParameter):
                lo.append(float(p.low)), hi.append(float(p.high))
            else:
                lo.append(0.0), hi.append(float(len(p.choices) - 1))
        return torch.tensor([lo, hi], dtype=DTYPE)

    def discrete_values(self) -> dict[int, list[float]]:
        """Allowed encoded values of every integer, discrete and categorical column."""
        b = self.bounds()
        out = {i: [float(v) for v in range(int(b[0, i]), int(b[1, i]) + 1)] for i in self.int_dims + self.cat_dims}
        for i in self.disc_dims:
            p = self.parameters[i]
            out[i] = [_unit(v, p.low, p.high) for v in p.values]  # type: ignore[union-attr]
        return dict(sorted(out.items()))

    def n_combinations(self) -> int | None:
        """Number of distinct points when every parameter is discrete, else ``None``."""
        if self.cont_dims:
            return None
        return math.prod(len(v) for v in self.discrete_values().values())

    def encode(self, conditions: Sequence[Mapping[str, Any]]) -> torch.Tensor:
        """Condition dicts → ``n x d`` tensor.

        Raises:
            UserInputError: a value is missing, of the wrong kind, or outside its parameter's range.
        """
        rows = [[_encode_one(p, c) for p in self.parameters] for c in conditions]
        return torch.tensor(rows, dtype=DTYPE).reshape(len(rows), self.dim)

    def decode(self, X: torch.Tensor) -> list[dict[str, Any]]:
        """``n x d`` tensor → condition dicts, snapped to valid values and onto every composition's simplex."""
        out = []
        for row in X.detach().cpu().tolist():
            conditions = {p.name: _decode_one(p, v) for p, v in zip(self.parameters, row)}
            for c in self.constraints:
                if c.op == "==" and set(c.coefficients.values()) == {1.0}:
                    _onto_simplex(conditions, c, {p.name: p for p in self.parameters})
            out.append(conditions)
        return out

    def from_unit_cube(self, U: torch.Tensor) -> torch.Tensor:
        """Maps ``n x d`` points of the unit cube (e.g. a Sobol design) onto the encoded space, evenly per level."""
        X = U.clone().to(DTYPE)
        b = self.bounds()
        for i in self.int_dims + self.cat_dims:
            levels = b[1, i] - b[0, i] + 1
            X[:, i] = torch.clamp(torch.floor(b[0, i] + U[:, i] * levels), b[0, i], b[1, i])
        for i in self.disc_dims:
            p = self.parameters[i]  # its values only: discrete_values() lists every integer of a wide range too
            values = torch.tensor([_unit(v, p.low, p.high) for v in p.values], dtype=DTYPE)  # type: ignore[union-attr]
            X[:, i] = values[torch.clamp(torch.floor(U[:, i] * len(values)).long(), 0, len(values) - 1)]
        return X

    # --- constraints -----------------------------------------------------------------------------------
    def botorch_constraints(self) -> tuple[list[tuple[torch.Tensor, torch.Tensor, float]], list[tuple[torch.Tensor, torch.Tensor, float]]]:
        """(inequalities, equalities) in the encoded space, in BoTorch's ``sum(coef * x[idx]) >= rhs`` form."""
        ineq, eq = [], []
        for c in self.constraints:
            idx, coef, rhs = [], [], c.rhs
            for name, a in c.coefficients.items():
                i = self.names.index(name)
                p = self.parameters[i]
                # x = low + span * u, so a * x = a * low + (a * span) * u.
                idx.append(i)
                coef.append(a * (p.high - p.low))  # type: ignore[union-attr]
                rhs -= a * p.low  # type: ignore[union-attr]
            indices = torch.tensor(idx, dtype=torch.long)
            values = torch.tensor(coef, dtype=DTYPE)
            if c.op == "==":
                eq.append((indices, values, float(rhs)))
            elif c.op == ">=":
                ineq.append((indices, values, float(rhs)))
            else:
                ineq.append((indices, -values, float(-rhs)))
        return ineq, eq

    def satisfies(self, conditions: Mapping[str, Any]) -> bool:
        """Whether decoded conditions meet every constraint (to rounding)."""
        return all(c.holds(conditions) for c in self.constraints)

    def initial_design(self, seed: int, start: int, count: int) -> torch.Tensor:
        """Points ``start .. start+count-1`` of the campaign's space-filling design, ``count x d``.

        A scrambled Sobol sequence; with constraints, the continuous columns instead come from a seeded
        hit-and-run walk over the constrained polytope (every point feasible). Either way point ``i``
        depends only on the seed and ``i``, so a resumed campaign continues the same design.
        """
        from torch.quasirandom import SobolEngine

        U = SobolEngine(self.dim, scramble=True, seed=seed).draw(start + count, dtype=DTYPE)[start:]
        X = self.from_unit_cube(U)
        if self.constraints:
            from botorch.utils.sampling import get_polytope_samples

            ineq, eq = self.botorch_constraints()
            samples = get_polytope_samples(
                n=start + count,
                bounds=self.bounds(),
                inequality_constraints=ineq or None,
                equality_constraints=eq or None,
                seed=seed,
                n_thinning=8,
                n_burnin=500,
            )[start:]
            X[:, self.cont_dims] = samples[:, self.cont_dims].to(DTYPE)
        return X

    def all_points(self) -> torch.Tensor:
        """Every point of an all-discrete space, ``N x d`` (call only when ``n_combinations()`` is small)."""
        values = self.discrete_values()
        grids = torch.meshgrid(*[torch.tensor(values[i], dtype=DTYPE) for i in range(self.dim)], indexing="ij")
        return torch.stack([g.reshape(-1) for g in grids], dim=-1)


def _unit(v: float, low: float, high: float) -> float:
    return (v - low) / (high - low)


def _onto_simplex(conditions: dict[str, Any], c: LinearConstraint, params: Mapping[str, Parameter]) -> None:
    """Makes a composition's components sum to its total (to the tolerance ``LinearConstraint.holds`` allows),
    by moving the error onto the component with the most room for it, spilling what does not fit within
    its bounds onto the next."""
    names = list(c.coefficients)
    error = c.rhs - sum(conditions[n] for n in names)
    if error == 0.0:
        return
    room = {n: (params[n].high - conditions[n]) if error > 0 else (conditions[n] - params[n].low) for n in names}  # type: ignore[union-attr]
    for n in sorted(names, key=lambda k: -room[k]):
        others = sum(conditions[k] for k in names if k != n)
        value = float(f"{c.rhs - others:.{SIGNIFICANT_DIGITS}g}")
        conditions[n] = min(max(value, params[n].low), params[n].high)  # type: ignore[union-attr]
        if c.holds(conditions):
            return
    raise UserInputError(f"cannot place {names} on their simplex (sum {c.rhs:g}) within their bounds")


def _encode_one(p: Parameter, conditions: Mapping[str, Any]) -> float:
    if p.name not in conditions:
        raise UserInputError(f"conditions lack '{p.name}'; give a value for every parameter")
    v = conditions[p.name]
    if isinstance(p, CategoricalParameter):
        if v not in p.choices:
            raise UserInputError(f"{p.name}: {v!r} is not one of {p.choices}")
        return float(p.choices.index(v))
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise UserInputError(f"{p.name}: {v!r} is not a finite number")
    if not p.low <= v <= p.high:
        raise UserInputError(f"{p.name}: {v} is outside [{p.low}, {p.high}]")
    if isinstance(p, IntegerParameter):
        if v != int(v):
            raise UserInputError(f"{p.name}: {v} is not a whole number")
        return float(v)
    if isinstance(p, DiscreteParameter):
        if not any(abs(v - w) <= 1e-9 * max(1.0, abs(w)) for w in p.values):
            raise UserInputError(f"{p.name}: {v} is not one of its values {p.values}")
        return _unit(v, p.low, p.high)
    if p.log_scale:
        span = math.log(p.high) - math.log(p.low)
        # Bounds a few ulps apart have equal logarithms: the parameter is then effectively fixed.
        return (math.log(v) - math.log(p.low)) / span if span > 0 else 0.0
    return (v - p.low) / (p.high - p.low)


def _decode_one(p: Parameter, u: float) -> Any:
    if isinstance(p, CategoricalParameter):
        return p.choices[min(max(int(round(u)), 0), len(p.choices) - 1)]
    if isinstance(p, IntegerParameter):
        return int(min(max(round(u), p.low), p.high))
    if isinstance(p, DiscreteParameter):
        return min(p.values, key=lambda w: abs(_unit(w, p.low, p.high) - u))
    u = min(max(u, 0.0), 1.0)
    if p.log_scale:
        v = math.exp(math.log(p.low) + u * (math.log(p.high) - math.log(p.low)))
    else:
        v = p.low + u * (p.high - p.low)
    v = float(f"{v:.{SIGNIFICANT_DIGITS}g}")
    return min(max(v, p.low), p.high)
