"""The search space as tensors: encoding conditions for the models and decoding proposals back.

Encoding, one column per parameter (``d`` columns):
- continuous: position in ``[0, 1]`` between low and high (in log space when ``log_scale``);
- integer: the integer value itself (the optimizer keeps it on whole numbers);
- categorical: the index of the choice, ``0 .. k-1`` (the mixed GP kernel treats it as a category).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from orchestrator.campaign import CategoricalParameter, ContinuousParameter, IntegerParameter, Parameter
from orchestrator.errors import UserInputError

DTYPE = torch.double
# Proposals are rounded to this many significant digits: far finer than any lab knob, and it keeps
# ledgers and instrument commands free of float noise such as 120.00000000000001.
SIGNIFICANT_DIGITS = 10


@dataclass(frozen=True)
class SearchSpace:
    """Maps between condition dicts (user units) and encoded tensors (``n x d``)."""

    parameters: tuple[Parameter, ...]

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
    def cont_dims(self) -> list[int]:
        return [i for i, p in enumerate(self.parameters) if isinstance(p, ContinuousParameter)]

    def bounds(self) -> torch.Tensor:
        """Encoded bounds, ``2 x d``."""
        lo, hi = [], []
        for p in self.parameters:
            if isinstance(p, ContinuousParameter):
                lo.append(0.0), hi.append(1.0)
            elif isinstance(p, IntegerParameter):
                lo.append(float(p.low)), hi.append(float(p.high))
            else:
                lo.append(0.0), hi.append(float(len(p.choices) - 1))
        return torch.tensor([lo, hi], dtype=DTYPE)

    def discrete_values(self) -> dict[int, list[float]]:
        """Allowed encoded values of every integer and categorical column."""
        b = self.bounds()
        return {i: [float(v) for v in range(int(b[0, i]), int(b[1, i]) + 1)] for i in self.int_dims + self.cat_dims}

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
        """``n x d`` tensor → condition dicts, snapped to valid values."""
        out = []
        for row in X.detach().cpu().tolist():
            out.append({p.name: _decode_one(p, v) for p, v in zip(self.parameters, row)})
        return out

    def from_unit_cube(self, U: torch.Tensor) -> torch.Tensor:
        """Maps ``n x d`` points of the unit cube (e.g. a Sobol design) onto the encoded space, evenly per level."""
        X = U.clone().to(DTYPE)
        b = self.bounds()
        for i in self.int_dims + self.cat_dims:
            levels = b[1, i] - b[0, i] + 1
            X[:, i] = torch.clamp(torch.floor(b[0, i] + U[:, i] * levels), b[0, i], b[1, i])
        return X

    def all_points(self) -> torch.Tensor:
        """Every point of an all-discrete space, ``N x d`` (call only when ``n_combinations()`` is small)."""
        values = self.discrete_values()
        grids = torch.meshgrid(*[torch.tensor(values[i], dtype=DTYPE) for i in range(self.dim)], indexing="ij")
        return torch.stack([g.reshape(-1) for g in grids], dim=-1)


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
    if p.log_scale:
        return (math.log(v) - math.log(p.low)) / (math.log(p.high) - math.log(p.low))
    return (v - p.low) / (p.high - p.low)


def _decode_one(p: Parameter, u: float) -> Any:
    if isinstance(p, CategoricalParameter):
        return p.choices[min(max(int(round(u)), 0), len(p.choices) - 1)]
    if isinstance(p, IntegerParameter):
        return int(min(max(round(u), p.low), p.high))
    u = min(max(u, 0.0), 1.0)
    if p.log_scale:
        v = math.exp(math.log(p.low) + u * (math.log(p.high) - math.log(p.low)))
    else:
        v = p.low + u * (p.high - p.low)
    v = float(f"{v:.{SIGNIFICANT_DIGITS}g}")
    return min(max(v, p.low), p.high)
