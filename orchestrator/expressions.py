"""Arithmetic expressions written in campaign files, parsed into a tree and evaluated without ``eval``.

Procedures compute step arguments from an experiment's conditions, e.g. the volume of one precursor stock
``"{(1 - cs_frac) * (1 - br_frac) * 100}"``. The grammar is numbers, parameter names, ``+ - * / **``,
unary minus, parentheses and the functions ``min``, ``max``, ``abs``, ``round``. Anything else (attribute
access, calls of other names, subscripts, comparisons, strings) is refused when the file is loaded.

Templates mix text and expressions: ``"quench_{antisolvent}"`` gives a string, ``"{anneal_time_min} min"``
a string the executor reads as a duration, and a template that is exactly one ``{expression}`` gives the
expression's value (a number, or a categorical's choice).
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.errors import UserInputError

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}
def _round(value: float, digits: float = 0) -> float:
    return float(round(value, int(digits)))


_FUNCTIONS: dict[str, Callable[..., Any]] = {"min": min, "max": max, "abs": abs, "round": _round}
_FIELD = re.compile(r"\{([^{}]*)\}")


class ExpressionError(UserInputError):
    """An expression that cannot be parsed or evaluated; the message quotes it and says what is allowed."""


@dataclass(frozen=True)
class Expression:
    """A parsed arithmetic expression.

    Attributes:
        text: the source.
        names: the parameter names it reads.
    """

    text: str
    tree: ast.expr
    names: frozenset[str]

    @classmethod
    def parse(cls, text: str) -> "Expression":
        """Parses ``text``.

        Raises:
            ExpressionError: a syntax error or a construct outside the grammar.
        """
        names: set[str] = set()
        try:
            tree = ast.parse(text.strip(), mode="eval").body
            _check(tree, text, names)
        except SyntaxError as exc:
            raise ExpressionError(f"cannot parse expression '{_short(text)}': {exc.msg}") from None
        except (RecursionError, MemoryError):  # thousands of nested or chained terms
            raise ExpressionError(f"expression '{_short(text)}' is too deeply nested or too long; shorten it") from None
        return cls(text, tree, frozenset(names))

    def evaluate(self, values: Mapping[str, Any]) -> Any:
        """The expression's value with ``values`` for its names.

        Raises:
            ExpressionError: an unknown name, arithmetic on a categorical choice, or a non-finite result.
        """
        try:
            result = _eval(self.tree, values)
        except KeyError as exc:
            raise ExpressionError(f"'{self.text}' reads '{exc.args[0]}', which is not a parameter") from None
        except OverflowError:  # its message is only "(34, 'Numerical result out of range')"
            raise ExpressionError(f"'{self.text}' cannot be evaluated: a number in it is too large") from None
        except (TypeError, ZeroDivisionError, RecursionError) as exc:
            raise ExpressionError(f"'{self.text}' cannot be evaluated: {exc}") from None
        if isinstance(result, float) and not math.isfinite(result):
            raise ExpressionError(f"'{self.text}' evaluates to {result}")
        return result


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def _check(node: ast.AST, text: str, names: set[str]) -> None:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return
    if isinstance(node, ast.Name):
        names.add(node.id)
        return
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        _check(node.left, text, names)
        _check(node.right, text, names)
        return
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        _check(node.operand, text, names)
        return
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCTIONS
        and not node.keywords
        and node.args
    ):
        for arg in node.args:
            _check(arg, text, names)
        return
    raise ExpressionError(
        f"'{text}': {ast.unparse(node)!r} is not allowed; use numbers, parameter names, + - * / **, parentheses "
        f"and {', '.join(_FUNCTIONS)}()"
    )


def _eval(node: ast.expr, values: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        # Floats: an integer power tower like 10**10**10 would otherwise build a huge exact integer.
        return float(node.value)
    if isinstance(node, ast.Name):
        return values[node.id]
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left, values), _eval(node.right, values)
        if isinstance(left, str) or isinstance(right, str):
            raise TypeError("arithmetic on a categorical choice")
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp):
        value = _eval(node.operand, values)
        if isinstance(value, str):
            raise TypeError("arithmetic on a categorical choice")
        return -value if isinstance(node.op, ast.USub) else value
    assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    return _FUNCTIONS[node.func.id](*(_eval(a, values) for a in node.args))


@dataclass(frozen=True)
class Template:
    """A value in a procedure step: a constant, or text with ``{expression}`` fields.

    Attributes:
        source: what the file says.
        parts: literal strings and expressions, in order.
    """

    source: Any
    parts: tuple[str | Expression, ...]

    @classmethod
    def parse(cls, source: Any) -> "Template":
        if not isinstance(source, str) or ("{" not in source and "}" not in source):
            return cls(source, ())
        parts: list[str | Expression] = []
        pos = 0
        for m in _FIELD.finditer(source):
            if m.start() > pos:
                parts.append(source[pos : m.start()])
            parts.append(Expression.parse(m.group(1)))
            pos = m.end()
        if pos < len(source):
            parts.append(source[pos:])
        if any("{" in p or "}" in p for p in parts if isinstance(p, str)):
            raise ExpressionError(f"unbalanced braces in '{source}'; write fields as {{expression}}")
        return cls(source, tuple(parts))

    @property
    def names(self) -> frozenset[str]:
        out: set[str] = set()
        for p in self.parts:
            if isinstance(p, Expression):
                out |= p.names
        return frozenset(out)

    def render(self, values: Mapping[str, Any]) -> Any:
        """The value for one experiment: the constant, the single expression's value, or the joined text."""
        if not self.parts:
            return self.source
        if len(self.parts) == 1 and isinstance(self.parts[0], Expression):
            return self.parts[0].evaluate(values)
        return "".join(p if isinstance(p, str) else _text(p.evaluate(values)) for p in self.parts)


def _text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


_DURATION = re.compile(r"^\s*([-+0-9.eE]+)\s*(s|sec|min|h)?\s*$")
_SECONDS = {None: 1.0, "s": 1.0, "sec": 1.0, "min": 60.0, "h": 3600.0}


def duration_s(value: Any) -> float:
    """Seconds from a number (seconds) or text like ``"12.5 min"`` (units s, min, h).

    Raises:
        ExpressionError: not a duration, or negative.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if m is None:
            raise ExpressionError(f"'{value}' is not a duration; write e.g. 90, '90 s', '12.5 min' or '2 h'")
        try:
            seconds = float(m.group(1)) * _SECONDS[m.group(2)]
        except ValueError:
            raise ExpressionError(f"'{value}' is not a duration; write e.g. '12.5 min'") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ExpressionError(f"duration '{value}' must be a finite number of seconds >= 0")
    return seconds
