"""Parameter models of campaign files: the knobs of a synthesis and the values each may take."""

from __future__ import annotations

import math
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
# Far beyond any physical knob, small enough that (high - low) stays finite and well conditioned.
MAX_ABS_BOUND = 1e12


class Strict(BaseModel):
    """Base of every campaign-file model: frozen, and unknown keys are errors (a typo is never ignored); numbers
    must be finite (no .nan or .inf) and are never true/false."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_for_number(cls, data: Any) -> Any:
        # pydantic would read `true` as 1 where a number is expected; in a file that is a slip, not a number.
        if isinstance(data, dict):
            for key, value in data.items():
                field = cls.model_fields.get(key)
                if field is None:
                    continue
                if isinstance(value, bool) and _takes_number(field.annotation):
                    raise ValueError(f"{key}: {str(value).lower()} is a yes/no value; write a number")
                if isinstance(value, (list, tuple)) and _takes_numbers(field.annotation):
                    for i, item in enumerate(value):
                        if isinstance(item, bool):
                            raise ValueError(f"{key}[{i}]: {str(item).lower()} is a yes/no value; write a number")
        return data


def _kinds(annotation: Any) -> set[Any]:
    """The types an annotation admits, looking through Optional/Union and Annotated."""
    args = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else (annotation,)
    return {get_args(a)[0] if get_origin(a) is Annotated else a for a in args}


def _takes_number(annotation: Any) -> bool:
    """Whether a field holds a plain int or float (optional or constrained), and not a bool."""
    kinds = _kinds(annotation)
    return bool not in kinds and bool(kinds & {int, float})


def _takes_numbers(annotation: Any) -> bool:
    """Whether a field holds a list (or tuple) of numbers, such as a discrete parameter's values."""
    return any(
        get_origin(kind) in (list, tuple) and any(_takes_number(arg) for arg in get_args(kind) if arg is not Ellipsis)
        for kind in _kinds(annotation)
    )


_Strict = Strict


class ContinuousParameter(_Strict):
    """A real-valued knob within ``[low, high]`` (e.g. ``anneal_temp_c``)."""

    type: Literal["continuous"] = "continuous"
    name: Annotated[str, Field(pattern=NAME_PATTERN, description="Identifier used in procedures and outputs.")]
    low: float
    high: float
    unit: str | None = Field(None, description="Unit of the value, e.g. degC, min, mol/L.")
    log_scale: bool = Field(False, description="Search in log space (for knobs spanning decades).")
    description: str = ""

    @model_validator(mode="after")
    def _check_bounds(self) -> "ContinuousParameter":
        _check_bound_pair(self.low, self.high)
        if self.log_scale and self.low <= 0:
            raise ValueError(f"log_scale needs low > 0, got low={self.low}; set log_scale: false or raise low")
        return self


class IntegerParameter(_Strict):
    """A whole-number knob within ``[low, high]`` inclusive (e.g. number of spin-coating layers)."""

    type: Literal["integer"]
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    low: int
    high: int
    unit: str | None = None
    description: str = ""

    @model_validator(mode="after")
    def _check_bounds(self) -> "IntegerParameter":
        _check_bound_pair(self.low, self.high)
        return self


class DiscreteParameter(_Strict):
    """A numeric knob that takes only listed values (a hotplate set in 5 °C steps, stock concentrations).

    Give ``values`` (a list), or ``low``, ``high`` and ``step``, which the file loader turns into the list.
    """

    type: Literal["discrete"]
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    values: Annotated[list[float], Field(min_length=2, max_length=10_000)]
    unit: str | None = None
    description: str = ""

    @model_validator(mode="before")
    @classmethod
    def _from_step(cls, data: Any) -> Any:
        if isinstance(data, dict) and "step" in data and "values" not in data:
            data = dict(data)
            low, high, step = data.pop("low", None), data.pop("high", None), data.pop("step")
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high, step)):
                raise ValueError("give low, high and step as numbers (e.g. low: 80, high: 200, step: 5), or values: [...]")
            if any(abs(v) > MAX_ABS_BOUND for v in (low, high, step)):  # before float arithmetic on a huge int
                raise ValueError(f"low, high and step must lie within ±{MAX_ABS_BOUND:g}")
            if not (math.isfinite(low) and math.isfinite(high) and math.isfinite(step)) or step <= 0 or low >= high:
                raise ValueError(f"need low < high and step > 0, got low={low}, high={high}, step={step}")
            n = (high - low) / step
            if n > 10_000 or abs(n - round(n)) > 1e-9 * max(1.0, n):
                raise ValueError(f"(high - low) / step = {n:g} must be a whole number of at most 10000 steps")
            data["values"] = [round(low + i * step, 12) for i in range(int(round(n)) + 1)]
        return data

    @field_validator("values")
    @classmethod
    def _sorted_unique(cls, values: list[float]) -> list[float]:
        for v in values:
            if not math.isfinite(v) or abs(v) > MAX_ABS_BOUND:
                raise ValueError(f"value {v} is not usable; use finite numbers within ±{MAX_ABS_BOUND:g}")
        if len(set(values)) != len(values):
            raise ValueError("values must be unique")
        return sorted(values)

    @property
    def low(self) -> float:
        return self.values[0]

    @property
    def high(self) -> float:
        return self.values[-1]


class CategoricalParameter(_Strict):
    """A choice among named options (e.g. the antisolvent).

    ``descriptors`` optionally gives numbers per choice (boiling point, dielectric constant …); the
    surrogate then models the choice through them, so what it learns about one solvent carries over to
    similar ones.
    """

    type: Literal["categorical"]
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    choices: Annotated[list[str], Field(min_length=2)]
    descriptors: dict[str, dict[str, float]] | None = Field(
        None, description="choice → {descriptor: number}; every choice needs the same descriptors."
    )
    description: str = ""

    @field_validator("choices")
    @classmethod
    def _unique(cls, choices: list[str]) -> list[str]:
        dupes = sorted({c for c in choices if choices.count(c) > 1})
        if dupes:
            raise ValueError(f"choices must be unique; repeated: {', '.join(dupes)}")
        return choices

    @model_validator(mode="after")
    def _descriptors_cover_choices(self) -> "CategoricalParameter":
        if self.descriptors is None:
            return self
        missing = [c for c in self.choices if c not in self.descriptors]
        extra = [c for c in self.descriptors if c not in self.choices]
        if missing or extra:
            raise ValueError(
                "descriptors must list exactly the choices"
                + (f"; missing: {', '.join(missing)}" if missing else "")
                + (f"; not a choice: {', '.join(extra)}" if extra else "")
            )
        names = {tuple(sorted(d)) for d in self.descriptors.values()}
        if len(names) != 1 or not next(iter(names)):
            raise ValueError("every choice needs the same, non-empty set of descriptors")
        for choice, table in self.descriptors.items():
            for key, value in table.items():
                if not math.isfinite(value):
                    raise ValueError(f"descriptor {key} of {choice} is {value}; use finite numbers")
        return self

    def descriptor_table(self) -> list[list[float]]:
        """``k x p`` numbers, choices in order, descriptors in sorted name order."""
        assert self.descriptors is not None
        keys = sorted(next(iter(self.descriptors.values())))
        return [[float(self.descriptors[c][k]) for k in keys] for c in self.choices]


Parameter = Annotated[
    Union[ContinuousParameter, IntegerParameter, DiscreteParameter, CategoricalParameter], Field(discriminator="type")
]


def _check_bound_pair(low: float, high: float) -> None:
    for label, value in (("low", low), ("high", high)):
        if abs(value) > MAX_ABS_BOUND or not math.isfinite(value):  # abs first: isfinite(10**400) overflows
            raise ValueError(f"{label}={value} is not a usable bound; use a finite number within ±{MAX_ABS_BOUND:g}")
    if not low < high:
        raise ValueError(f"low ({low}) must be below high ({high}); swap them or widen the range")
