"""Linear constraints between parameters: composition groups (a simplex) and written inequalities.

A campaign writes ``constraints: ["0.2*cs_frac + br_frac <= 0.6"]`` and ``compositions: [{name: a_site,
components: [cs, fa, ma]}]``. Each becomes a :class:`LinearConstraint` ``sum_i a_i x_i  op  rhs`` in the
parameters' own units. The expression is parsed by :mod:`orchestrator.expressions` (never evaluated as
Python); its coefficients are read off by evaluating it at the origin and at each unit vector, and its
linearity is then confirmed at scattered points, so ``cs * br <= 0.1`` is refused with a clear message.

Constraints may involve continuous parameters without ``log_scale`` only: their encoding is affine, so the
constraint stays linear in the optimizer's space. When the file is loaded, a linear program checks that
some point of the box satisfies every constraint together.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from orchestrator.expressions import Expression, ExpressionError
from orchestrator.parameters import ContinuousParameter

if TYPE_CHECKING:
    from orchestrator.campaign import Campaign, Composition, Parameter

_OPERATOR = re.compile(r"(<=|>=|==)")
TOLERANCE = 1e-7  # how far past a bound a proposal may sit after rounding to the instrument's digits


@dataclass(frozen=True)
class LinearConstraint:
    """``sum(coefficients[name] * x[name]) op rhs``, in the parameters' units.

    Attributes:
        text: what the file says (or the composition it came from).
        coefficients: parameter name → coefficient (zeros dropped).
        op: ``<=``, ``>=`` or ``==``.
        rhs: the right-hand side.
    """

    text: str
    coefficients: dict[str, float]
    op: Literal["<=", ">=", "=="]
    rhs: float

    def value(self, conditions: Mapping[str, Any]) -> float:
        return sum(a * float(conditions[n]) for n, a in self.coefficients.items())

    def holds(self, conditions: Mapping[str, Any], tol: float = TOLERANCE) -> bool:
        v = self.value(conditions)
        scale = max(1.0, abs(self.rhs))
        if self.op == "<=":
            return v <= self.rhs + tol * scale
        if self.op == ">=":
            return v >= self.rhs - tol * scale
        return abs(v - self.rhs) <= tol * scale


def parse_constraint(text: str, parameters: Sequence["Parameter"]) -> LinearConstraint:
    """Parses ``"lhs <= rhs"`` (or ``>=``, ``==``) into a linear constraint.

    Raises:
        ValueError: not one comparison, unknown or unsuitable parameters, or not linear.
    """
    parts = _OPERATOR.split(text)
    if len(parts) != 3:
        raise ValueError(f"'{text}' needs exactly one of <=, >=, == (e.g. '0.2*cs_frac + br_frac <= 0.6')")
    lhs, op, rhs = parts
    try:
        expr = Expression.parse(f"({lhs}) - ({rhs})")
    except ExpressionError as exc:
        raise ValueError(str(exc).replace(f"({lhs}) - ({rhs})", text)) from None
    by_name = {p.name: p for p in parameters}
    for name in sorted(expr.names):
        p = by_name.get(name)
        if p is None:
            raise ValueError(f"'{text}' reads '{name}', which is not a parameter")
        if not isinstance(p, ContinuousParameter) or p.log_scale:
            raise ValueError(f"'{text}': '{name}' must be a continuous parameter without log_scale to be in a linear constraint")
    names = sorted(expr.names)
    if not names:
        raise ValueError(f"'{text}' reads no parameter")
    zero = dict.fromkeys(names, 0.0)
    try:
        c0 = float(expr.evaluate(zero))
        coef = {n: float(expr.evaluate({**zero, n: 1.0})) - c0 for n in names}
        rng = np.random.default_rng(0)
        for _ in range(4):
            x = {n: float(rng.uniform(-3, 3)) for n in names}
            linear = c0 + sum(coef[n] * x[n] for n in names)
            actual = float(expr.evaluate(x))
            if abs(actual - linear) > 1e-9 * max(1.0, abs(actual)):
                raise ValueError(f"'{text}' is not linear in the parameters; write it as a sum of number * parameter terms")
    except ExpressionError as exc:  # quote the constraint as written, not the difference it was parsed as
        raise ValueError(str(exc).replace(expr.text, text)) from None
    coef = {n: a for n, a in coef.items() if a != 0.0}
    if not coef:
        raise ValueError(f"'{text}' does not depend on any parameter")
    return LinearConstraint(text, coef, op, -c0)  # type: ignore[arg-type]


def composition_constraint(comp: "Composition") -> LinearConstraint:
    """``sum(components) == total``."""
    return LinearConstraint(
        f"composition {comp.name}: {' + '.join(comp.components)} == {comp.total:g}",
        dict.fromkeys(comp.components, 1.0),
        "==",
        comp.total,
    )


def campaign_constraints(campaign: "Campaign") -> tuple[LinearConstraint, ...]:
    """Every linear constraint of a (valid) campaign: compositions first, then the written ones."""
    out = [composition_constraint(c) for c in campaign.compositions]
    out += [parse_constraint(t, campaign.parameters) for t in campaign.constraints]
    return tuple(out)


def constraint_problems(campaign: "Campaign") -> list[tuple[tuple[str | int, ...], str]]:
    """What is wrong with a campaign's compositions and constraints, as (field path, message)."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    by_name = {p.name: p for p in campaign.parameters}
    owner: dict[str, str] = {}
    parsed: list[LinearConstraint] = []
    for i, comp in enumerate(campaign.compositions):
        for name in comp.components:
            p = by_name.get(name)
            if p is None:
                problems.append((("compositions", i, "components"), f"'{name}' is not a parameter"))
            elif not isinstance(p, ContinuousParameter) or p.log_scale:
                problems.append((("compositions", i, "components"), f"'{name}' must be continuous, without log_scale"))
            elif name in owner:
                problems.append((("compositions", i, "components"), f"'{name}' is already part of composition {owner[name]}"))
            owner.setdefault(name, comp.name)
        if len(set(comp.components)) != len(comp.components):
            problems.append((("compositions", i, "components"), "components must be unique"))
        if not problems:
            parsed.append(composition_constraint(comp))
    for i, text in enumerate(campaign.constraints):
        try:
            parsed.append(parse_constraint(text, campaign.parameters))
        except ValueError as exc:
            problems.append((("constraints", i), str(exc)))
    if not problems and parsed and not feasible(campaign.parameters, parsed):
        problems.append(
            (
                ("constraints",) if campaign.constraints else ("compositions",),
                "no point within the parameters' bounds satisfies every composition and constraint together; "
                "widen the bounds or relax a constraint",
            )
        )
    return problems


def feasible(parameters: Sequence["Parameter"], constraints: Sequence[LinearConstraint]) -> bool:
    """Whether some point of the parameter box satisfies every constraint (a linear program)."""
    from scipy.optimize import linprog

    names = sorted({n for c in constraints for n in c.coefficients})
    by_name = {p.name: p for p in parameters}
    A_ub, b_ub, A_eq, b_eq = [], [], [], []
    for c in constraints:
        row = [c.coefficients.get(n, 0.0) for n in names]
        if c.op == "<=":
            A_ub.append(row), b_ub.append(c.rhs)
        elif c.op == ">=":
            A_ub.append([-a for a in row]), b_ub.append(-c.rhs)
        else:
            A_eq.append(row), b_eq.append(c.rhs)
    result = linprog(
        np.zeros(len(names)),
        A_ub=A_ub or None,
        b_ub=b_ub or None,
        A_eq=A_eq or None,
        b_eq=b_eq or None,
        bounds=[(by_name[n].low, by_name[n].high) for n in names],
        method="highs",
    )
    return bool(result.status == 0)
