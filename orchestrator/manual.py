"""Results measured by hand: reading ``NAME=VALUE`` options into checked conditions and outcomes.

``orchestrator add FILE --conditions temp_c=80,layers=2,solvent=dmf --outcomes yield_pct=41.5`` records an
experiment a person ran outside the loop (see :meth:`orchestrator.ledger.Ledger.add_manual`);
``orchestrator resolve`` reads its ``--result`` values here too. Everything is checked against the campaign
before anything is written, and every problem is a :class:`~orchestrator.errors.UserInputError` naming the
parameter or outcome and what to write instead, so the CLI exits with code 2 and the ledger is untouched.

Only light imports at module level: the CLI imports this module on start.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from orchestrator.errors import UserInputError

if TYPE_CHECKING:
    from orchestrator.campaign import Campaign

_NAME = re.compile(r"^\s*[A-Za-z_][A-Za-z0-9_]*\s*=")


def parse_conditions(items: Sequence[str], campaign: "Campaign", option: str = "--conditions") -> dict[str, Any]:
    """``["temp_c=80,layers=2", "solvent=dmf"]`` → ``{"temp_c": 80.0, "layers": 2, "solvent": "dmf"}``.

    Each value becomes its parameter's type: a float for continuous and discrete parameters (a discrete one
    takes the listed value it names), an int for integer ones, the choice's string for categorical ones.
    Every parameter must be given exactly once, within its bounds, and the conditions together must meet
    every composition and linear constraint of the campaign.

    Raises:
        UserInputError: a malformed pair, an unknown, repeated or missing parameter, a value that is not a
            finite number, not a whole number, out of bounds, not among the allowed values or choices, or a
            violated constraint; the message names it.
    """
    from orchestrator.constraints import campaign_constraints
    from orchestrator.parameters import CategoricalParameter, DiscreteParameter, IntegerParameter

    params = {p.name: p for p in campaign.parameters}
    names = list(params)
    out: dict[str, Any] = {}
    for pair in _pairs(items, categorical={n for n, p in params.items() if isinstance(p, CategoricalParameter)}):
        name, sep, text = pair.partition("=")
        name, text = name.strip(), text.strip()
        if not sep or not name:
            raise UserInputError(f"{option} {pair!r}: write PARAMETER=VALUE, e.g. {names[0]}={_example(params[names[0]])}")
        p = params.get(name)
        if p is None:
            raise UserInputError(f"{option} {pair!r}: '{name}' is not a parameter; parameters: {', '.join(names)}")
        if name in out:
            raise UserInputError(f"{option}: '{name}' is given twice; give each parameter once")
        if isinstance(p, CategoricalParameter):
            if text not in p.choices:
                raise UserInputError(f"{option} {pair!r}: {name} must be one of its choices: {', '.join(p.choices)}")
            out[name] = text
            continue
        value = _number(option, pair, name, text)
        if isinstance(p, DiscreteParameter):
            match = [w for w in p.values if abs(value - w) <= 1e-9 * max(1.0, abs(w))]
            if not match:
                raise UserInputError(
                    f"{option} {pair!r}: {name} takes only its listed values: {', '.join(f'{w:g}' for w in p.values)}"
                )
            out[name] = float(match[0])
            continue
        if not p.low <= value <= p.high:
            raise UserInputError(f"{option} {pair!r}: {name} must lie within [{p.low:g}, {p.high:g}]; {value:g} is outside")
        if isinstance(p, IntegerParameter):
            if value != int(value):
                raise UserInputError(f"{option} {pair!r}: {name} is an integer parameter; {text} is not a whole number")
            out[name] = int(value)
        else:
            out[name] = value
    missing = [n for n in names if n not in out]
    if missing:
        raise UserInputError(f"{option}: give every parameter; missing {', '.join(missing)}")
    conditions = {n: out[n] for n in names}  # in the campaign's order
    for c in campaign_constraints(campaign):
        if not c.holds(conditions):
            terms = ", ".join(f"{n}={conditions[n]:g}" for n in c.coefficients)
            raise UserInputError(
                f"{option}: the conditions break the constraint '{c.text}' ({terms} give {c.value(conditions):.6g}, "
                f"which must be {c.op} {c.rhs:g}); give conditions that meet it"
            )
    return conditions


def parse_outcome_values(items: list[str], names: list[str], option: str = "--result") -> dict[str, float]:
    """``["a=1.5", "b=2,c=3"]`` → ``{"a": 1.5, "b": 2.0, "c": 3.0}``, every outcome exactly once.

    Args:
        option: the command-line option the values came from, named in messages.

    Raises:
        UserInputError: a malformed pair, an unknown or repeated outcome, a value that is not a finite
            number, or a missing outcome.
    """
    out: dict[str, float] = {}
    for item in items:
        for pair in filter(None, (p.strip() for p in item.split(","))):
            name, sep, text = pair.partition("=")
            name = name.strip()
            if not sep or not name:
                raise UserInputError(f"{option} {pair!r}: write OUTCOME=VALUE, e.g. {names[0]}=1.62")
            if name not in names:
                raise UserInputError(f"{option} {pair!r}: '{name}' is not an outcome; outcomes: {', '.join(names)}")
            if name in out:
                raise UserInputError(f"{option}: '{name}' is given twice")
            out[name] = _number(option, pair, name, text.strip())
    missing = [n for n in names if n not in out]
    if missing:
        raise UserInputError(f"{option}: give every outcome; missing {', '.join(missing)}")
    return out


def _number(option: str, pair: str, name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UserInputError(f"{option} {pair!r}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise UserInputError(f"{option} {pair!r}: the value of {name} must be a finite number")
    return value


def _pairs(items: Sequence[str], categorical: set[str]) -> list[str]:
    """Splits the options on commas; a piece that is not ``NAME=…`` after a categorical value is part of that
    value (a choice may contain a comma)."""
    pairs: list[str] = []
    for item in items:
        after_choice = False
        for piece in item.split(","):
            if not piece.strip():
                continue
            if after_choice and not _NAME.match(piece):
                pairs[-1] += "," + piece
                continue
            pairs.append(piece.strip())
            after_choice = "=" in piece and piece.partition("=")[0].strip() in categorical
    return pairs


def _example(p: Any) -> str:
    choices = getattr(p, "choices", None)
    if choices:
        return str(choices[0])
    low = getattr(p, "low")
    return f"{low:g}"
