"""The simulator contract, plus the option and condition checks every simulator shares.

A simulator stands in for a real experiment: given the conditions of one run and a seeded RNG it returns one
float per outcome, or raises :class:`~orchestrator.errors.ExperimentFailed` when the run produces no usable
measurement. Parameters are described by plain dicts, the same shape campaign files and benchmarks use::

    {"name": "anneal_temp_c", "type": "continuous", "low": 60.0, "high": 220.0, "unit": "degC"}
    {"name": "antisolvent", "type": "categorical", "choices": ["chlorobenzene", "none"]}
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np

from orchestrator.errors import SimulatorError
from orchestrator.threads import single_threaded  # noqa: F401 - re-exported for the simulators

__all__ = ["Simulator", "check_conditions", "non_negative_option", "single_threaded", "strict_options"]

_F = TypeVar("_F", bound=Callable[..., Any])

# Relative slack on bounds: recorded data and decoded optimizer proposals sit on a bound up to float round-off.
_BOUND_RTOL = 1e-6


@runtime_checkable
class Simulator(Protocol):
    """One simulated experiment: conditions in, outcomes out.

    Attributes:
        outcomes: names of the outcomes every successful call returns, in a stable order.
    """

    outcomes: tuple[str, ...]

    def __call__(self, conditions: Mapping[str, object], rng: np.random.Generator) -> dict[str, float]:
        """Run one experiment.

        Args:
            conditions: parameter name -> value (float for continuous, str for categorical).
            rng: the only source of randomness, so a run is reproducible from the generator's state.

        Returns:
            One float per name in ``outcomes``.

        Raises:
            ExperimentFailed: the run produced no usable measurement; ``reason`` says why.
            SimulatorError: the conditions are not in the simulator's space (a caller bug, not data).
        """
        ...

    def truth(self, conditions: Mapping[str, object]) -> dict[str, float] | None:
        """Noise-free outcomes for ``conditions``, or None where the experiment would fail."""
        ...


def strict_options(factory: _F) -> _F:
    """Make ``factory(**options)`` raise SimulatorError, not TypeError, for unknown or missing options.

    Options come from a user's campaign file, so the message names the bad option and the allowed ones.
    """
    signature = inspect.signature(factory)
    allowed = [p.name for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    required = [p.name for p in signature.parameters.values() if p.default is p.empty]
    label = getattr(factory, "__name__", repr(factory))

    @functools.wraps(factory)
    def wrapper(*args: Any, **options: Any) -> Any:
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise SimulatorError(
                f"{label}: unknown option(s) {', '.join(map(repr, unknown))}; allowed options: {', '.join(allowed)}"
            )
        missing = [name for name in required[len(args) :] if name not in options]
        if missing:
            raise SimulatorError(f"{label}: missing required option(s) {', '.join(map(repr, missing))}")
        return factory(*args, **options)

    return wrapper  # type: ignore[return-value]


def non_negative_option(owner: str, name: str, value: object, upper: float | None = None) -> float:
    """Return ``value`` as a float, or raise SimulatorError if it is not a finite number in [0, upper]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SimulatorError(f"{owner}: option {name!r} must be a finite number, got {value!r}")
    if value < 0 or (upper is not None and value > upper):
        span = f"between 0 and {upper}" if upper is not None else ">= 0"
        raise SimulatorError(f"{owner}: option {name!r} must be {span}, got {value!r}")
    return float(value)


def check_conditions(
    owner: str, conditions: Mapping[str, object], parameters: Sequence[Mapping[str, Any]]
) -> dict[str, float | str]:
    """Validate one set of conditions against parameter descriptions.

    Args:
        owner: the simulator's name, for messages.
        conditions: parameter name -> value.
        parameters: plain parameter dicts (see the module docstring).

    Returns:
        The conditions with continuous values as floats (clipped onto the bounds within round-off) and
        categorical values as str, in the order of ``parameters``.

    Raises:
        SimulatorError: a parameter is missing, unknown, of the wrong type, out of bounds, or not a choice.
    """
    names = [p["name"] for p in parameters]
    unknown = sorted(set(conditions) - set(names))
    if unknown:
        raise SimulatorError(f"{owner}: unknown parameter(s) {', '.join(map(repr, unknown))}; expected {names}")
    checked: dict[str, float | str] = {}
    for p in parameters:
        name = p["name"]
        if name not in conditions:
            raise SimulatorError(f"{owner}: missing parameter {name!r}; expected {names}")
        value = conditions[name]
        if p["type"] == "categorical":
            if value not in p["choices"]:
                raise SimulatorError(f"{owner}: parameter {name!r} = {value!r} is not one of {list(p['choices'])}")
            checked[name] = str(value)
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise SimulatorError(f"{owner}: parameter {name!r} must be a number, got {value!r}")
        low, high = float(p["low"]), float(p["high"])
        slack = _BOUND_RTOL * (high - low)
        number = float(value)
        if not (low - slack <= number <= high + slack):  # also rejects NaN
            raise SimulatorError(f"{owner}: parameter {name!r} = {number!r} is outside its bounds [{low}, {high}]")
        checked[name] = min(max(number, low), high)
    return checked


