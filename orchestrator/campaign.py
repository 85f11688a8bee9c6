"""Campaign files: the pydantic models a campaign YAML is validated into, and the loader.

A campaign names the knobs of a synthesis (``parameters``), what the characterization measures
(``outcomes``), what to optimize (``objectives``), the ``budget``, a ``seed`` and the backend it runs
against (``simulator`` now; ``instruments`` arrives with the instrument layer). Every model is frozen
and forbids unknown keys, so a typo is an error rather than a silently ignored setting.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, ValidationError, model_validator

from orchestrator.errors import CampaignFileError
from orchestrator.lab_config import AnalysisSpec, InstrumentSpec, ProcedureSpec, StationSpec
from orchestrator.priors import PriorSource, campaign_prior_problems
from orchestrator.parameters import (  # noqa: F401 - re-exported: campaign files are built from these
    Strict,
    MAX_ABS_BOUND,
    NAME_PATTERN,
    CategoricalParameter,
    ContinuousParameter,
    DiscreteParameter,
    IntegerParameter,
    Parameter,
)

CAMPAIGN_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


_Strict = Strict


class Outcome(_Strict):
    """A number the characterization measures for every successful experiment."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    unit: str | None = None
    description: str = ""


class Objective(_Strict):
    """What to do with one outcome: maximize it, minimize it, or bring it to ``target`` (± ``tolerance``).

    With several objectives the loop maximizes ``sum(weight * score / scale)``, where score is the
    outcome (maximize), its negative (minimize) or ``-|outcome - target|`` (target; scale = tolerance).
    """

    outcome: str
    goal: Literal["maximize", "minimize", "target"]
    target: float | None = None
    tolerance: Annotated[float | None, Field(gt=0)] = None
    weight: Annotated[float, Field(gt=0)] = 1.0
    scale: Annotated[float | None, Field(gt=0, description="Typical spread of the outcome, for weighting.")] = None
    reference: float | None = Field(
        None,
        description="Pareto mode: the worst value of the outcome still worth anything (hypervolume reference); "
        "inferred from the data when absent.",
    )

    @model_validator(mode="after")
    def _target_fields(self) -> "Objective":
        if self.goal == "target":
            if self.target is None or self.tolerance is None:
                raise ValueError("goal 'target' needs both 'target' and 'tolerance' (e.g. target: 1.68, tolerance: 0.02)")
            if not math.isfinite(self.target):
                raise ValueError("target must be a finite number")
        elif self.target is not None or self.tolerance is not None:
            raise ValueError(f"'target' and 'tolerance' apply only to goal 'target', not '{self.goal}'")
        return self


class OutcomeConstraint(_Strict):
    """A bound a measured outcome must meet for an experiment to count ("film coverage >= 0.9").

    The outcome is modelled; the acquisition weights each candidate by its probability of meeting the bound.
    """

    outcome: str
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _a_bound(self) -> "OutcomeConstraint":
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both (e.g. {outcome: coverage, min: 0.9})")
        if self.min is not None and self.max is not None and not self.min < self.max:
            raise ValueError(f"min ({self.min}) must be below max ({self.max})")
        return self

    def holds(self, value: float) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


class Composition(_Strict):
    """Continuous parameters that are fractions of one whole: they sum to ``total`` (a simplex).

    Each component's own ``low``/``high`` bound it; proposals lie on the simplex exactly.
    """

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    components: Annotated[list[str], Field(min_length=2)]
    total: Annotated[float, Field(gt=0)] = 1.0


class Budget(_Strict):
    """How many experiments the campaign may use and how they are grouped."""

    max_experiments: Annotated[int, Field(ge=1, le=100_000)]
    batch_size: Annotated[int, Field(ge=1, le=64)] = 1
    asynchronous: bool = Field(
        False,
        description="Propose for each instrument slot as soon as it frees up (running experiments as pending "
        "points), instead of waiting for the whole batch.",
    )
    initial_experiments: Annotated[
        int | None, Field(
            ge=1,
            description="Size of the Sobol design before the GP takes over (default: 5, or 4 with three "
            "parameters or fewer, rounded down to whole batches, at least one).",
        )
    ] = None


class SimulatorSpec(_Strict):
    """The simulated lab: a built-in model, a ``package.module:function`` of the user's, or a recorded dataset."""

    model: str | None = Field(
        None, description="Built-in model name (e.g. perovskite_film) or 'package.module:function' returning a simulator."
    )
    dataset: str | None = Field(None, description="A dataset under simulators/data (e.g. suzuki) or a folder path.")
    mode: Literal["auto", "emulator", "lookup"] = "auto"
    options: dict[str, Any] = Field(default_factory=dict, description="Keyword options passed to the model.")
    sample_model: str | None = Field(
        None,
        description="With instruments and --simulate: 'package.module:function' turning what the simulated "
        "instruments did to a sample into the model's conditions (e.g. simulators.perovskite_lab:film_conditions).",
    )

    @model_validator(mode="after")
    def _one_source(self) -> "SimulatorSpec":
        if (self.model is None) == (self.dataset is None):
            raise ValueError("give exactly one of 'model' (e.g. model: perovskite_film) or 'dataset' (e.g. dataset: suzuki)")
        if self.model is not None and ":" in self.model:
            module, _, func = self.model.partition(":")
            if not re.fullmatch(r"[A-Za-z_][\w.]*", module) or not re.fullmatch(r"[A-Za-z_]\w*", func):
                raise ValueError(f"model '{self.model}' is not of the form 'package.module:function'")
        if self.sample_model is not None and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", self.sample_model):
            raise ValueError(f"sample_model '{self.sample_model}' is not of the form 'package.module:function'")
        return self


class OptimizerSettings(_Strict):
    """Knobs of the proposer; the defaults suit campaigns of up to a few hundred experiments."""

    acquisition: Literal["qLogNEI", "qLogEI"] = "qLogNEI"
    multi_objective: Literal["weighted", "pareto"] = Field(
        "weighted",
        description="With several objectives: 'weighted' maximizes their weighted sum; 'pareto' searches the "
        "trade-off front (qLogNEHVI).",
    )
    num_restarts: Annotated[int, Field(ge=1, le=64)] = 6
    raw_samples: Annotated[int, Field(ge=16, le=8192)] = 256
    mc_samples: Annotated[int, Field(ge=16, le=4096)] = 128


class Campaign(_Strict):
    """A whole campaign file."""

    name: Annotated[str, Field(pattern=CAMPAIGN_NAME_PATTERN, max_length=100)]
    description: str = ""
    parameters: Annotated[list[Parameter], Field(min_length=1, max_length=100)]
    outcomes: Annotated[list[Outcome], Field(min_length=1, max_length=50)]
    objectives: Annotated[list[Objective], Field(min_length=1)]
    outcome_constraints: list[OutcomeConstraint] = Field(default_factory=list)
    compositions: list[Composition] = Field(default_factory=list)
    constraints: list[str] = Field(
        default_factory=list, description="Linear constraints between parameters, e.g. '0.2*cs_frac + br_frac <= 0.6'."
    )
    budget: Budget
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0
    optimizer: OptimizerSettings = OptimizerSettings()
    simulator: SimulatorSpec | None = None
    instruments: dict[str, InstrumentSpec] | None = Field(
        None, description="The lab's instruments by name; with them the campaign runs on hardware (or --simulate)."
    )
    stations: dict[str, StationSpec] | None = Field(
        None,
        description="Instruments spread over several lab PCs: station name → its Prefect work pool. Each step runs "
        "on the PC that owns its instrument; the proposing stays where the campaign runs.",
    )
    procedure: ProcedureSpec | None = Field(None, description="The steps of one experiment on the instruments.")
    analysis: list[AnalysisSpec] = Field(default_factory=list, description="Raw readings → outcomes.")
    priors: list[PriorSource] = Field(
        default_factory=list, description="Calculated data (e.g. DFT band gaps) that inform a measured outcome."
    )
    approval: Literal["none", "required"] = Field(
        "none",
        description="'required': each batch waits in the Prefect UI for a person to approve, edit or reject it "
        "before anything is sent (needs Prefect; `run --no-prefect` refuses such a campaign).",
    )
    approval_timeout_h: Annotated[float, Field(gt=0, le=24 * 30)] = Field(
        24.0, description="How long a batch waits for a decision before the run stops (the batch stays proposed)."
    )
    # The campaign file's folder: prior files are read relative to it. Set by ``load_campaign``.
    _source_dir: Path = PrivateAttr(default_factory=Path.cwd)

    @property
    def source_dir(self) -> Path:
        """The folder relative paths in the campaign (prior files) are read from."""
        return self._source_dir

    @model_validator(mode="after")
    def _cross_checks(self) -> "Campaign":
        problems = campaign_problems(self)
        if problems:
            raise CrossFieldError(problems)
        return self

    @property
    def initial_experiments(self) -> int:
        """Size of the space-filling design: the budget's value, or else 5 points (4 with three parameters or
        fewer), within the budget. Few points suffice for a GP with a length scale per parameter; every
        experiment the design does not spend is one the model can aim. It was one more than the number of
        parameters: on six (``benchmarks/peers.py``, sequential, budget 30, seeds 0-29) a design of 5 instead
        of 7 doubled the Hartmann-6 runs reaching 95 % of the optimum in 30 experiments (16 against 8) and
        left the perovskite simulator level (12 against 12).

        With batches (or several slots) the default is rounded down to whole batches, at least one: a design
        that spilled over into a second batch would fill all of it with design points (7 of 30 experiments on
        six parameters would become 8). Measured with ``benchmarks/peers.py`` at q = 4 (10 seeds, budget 30):
        median experiments to 95 % 11 instead of 13 on suzuki and 12 instead of 17 on photo_pce10, and a
        better best value on Hartmann-6.
        """
        n = self.budget.initial_experiments
        if n is None:
            n, q = (4 if len(self.parameters) <= 3 else 5), self.budget.batch_size
            n = max(q, n - n % q)
        return min(n, self.budget.max_experiments)

    def space_fingerprint(self) -> str:
        """A hash of what makes recorded experiments comparable: parameters and outcomes."""
        payload = json.dumps(
            {"parameters": [p.model_dump() for p in self.parameters], "outcomes": [o.name for o in self.outcomes]},
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


class CrossFieldError(ValueError):
    """Problems that involve several fields; each carries its own field path."""

    def __init__(self, problems: list[tuple[tuple[str | int, ...], str]]):
        self.problems = problems
        super().__init__("; ".join(f"{_dotted(loc)}: {msg}" for loc, msg in problems))


def campaign_problems(c: Campaign) -> list[tuple[tuple[str | int, ...], str]]:
    """Checks that span fields (names, references, budget); returns (field path, message) pairs."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    seen: dict[str, str] = {}
    for i, p in enumerate(c.parameters):
        if p.name in seen:
            problems.append((("parameters", i, "name"), f"'{p.name}' is already used by {seen[p.name]}; names must be unique"))
        seen.setdefault(p.name, f"parameters[{i}]")
    for i, o in enumerate(c.outcomes):
        if o.name in seen:
            problems.append((("outcomes", i, "name"), f"'{o.name}' is already used by {seen[o.name]}; names must be unique"))
        seen.setdefault(o.name, f"outcomes[{i}]")
    outcome_names = [o.name for o in c.outcomes]
    used: set[str] = set()
    for i, obj in enumerate(c.objectives):
        if obj.outcome not in outcome_names:
            problems.append(
                (("objectives", i, "outcome"), f"'{obj.outcome}' is not an outcome; choose one of: {', '.join(outcome_names)}")
            )
        elif obj.outcome in used:
            problems.append((("objectives", i, "outcome"), f"'{obj.outcome}' already has an objective; give one per outcome"))
        used.add(obj.outcome)
    for i, oc in enumerate(c.outcome_constraints):
        if oc.outcome not in outcome_names:
            problems.append(
                (("outcome_constraints", i, "outcome"), f"'{oc.outcome}' is not an outcome; choose one of: {', '.join(outcome_names)}")
            )
    if c.optimizer.multi_objective == "pareto" and len(c.objectives) < 2:
        problems.append((("optimizer", "multi_objective"), "'pareto' needs at least two objectives"))
    problems.extend(campaign_prior_problems(c.priors, c.parameters, c.outcomes))
    problems.extend(_transfer_problems(c))
    if c.compositions or c.constraints:
        from orchestrator.constraints import constraint_problems  # local: keeps this module about the models

        problems.extend(constraint_problems(c))
    b = c.budget
    if b.initial_experiments is not None and b.initial_experiments > b.max_experiments:
        problems.append(
            (("budget", "initial_experiments"), f"{b.initial_experiments} exceeds max_experiments ({b.max_experiments})")
        )
    if b.batch_size > b.max_experiments:
        problems.append((("budget", "batch_size"), f"{b.batch_size} exceeds max_experiments ({b.max_experiments})"))
    if c.simulator is None and c.instruments is None:
        problems.append(((), "no backend: add a 'simulator:' section (e.g. simulator: {model: perovskite_film})"))
    if c.instruments is None and c.stations is not None:
        problems.append((("stations",), "stations hold instruments; add an 'instruments:' section or remove 'stations:'"))
    if c.instruments is None and (c.procedure is not None or c.analysis):
        problems.append((("procedure",), "'procedure' and 'analysis' need an 'instruments:' section to run on"))
    if c.instruments is not None:
        for name in c.instruments:
            if not re.fullmatch(NAME_PATTERN, name) or name == "wait":
                problems.append((("instruments", name), f"'{name}' is not a valid instrument name; use letters, digits, _"))
        if not c.instruments:
            problems.append((("instruments",), "the section is empty; name at least one instrument"))
        if c.stations is not None or any(i.station is not None for i in c.instruments.values()):
            from orchestrator.stations import station_problems

            problems.extend(station_problems(c))
        if not problems:
            from orchestrator.hardware import lab_problems  # local: only campaigns with instruments load the drivers

            problems.extend(lab_problems(c))
    return problems


def _transfer_problems(c: Campaign) -> list[tuple[tuple[str | int, ...], str]]:
    """One prior per outcome; ``multitask`` only where the calculations cover every parameter."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    informed: dict[str, int] = {}
    names = {p.name for p in c.parameters}
    for i, src in enumerate(c.priors):
        if src.outcome in informed:
            problems.append((("priors", i, "outcome"), f"'{src.outcome}' already has a prior (priors[{informed[src.outcome]}]); "
                             "give one prior per outcome (merge the files)"))
        informed.setdefault(src.outcome, i)
        missing = sorted(names - set(src.mapped_parameters()))
        if src.method == "multitask" and missing:
            problems.append((("priors", i, "method"), f"'multitask' needs calculated values over every parameter; "
                             f"the file does not cover {', '.join(missing)}; use 'prior_mean' or 'auto'"))
    return problems


def _dotted(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def load_campaign(path: str | Path) -> Campaign:
    """Reads and validates a campaign file.

    Raises:
        CampaignFileError: with one line per problem, each naming the field path and YAML line.
    """
    from orchestrator.yaml_source import YamlSource  # local: keeps this module about the models

    path = Path(path)
    source = YamlSource.read(path)
    try:
        campaign = Campaign.model_validate(source.data)
        campaign._source_dir = path.resolve().parent
        return campaign
    except ValidationError as exc:
        raise CampaignFileError(str(path), describe_validation_error(exc, source)) from None


def describe_validation_error(exc: ValidationError, source: Any) -> list[str]:
    """Turns a pydantic error into lines like ``line 12: objectives[0].outcome: 'x' is not an outcome …``."""
    lines: list[str] = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p in _UNION_TAGS))
        inner = (err.get("ctx") or {}).get("error")
        if isinstance(inner, CrossFieldError):
            for sub_loc, msg in inner.problems:
                full = loc + sub_loc
                lines.append(f"{source.where(full)}{_dotted(full)}: {msg}")
            continue
        lines.append(f"{source.where(loc)}{_dotted(loc)}: {_friendly(err)}")
    return lines


_UNION_TAGS = {"continuous", "integer", "discrete", "categorical"}


def _friendly(err: dict[str, Any]) -> str:
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        return "unknown key; remove it or check its spelling (see `orchestrator schema`)"
    if kind == "missing":
        return "required field is missing"
    if kind == "union_tag_invalid":
        tag = (err.get("ctx") or {}).get("tag")
        return f"unknown parameter type {tag!r}; use continuous, integer, discrete or categorical"
    if kind == "union_tag_not_found":
        return "parameter needs 'type': continuous, integer, discrete or categorical"
    if kind == "string_pattern_mismatch":
        return f"{err.get('input')!r} is not a valid name; use letters, digits and underscores, not starting with a digit"
    return msg.removeprefix("Value error, ")


def campaign_json_schema() -> dict[str, Any]:
    """The JSON Schema of campaign files, for editor completion."""
    schema = Campaign.model_json_schema()
    schema["title"] = "Campaign"
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
