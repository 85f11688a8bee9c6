"""Procedures: what to do on the instruments for one experiment, described as typed steps (no hardware).

A campaign binds its conditions to steps in one of two ways:

- a declarative list in the file, each step one of::

      - hotplate.set_temperature: "{anneal_temp_c}"        # a scalar goes to the action's first argument
      - pump_a.dispense: {volume_ul: "{v_a_ul}", rate_ul_min: 500}
      - wait: "{anneal_time_min} min"
      - spectrometer.measure: {integration_ms: 100}
        as: pl                                            # label of the reading, for the analysis
      - spectrometer.measure                              # no arguments

- or ``function: "package.module:function"``, called as ``function(conditions) -> list[Step]``.

:meth:`Procedure.steps` turns an experiment's conditions into :class:`Action` and :class:`Wait` objects;
the executor acts on them. Tests inspect the steps with no instrument at all.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.errors import UserInputError
from orchestrator.expressions import ExpressionError, Template, duration_s


@dataclass(frozen=True)
class Action:
    """Call ``action`` on ``instrument`` with ``kwargs``; store what it returns under ``label``.

    Attributes:
        instrument: the instrument's name in the campaign file.
        action: one of the driver's ``ACTIONS``.
        kwargs: keyword arguments, already computed from the conditions.
        label: the name of the returned reading (a spectrum, an I–V curve); defaults to the instrument's name.
    """

    instrument: str
    action: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    label: str | None = None

    def __str__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{self.instrument}.{self.action}({args})"


@dataclass(frozen=True)
class Wait:
    """Wait ``seconds`` on the lab's clock (an anneal, a settling time)."""

    seconds: float

    def __str__(self) -> str:
        return f"wait({self.seconds:g} s)"


Step = Action | Wait


class ProcedureError(UserInputError):
    """A procedure that cannot be built or run; ``where`` names the step (e.g. ``procedure.steps[3]``)."""

    def __init__(self, where: str, message: str):
        self.where = where
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class _StepTemplate:
    where: str
    instrument: str  # "" for a wait
    action: str
    args: Template | Mapping[str, Template] | None  # scalar, keywords, or none
    label: str | None


class Procedure:
    """Turns an experiment's conditions into steps.

    Args:
        steps: the file's ``procedure.steps`` list (see the module docstring), or None.
        function: the file's ``procedure.function`` (``package.module:function``), or None.
        arg_names: instrument → action → its keyword names (from the drivers), to map scalar arguments
            and to check keyword names when the file is loaded.
    """

    def __init__(
        self,
        *,
        steps: Sequence[Any] | None = None,
        function: str | None = None,
        arg_names: Callable[[str, str], list[str]] | None = None,
    ):
        if (steps is None) == (function is None):
            raise ProcedureError("procedure", "give exactly one of 'steps' (a list) or 'function' (package.module:function)")
        self._arg_names = arg_names
        self._templates = [self._parse_step(i, s) for i, s in enumerate(steps)] if steps is not None else []
        self._function = _import_function(function) if function is not None else None
        if steps is not None and not self._templates:
            raise ProcedureError("procedure.steps", "the list is empty; add the steps of one experiment")

    @property
    def parameter_names(self) -> frozenset[str]:
        """Parameter names the templates read (empty for a Python procedure)."""
        out: set[str] = set()
        for t in self._templates:
            if isinstance(t.args, Template):
                out |= t.args.names
            elif isinstance(t.args, Mapping):
                for a in t.args.values():
                    out |= a.names
        return frozenset(out)

    def steps(self, conditions: Mapping[str, Any]) -> list[Step]:
        """The steps of one experiment.

        Raises:
            ProcedureError: a template that cannot be evaluated, or a Python procedure that returned something
                other than a list of steps.
        """
        if self._function is not None:
            steps = self._function(dict(conditions))
            if not isinstance(steps, (list, tuple)) or not all(isinstance(s, (Action, Wait)) for s in steps):
                raise ProcedureError(
                    "procedure.function", "must return a list of orchestrator.procedures.Action / Wait objects"
                )
            return list(steps)
        return [self._render(t, conditions) for t in self._templates]

    # --- parsing the file's list ---------------------------------------------------------------------
    def _parse_step(self, i: int, raw: Any) -> _StepTemplate:
        where = f"procedure.steps[{i}]"
        label = None
        if isinstance(raw, str):
            key, value = raw, None
        elif isinstance(raw, Mapping):
            rest = {k: v for k, v in raw.items() if k != "as"}
            label = raw.get("as")
            if len(rest) != 1 or (label is not None and not isinstance(label, str)):
                raise ProcedureError(where, "a step is one 'instrument.action: arguments' entry (plus an optional 'as: label')")
            key, value = next(iter(rest.items()))
        else:
            raise ProcedureError(where, f"a step is 'instrument.action' or a mapping, not {type(raw).__name__}")
        try:
            if key == "wait":
                if value is None:
                    raise ProcedureError(where, "wait needs a duration, e.g. wait: '{anneal_time_min} min'")
                return _StepTemplate(where, "", "wait", Template.parse(value), None)
            instrument, dot, action = str(key).partition(".")
            if not dot or not instrument or not action:
                raise ProcedureError(where, f"'{key}' is not of the form instrument.action (or wait)")
            if isinstance(value, Mapping):
                args: Template | Mapping[str, Template] | None = {str(k): Template.parse(v) for k, v in value.items()}
            elif value is None:
                args = None
            else:
                args = Template.parse(value)
        except ExpressionError as exc:
            raise ProcedureError(where, str(exc)) from None
        return _StepTemplate(where, instrument, action, args, label)

    def _render(self, t: _StepTemplate, conditions: Mapping[str, Any]) -> Step:
        try:
            if t.action == "wait" and not t.instrument:
                assert isinstance(t.args, Template)
                return Wait(duration_s(t.args.render(conditions)))
            if t.args is None:
                kwargs: dict[str, Any] = {}
            elif isinstance(t.args, Template):
                names = self._arg_names(t.instrument, t.action) if self._arg_names else []
                if not names:
                    raise ProcedureError(t.where, f"{t.instrument}.{t.action} takes no arguments")
                kwargs = {names[0]: t.args.render(conditions)}
            else:
                kwargs = {k: v.render(conditions) for k, v in t.args.items()}
        except ExpressionError as exc:
            raise ProcedureError(t.where, str(exc)) from None
        return Action(t.instrument, t.action, kwargs, t.label)

    def templates(self) -> list[tuple[str, str, str]]:
        """(where, instrument, action) of every declared step that acts on an instrument."""
        return [(t.where, t.instrument, t.action) for t in self._templates if t.instrument]


def _import_function(target: str) -> Callable[[dict[str, Any]], list[Step]]:
    module_name, colon, func_name = target.partition(":")
    if not colon or not module_name or not func_name:
        raise ProcedureError("procedure.function", f"'{target}' is not of the form package.module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ProcedureError("procedure.function", f"cannot import '{module_name}' ({exc}); is it on PYTHONPATH?") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ProcedureError("procedure.function", f"'{module_name}' has no function '{func_name}'")
    return func
