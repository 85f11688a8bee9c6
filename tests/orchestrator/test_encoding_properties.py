"""Properties of the search-space encoding over random spaces.

Spaces mix continuous parameters (linear and ``log_scale``, bounds anywhere within ±1e12), integers,
discrete parameters (``values`` or ``low``/``high``/``step``), categoricals, compositions on a simplex with
per-component bounds, and a linear inequality. For each:

- ``encode`` of legal conditions lies within ``bounds()``, and ``decode(encode(c)) == c`` up to the rounding
  the space documents (continuous values to 10 significant digits, float noise of the affine map, and a
  composition's rounding error moved onto its components);
- ``decode`` of any point of the encoded box (and a little beyond it) gives legal conditions: within bounds,
  whole numbers, listed values and choices, every composition summing to its total;
- every point of ``initial_design`` decodes to legal conditions that meet every constraint, and point ``i``
  of the design is the same whichever ``start`` it was drawn from.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from orchestrator.campaign import Composition
from orchestrator.constraints import TOLERANCE, LinearConstraint, composition_constraint, feasible
from orchestrator.parameters import (
    MAX_ABS_BOUND,
    CategoricalParameter,
    ContinuousParameter,
    DiscreteParameter,
    IntegerParameter,
)
from orchestrator.space import DTYPE, SIGNIFICANT_DIGITS, SearchSpace, _unit

# Reproducible in CI: a fixed seed per test, no example database.
PROPS = settings(
    max_examples=100, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)
EPS = 2.0**-52


# --- random spaces ---------------------------------------------------------------------------------------


@st.composite
def bound_pair(draw: Any, low_min: float = -MAX_ABS_BOUND, high_max: float = MAX_ABS_BOUND) -> tuple[float, float]:
    scale = draw(st.sampled_from([1.0, 100.0, 1e6, MAX_ABS_BOUND]))
    low = draw(st.floats(max(low_min, -scale), min(high_max, scale)))
    high = draw(st.floats(low, min(high_max, MAX_ABS_BOUND)))
    assume(low < high)
    return low, high


@st.composite
def continuous(draw: Any, name: str) -> ContinuousParameter:
    if draw(st.booleans()):
        low, high = draw(bound_pair(low_min=1e-300))
        return ContinuousParameter(name=name, low=max(low, 1e-300), high=high, log_scale=True)
    low, high = draw(bound_pair())
    return ContinuousParameter(name=name, low=low, high=high)


@st.composite
def integer(draw: Any, name: str) -> IntegerParameter:
    low = draw(st.integers(-(10**12), 10**12 - 1) | st.integers(-20, 20))
    high = draw(st.integers(low + 1, min(low + draw(st.sampled_from([1, 5, 1000, 10**12])), 10**12)))
    return IntegerParameter(type="integer", name=name, low=low, high=high)


@st.composite
def discrete(draw: Any, name: str) -> DiscreteParameter:
    if draw(st.booleans()):
        values = draw(st.lists(st.floats(-MAX_ABS_BOUND, MAX_ABS_BOUND), min_size=2, max_size=8, unique=True))
        return DiscreteParameter(type="discrete", name=name, values=values)
    step = draw(st.sampled_from([0.001, 0.1, 0.25, 1.0, 2.5, 5.0, 100.0]))
    low = draw(st.integers(-1000, 1000)) * step
    n = draw(st.integers(1, 40))
    try:
        return DiscreteParameter.model_validate({"type": "discrete", "name": name, "low": low, "high": low + n * step, "step": step})
    except ValidationError:
        assume(False)  # (high - low) / step not whole in floating point: the file loader refuses it too
        raise


@st.composite
def categorical(draw: Any, name: str) -> CategoricalParameter:
    choices = draw(st.lists(st.text(min_size=1, max_size=6), min_size=2, max_size=5, unique=True))
    return CategoricalParameter(type="categorical", name=name, choices=choices)


@st.composite
def composition(draw: Any, first: int) -> tuple[list[ContinuousParameter], LinearConstraint]:
    """Components with their own bounds, and a total strictly between the sums of their lows and highs."""
    k = draw(st.integers(2, 4))
    scale = draw(st.sampled_from([1.0, 100.0, 1e6]))
    params = []
    for j in range(k):
        low, high = draw(bound_pair(low_min=0.0, high_max=scale))
        params.append(ContinuousParameter(name=f"x{first + j}", low=low, high=high))
    lows, highs = sum(p.low for p in params), sum(p.high for p in params)
    total = lows + draw(st.floats(0.05, 0.95)) * (highs - lows)
    assume(lows < total < highs and total > 0)
    comp = Composition(name=f"c{first}", components=[p.name for p in params], total=total)
    return params, composition_constraint(comp)


@st.composite
def spaces(draw: Any) -> SearchSpace:
    kinds = draw(st.lists(st.sampled_from(["continuous", "integer", "discrete", "categorical"]), min_size=0, max_size=5))
    makers = {"continuous": continuous, "integer": integer, "discrete": discrete, "categorical": categorical}
    params: list[Any] = [draw(makers[kind](f"p{i}")) for i, kind in enumerate(kinds)]
    constraints: list[LinearConstraint] = []
    for c in range(draw(st.integers(0 if params else 1, 2))):
        components, constraint = draw(composition(10 * (c + 1)))
        params += components
        constraints.append(constraint)
    free = [p for p in params if isinstance(p, ContinuousParameter) and not p.log_scale and p.name.startswith("p")]
    if len(free) >= 2 and draw(st.booleans()):
        a, b = free[:2]
        # a/span_a + b/span_b <= rhs: a diagonal cut through the box, with room on both sides.
        coef = {a.name: 1.0 / (a.high - a.low), b.name: 1.0 / (b.high - b.low)}
        floor = a.low * coef[a.name] + b.low * coef[b.name]
        rhs = floor + draw(st.floats(0.3, 1.7))
        if all(math.isfinite(v) for v in (*coef.values(), rhs)):
            constraints.append(LinearConstraint(f"{a.name} + {b.name} cut", coef, "<=", rhs))
    assume(not constraints or feasible(params, constraints))
    return SearchSpace(tuple(params), tuple(constraints))


@st.composite
def legal_conditions(draw: Any, space: SearchSpace) -> dict[str, Any]:
    """Conditions within every parameter's range, every composition on its simplex (to float noise)."""
    out: dict[str, Any] = {}
    for p in space.parameters:
        if isinstance(p, CategoricalParameter):
            out[p.name] = draw(st.sampled_from(p.choices))
        elif isinstance(p, IntegerParameter):
            out[p.name] = draw(st.integers(p.low, p.high))
        elif isinstance(p, DiscreteParameter):
            out[p.name] = draw(st.sampled_from(p.values))
        else:
            out[p.name] = draw(st.floats(p.low, p.high))
    for c in _compositions(space):
        params = [_param(space, n) for n in c.coefficients]
        x = [out[p.name] for p in params]
        s, lows, highs = sum(x), sum(p.low for p in params), sum(p.high for p in params)
        if s < c.rhs:
            x = [v + (p.high - v) * (c.rhs - s) / (highs - s) for v, p in zip(x, params)]
        elif s > c.rhs:
            x = [v - (v - p.low) * (s - c.rhs) / (s - lows) for v, p in zip(x, params)]
        for v, p in zip(x, params):
            out[p.name] = min(max(v, p.low), p.high)
    return out


def _compositions(space: SearchSpace) -> list[LinearConstraint]:
    return [c for c in space.constraints if c.op == "==" and set(c.coefficients.values()) == {1.0}]


def _param(space: SearchSpace, name: str) -> Any:
    return space.parameters[space.names.index(name)]


# --- what legal conditions are ---------------------------------------------------------------------------


def _rounded(v: float) -> bool:
    return float(f"{v:.{SIGNIFICANT_DIGITS}g}") == v


def assert_legal(space: SearchSpace, conditions: dict[str, Any]) -> None:
    assert list(conditions) == space.names
    for p in space.parameters:
        v = conditions[p.name]
        if isinstance(p, CategoricalParameter):
            assert v in p.choices
        elif isinstance(p, IntegerParameter):
            assert type(v) is int and p.low <= v <= p.high
        elif isinstance(p, DiscreteParameter):
            assert v in p.values
        else:
            assert type(v) is float and p.low <= v <= p.high, f"{p.name}={v!r} outside [{p.low!r}, {p.high!r}]"
            assert _rounded(v) or v in (p.low, p.high), f"{p.name}={v!r} is not rounded to {SIGNIFICANT_DIGITS} digits"
    for c in _compositions(space):
        total = sum(conditions[n] for n in c.coefficients)
        assert c.holds(conditions), f"{c.text}: components sum to {total!r}"


def _tolerance(space: SearchSpace, p: ContinuousParameter, v: float) -> float:
    """How far a continuous value may move in encode → decode: float noise of the map, and the rounding."""
    if p.log_scale:
        span = abs(math.log(p.high)) + abs(math.log(p.low)) + 1.0
        noise = 16 * EPS * span * v
    else:
        noise = 16 * EPS * (abs(p.low) + abs(p.high))
    rounding = 0.5 * 10.0 ** (1 - SIGNIFICANT_DIGITS) * abs(v)
    for c in _compositions(space):
        if p.name in c.coefficients:  # the rounding error of every component may land on this one
            return len(c.coefficients) * (noise + 0.5 * 10.0 ** (1 - SIGNIFICANT_DIGITS) * c.rhs) + TOLERANCE * max(1.0, c.rhs)
    return noise + rounding + 5e-324


# --- the properties ---------------------------------------------------------------------------------------


@PROPS
@given(data=st.data())
def test_decode_of_encode_gives_the_conditions_back(data):
    space = data.draw(spaces(), label="space")
    conditions = data.draw(st.lists(legal_conditions(space), min_size=1, max_size=4), label="conditions")
    X = space.encode(conditions)
    b = space.bounds()
    assert X.shape == (len(conditions), space.dim) and X.dtype == DTYPE
    assert bool(((X >= b[0]) & (X <= b[1])).all()), f"encoded {X} outside {b}"
    back = space.decode(X)
    for before, after in zip(conditions, back):
        assert_legal(space, after)
        for p in space.parameters:
            v, w = before[p.name], after[p.name]
            if isinstance(p, DiscreteParameter):  # only values the encoding cannot tell apart may swap
                assert w == v or _unit(w, p.low, p.high) == _unit(v, p.low, p.high)
            elif isinstance(p, ContinuousParameter):
                assert abs(w - v) <= _tolerance(space, p, v), f"{p.name}: {v!r} came back as {w!r}"
            else:
                assert w == v


@PROPS
@given(data=st.data())
def test_decode_of_any_point_in_the_box_is_legal(data):
    space = data.draw(spaces(), label="space")
    b = space.bounds()
    n = data.draw(st.integers(1, 4), label="n")
    rows = []
    for _ in range(n):
        row = []
        for lo, hi in zip(b[0].tolist(), b[1].tolist()):
            margin = 0.25 * (hi - lo) if data.draw(st.booleans(), label="beyond") else 0.0
            row.append(data.draw(st.floats(lo - margin, hi + margin), label="coordinate"))
        rows.append(row)
    X = torch.tensor(rows, dtype=DTYPE).reshape(n, space.dim)
    for conditions in space.decode(X):
        assert_legal(space, conditions)  # inequalities are the optimizer's to keep; compositions decode's


@settings(PROPS, max_examples=40)
@given(data=st.data())
def test_initial_design_points_are_legal(data):
    space = data.draw(spaces(), label="space")
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    start = data.draw(st.integers(0, 16), label="start")
    count = data.draw(st.integers(1, 6), label="count")
    X = space.initial_design(seed, start, count)
    b = space.bounds()
    assert X.shape == (count, space.dim)
    assert bool(((X >= b[0] - 1e-9) & (X <= b[1] + 1e-9)).all())
    for i in space.int_dims + space.cat_dims:
        assert all(x == int(x) for x in X[:, i].tolist())
    for i in space.disc_dims:
        p = space.parameters[i]
        assert set(X[:, i].tolist()) <= {_unit(v, p.low, p.high) for v in p.values}
    for conditions in space.decode(X):
        assert_legal(space, conditions)
        assert space.satisfies(conditions), [c.text for c in space.constraints if not c.holds(conditions)]
    # A resumed campaign continues the same design: point i depends only on the seed and i.
    assert torch.equal(X, space.initial_design(seed, 0, start + count)[start:])


def test_log_scale_bounds_a_few_ulps_apart_round_trip():
    """Found by the property above: low < high, yet log(low) == log(high) in floating point."""
    from orchestrator.parameters import ContinuousParameter

    p = ContinuousParameter(type="continuous", name="p1", low=0.058423785774326845, high=0.05842378577432685, log_scale=True)
    space = SearchSpace((p,), ())
    X = space.encode([{"p1": p.low}])
    assert X.tolist() == [[0.0]]
    assert space.decode(X)[0]["p1"] == pytest.approx(p.low, rel=1e-15)
