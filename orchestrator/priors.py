"""Prior data: files of calculated results (DFT band gaps …) that inform a measured outcome.

A campaign's ``priors:`` list names such files; each entry is a :class:`PriorSource`::

    priors:
      - name: pbe_gaps                 # label in the ledger and reports
        file: data/pbe_gaps.csv        # relative to the campaign file's folder; .csv, .parquet or .json
        outcome: band_gap_ev           # the measured outcome it informs
        property: gap_pbe_ev           # the file's column holding the calculated value
        unit: eV                       # optional; must match the outcome's unit (eV <-> meV converted)
        columns: {cs_frac: cs, br_frac: br}       # campaign parameter -> file column
        formula:                                  # or read composition parameters from a formula column
          column: formula
          fractions: {cs_frac: {species: Cs, of: [Cs, FA]}, br_frac: {species: Br, of: [I, Br]}}
        method: auto                   # auto | prior_mean | multitask | none

The model validates on its own; :func:`prior_problems` checks it against the campaign's parameters and
outcomes, and :func:`load_prior` reads the file into :class:`PriorData` (one row per calculation, values in the
campaign's terms). Every problem with the file is reported with the file and the 1-based data row.
"""

from __future__ import annotations

import csv
import difflib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from orchestrator.errors import UserInputError
from orchestrator.formula import ELEMENTS, ORGANIC_CATIONS, FormulaError, parse_formula, site_fractions
from orchestrator.parameters import NAME_PATTERN, Strict

__all__ = [
    "FORMATS",
    "FormulaColumn",
    "PriorData",
    "PriorFileError",
    "PriorSource",
    "SiteFraction",
    "campaign_prior_problems",
    "check_prior_against",
    "load_prior",
    "prior_problems",
    "unit_factor",
]

FORMATS = (".csv", ".parquet", ".json")
# Units the loader converts between, as (dimension, size in that dimension's base unit). Only linear,
# offset-free conversions belong here; nm <-> eV (E = hc / lambda) is not one.
UNITS: dict[str, tuple[str, float]] = {"eV": ("energy", 1.0), "meV": ("energy", 1e-3)}
# Enough row problems to see the pattern (a shifted column, a different composition box) without a wall of text.
MAX_ROW_PROBLEMS = 10
# Calculated compositions sit on a bound up to float round-off; relative to the parameter's span.
BOUND_RTOL = 1e-9

Loc = tuple[str | int, ...]


_Strict = Strict


class PriorFileError(UserInputError):
    """A prior data file is missing, unreadable, or holds rows the campaign cannot use.

    Attributes:
        path: the file.
        problems: one line per problem; row problems start with ``row N`` (1-based data row, header excluded).
    """

    def __init__(self, path: str | Path, problems: Sequence[str], prior: str | None = None, hint: str = ""):
        self.path = Path(path)
        self.problems = list(problems)
        head = f"{path}" + (f" (prior {prior!r})" if prior else "")
        if len(self.problems) == 1:
            message = f"{head}: {self.problems[0]}"
        else:
            message = f"{head}: {len(self.problems)} problems\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message + (f"\n  {hint}" if hint else ""))


class SiteFraction(_Strict):
    """One composition parameter read from a formula: the share of ``species`` among the species ``of``."""

    species: str
    of: Annotated[list[str], Field(min_length=2, description="The species sharing the site, e.g. [I, Br].")]

    @model_validator(mode="after")
    def _species_in_group(self) -> "SiteFraction":
        if len(set(self.of)) != len(self.of):
            raise ValueError(f"'of' lists a species twice: {self.of}")
        if self.species not in self.of:
            raise ValueError(f"species {self.species!r} must be one of 'of' ({', '.join(self.of)}); add it there")
        return self


class FormulaColumn(_Strict):
    """A column of chemical formulas (``Cs0.2FA0.8Pb(I0.7Br0.3)3``) and the site fractions to read from it."""

    column: Annotated[str, Field(min_length=1)]
    fractions: Annotated[dict[str, SiteFraction], Field(min_length=1, description="parameter -> site fraction")]
    species: list[Annotated[str, Field(pattern=r"^[A-Z][A-Za-z]*$")]] = Field(
        default_factory=list,
        description="Extra species names the formulas use besides elements and FA, MA, GA, EA, PA, BA, DMA, TMA, PEA.",
    )

    @model_validator(mode="after")
    def _known_species(self) -> "FormulaColumn":
        known = ELEMENTS | set(ORGANIC_CATIONS) | set(self.species)
        for param, fraction in self.fractions.items():
            unknown = [s for s in fraction.of if s not in known]
            if unknown:
                raise ValueError(
                    f"fractions.{param}: {', '.join(map(repr, unknown))} is neither an element symbol nor a cation "
                    f"abbreviation ({', '.join(ORGANIC_CATIONS)}); check the spelling (symbols are case-sensitive) "
                    "or list it under formula.species"
                )
        return self


class PriorSource(_Strict):
    """One entry of a campaign's ``priors:`` list: a file of calculated values for one outcome."""

    name: Annotated[str, Field(pattern=NAME_PATTERN, description="Label used in the ledger and reports.")]
    file: Annotated[str, Field(min_length=1, description="Path relative to the campaign file's folder.")]
    outcome: Annotated[str, Field(description="The measured outcome the calculated values inform.")]
    property: Annotated[str, Field(min_length=1, description="The file's column holding the calculated value.")]
    unit: str | None = Field(None, description="Unit of `property`; must match the outcome's (eV <-> meV converted).")
    columns: dict[str, Annotated[str, Field(min_length=1)]] = Field(
        default_factory=dict, description="Campaign parameter -> file column."
    )
    formula: FormulaColumn | None = None
    method: Literal["auto", "prior_mean", "multitask", "none"] = Field(
        "auto",
        description="How the surrogate uses the data: prior_mean (the calculation as the GP's mean), multitask "
        "(a correlated task), none (load and check only), or auto.",
    )
    description: str = ""

    @field_validator("file")
    @classmethod
    def _known_format(cls, file: str) -> str:
        if Path(file).suffix.lower() not in FORMATS:
            raise ValueError(f"{file!r} has an unknown format; use a {', '.join(FORMATS[:-1])} or {FORMATS[-1]} file")
        return file

    @model_validator(mode="after")
    def _maps_something_once(self) -> "PriorSource":
        from_formula = set(self.formula.fractions) if self.formula else set()
        if not self.columns and not from_formula:
            raise ValueError(
                "map at least one parameter to the file: columns: {cs_frac: cs} or "
                "formula: {column: formula, fractions: {cs_frac: {species: Cs, of: [Cs, FA]}}}"
            )
        twice = [p for p in self.columns if p in from_formula]
        if twice:
            raise ValueError(
                f"{', '.join(map(repr, twice))} mapped twice, in columns and in formula.fractions; keep one"
            )
        return self

    def mapped_parameters(self) -> list[str]:
        """Parameter names the file provides, columns first, then formula fractions."""
        return [*self.columns, *(self.formula.fractions if self.formula else {})]


@dataclass(frozen=True, eq=False)  # eq would compare numpy arrays, whose truth value is ambiguous
class PriorData:
    """A loaded prior file, in the campaign's terms.

    Attributes:
        name: the source's label.
        outcome: the measured outcome it informs.
        method: ``auto``, ``prior_mean``, ``multitask`` or ``none``, as the source says.
        parameters: the campaign parameters the file covers, in campaign order.
        rows: per data row, parameter name -> value (float, or the choice string for categoricals); ``n`` rows.
        y: ``n`` calculated values in the outcome's unit (read-only).
        file: the resolved path.
    """

    name: str
    outcome: str
    method: str
    parameters: tuple[str, ...]
    rows: list[dict[str, float | str]]
    y: np.ndarray
    file: Path

    def __len__(self) -> int:
        return len(self.rows)


def unit_factor(from_unit: str, to_unit: str) -> float | None:
    """Multiplier taking values in ``from_unit`` to ``to_unit``, or None if they are not convertible."""
    if from_unit == to_unit:
        return 1.0
    a, b = UNITS.get(from_unit), UNITS.get(to_unit)
    if a is None or b is None or a[0] != b[0]:
        return None
    return a[1] / b[1]


def prior_problems(source: PriorSource, parameters: Sequence[Any], outcomes: Sequence[Any]) -> list[tuple[Loc, str]]:
    """Checks a source against the campaign; returns (field path within the source, message) pairs.

    Args:
        source: one ``priors:`` entry.
        parameters: the campaign's Parameter models.
        outcomes: the campaign's Outcome models.
    """
    problems: list[tuple[Loc, str]] = []
    by_name = {p.name: p for p in parameters}
    outcome_names = [o.name for o in outcomes]
    outcome = next((o for o in outcomes if o.name == source.outcome), None)
    if outcome is None:
        choose = f"choose one of: {', '.join(outcome_names)}"
        problems.append((("outcome",), f"{source.outcome!r} is not an outcome; {choose}"))
    elif source.unit is not None:
        if outcome.unit is None:
            problems.append(
                (
                    ("unit",),
                    f"outcome {outcome.name!r} has no unit, so {source.unit!r} cannot be checked or converted; "
                    f"give the outcome a unit (e.g. unit: {source.unit}) or remove this one",
                )
            )
        elif unit_factor(source.unit, outcome.unit) is None:
            convertible = [u for u in UNITS if unit_factor(u, outcome.unit) is not None] or [outcome.unit]
            problems.append(
                (
                    ("unit",),
                    f"{source.unit!r} does not match the unit of outcome {outcome.name!r} ({outcome.unit!r}); "
                    f"give the calculated values in {' or '.join(convertible)}",
                )
            )
    unknown_hint = f"parameters are {', '.join(by_name)}"
    for name in source.columns:
        if name not in by_name:
            problems.append((("columns", name), f"{name!r} is not a parameter; {unknown_hint}"))
    if source.formula is not None:
        for name in source.formula.fractions:
            param = by_name.get(name)
            if param is None:
                problems.append((("formula", "fractions", name), f"{name!r} is not a parameter; {unknown_hint}"))
            elif param.type == "categorical":
                problems.append(
                    (
                        ("formula", "fractions", name),
                        f"{name!r} is categorical, but a site fraction is a number; map it under columns instead",
                    )
                )
    return problems


def check_prior_against(
    source: PriorSource, parameters: Sequence[Any], outcomes: Sequence[Any], index: int = 0
) -> list[str]:
    """:func:`prior_problems` as lines such as ``priors[0].columns.cs_frac: 'cs_frac' is not a parameter; …``."""
    return [f"{_dotted(('priors', index, *loc))}: {msg}" for loc, msg in prior_problems(source, parameters, outcomes)]


def campaign_prior_problems(
    sources: Sequence[PriorSource], parameters: Sequence[Any], outcomes: Sequence[Any]
) -> list[tuple[Loc, str]]:
    """Checks a whole ``priors:`` list: each entry, and that names are unique. Paths start with ``("priors", i)``."""
    problems: list[tuple[Loc, str]] = []
    seen: dict[str, int] = {}
    for i, source in enumerate(sources):
        if source.name in seen:
            first = f"priors[{seen[source.name]}]"
            message = f"{source.name!r} is already used by {first}; names must be unique"
            problems.append((("priors", i, "name"), message))
        seen.setdefault(source.name, i)
        problems.extend((("priors", i, *loc), msg) for loc, msg in prior_problems(source, parameters, outcomes))
    return problems


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def load_prior(
    source: PriorSource, parameters: Sequence[Any], outcomes: Sequence[Any], base_dir: str | Path
) -> PriorData:
    """Reads a prior file into the campaign's terms.

    Args:
        source: the ``priors:`` entry.
        parameters: the campaign's Parameter models.
        outcomes: the campaign's Outcome models.
        base_dir: the campaign file's folder; ``source.file`` is relative to it.

    Raises:
        PriorFileError: the source does not fit the campaign, or the file is missing, unreadable, lacks a
            column, or has rows with missing, non-numeric, non-finite, out-of-range or unknown values or
            unreadable formulas (up to ``MAX_ROW_PROBLEMS`` listed together, each with its 1-based data row).
    """
    path = Path(base_dir) / source.file
    config = [f"{_dotted(loc)}: {msg}" for loc, msg in prior_problems(source, parameters, outcomes)]
    if config:
        raise PriorFileError(path, config, source.name)
    if not path.is_file():
        where = "is not a file" if path.exists() else "not found"
        raise PriorFileError(
            path, [f"{where}; 'file' is read relative to the campaign file's folder ({Path(base_dir)})"], source.name
        )
    header, records = _read_table(path, source.name)
    if not records:
        raise PriorFileError(
            path, ["no data rows; the file needs a header (column names) and at least one row"], source.name
        )
    needed = [source.property, *source.columns.values(), *([source.formula.column] if source.formula else [])]
    missing = [c for c in dict.fromkeys(needed) if c not in header]
    if missing:
        described = []
        for column in missing:
            close = _closest(column, header)
            described.append(f"{column!r}" + (f" (did you mean {close!r}?)" if close else ""))
        raise PriorFileError(
            path,
            [f"missing column(s) {', '.join(described)}; the file has: {', '.join(header)}"],
            source.name,
        )
    outcome = next(o for o in outcomes if o.name == source.outcome)
    factor = 1.0 if source.unit is None or outcome.unit is None else unit_factor(source.unit, outcome.unit)
    assert factor is not None  # prior_problems rejected units that do not convert
    by_name = {p.name: p for p in parameters}
    covered = tuple(p.name for p in parameters if p.name in set(source.mapped_parameters()))
    reader = _RowReader(source, by_name)
    rows: list[dict[str, float | str]] = []
    values: list[float] = []
    for number, record in enumerate(records, start=1):
        parsed = reader.read(number, record)
        if parsed is not None:
            row, value = parsed
            rows.append({name: row[name] for name in covered})
            values.append(value * factor)
    if reader.problems:
        shown = reader.problems[:MAX_ROW_PROBLEMS]
        if len(reader.problems) > MAX_ROW_PROBLEMS:
            shown.append(f"... and {len(reader.problems) - MAX_ROW_PROBLEMS} more problem(s)")
        raise PriorFileError(
            path, shown, source.name, hint="Fix or remove these rows (row 1 is the first row after the header)."
        )
    y = np.asarray(values, dtype=float)
    y.flags.writeable = False
    return PriorData(source.name, source.outcome, source.method, covered, rows, y, path)


class _RowReader:
    """Converts one record at a time, collecting problems rather than stopping at the first."""

    def __init__(self, source: PriorSource, parameters: dict[str, Any]):
        self.source = source
        self.parameters = parameters
        self.problems: list[str] = []
        formula = source.formula
        self.groups = {name: (f.species, list(f.of)) for name, f in formula.fractions.items()} if formula else {}

    def read(self, number: int, record: dict[str, Any]) -> tuple[dict[str, float | str], float] | None:
        before = len(self.problems)
        source = self.source
        value = self.number(number, source.property, record.get(source.property))
        row: dict[str, float | str] = {}
        for name, column in source.columns.items():
            converted = self.parameter_value(number, self.parameters[name], column, record.get(column))
            if converted is not None:
                row[name] = converted
        if source.formula is not None:
            row.update(self.fractions(number, source.formula, record.get(source.formula.column)))
        if len(self.problems) > before or value is None:
            return None
        return row, value

    def number(self, number: int, column: str, raw: Any) -> float | None:
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            self.problems.append(f"row {number}: {column} is empty")
            return None
        try:
            if isinstance(raw, bool):
                raise TypeError
            value = float(raw.strip() if isinstance(raw, str) else raw)
        except (TypeError, ValueError):
            self.problems.append(f"row {number}: {column} = {raw!r} is not a number")
            return None
        if math.isnan(value):
            self.problems.append(f"row {number}: {column} is NaN (an empty cell?)")
            return None
        if not math.isfinite(value):
            self.problems.append(f"row {number}: {column} = {raw!r} is not finite")
            return None
        return value

    def parameter_value(self, number: int, param: Any, column: str, raw: Any) -> float | str | None:
        if param.type == "categorical":
            # JSON may give a numeric choice as a number; "1" and 1 mean the same choice.
            as_text = isinstance(raw, str) or (isinstance(raw, int) and not isinstance(raw, bool))
            choice = str(raw).strip() if as_text else raw
            if choice in param.choices:
                return choice
            if raw is None or choice == "":
                self.problems.append(f"row {number}: {column} is empty")
            else:
                self.problems.append(
                    f"row {number}: {column} {raw!r} is not a choice of {param.name!r} ({_listing(param.choices)})"
                )
            return None
        value = self.number(number, column, raw)
        return None if value is None else self.in_range(number, param, value, f"{column} = {value:g}")

    def in_range(self, number: int, param: Any, value: float, described: str) -> float | None:
        low, high = float(param.low), float(param.high)
        slack = BOUND_RTOL * (high - low)
        if not low - slack <= value <= high + slack:
            self.problems.append(f"row {number}: {described} is outside the range of '{param.name}' "
                                 f"[{low:g}, {high:g}]; remove the row or widen the parameter's bounds")
            return None
        return min(max(value, low), high)

    def fractions(self, number: int, formula: FormulaColumn, raw: Any) -> dict[str, float]:
        if raw is None or (isinstance(raw, float) and math.isnan(raw)) or (isinstance(raw, str) and not raw.strip()):
            self.problems.append(f"row {number}: {formula.column} is empty")
            return {}
        if not isinstance(raw, str):
            self.problems.append(f"row {number}: {formula.column} = {raw!r} is not a formula")
            return {}
        try:
            fractions = site_fractions(parse_formula(raw, formula.species), self.groups, raw)
        except FormulaError as exc:
            self.problems.append(f"row {number}: {formula.column} {exc}")
            return {}
        out: dict[str, float] = {}
        for name, value in fractions.items():
            checked = self.in_range(number, self.parameters[name], value, f"{name} = {value:.4g} from {raw!r}")
            if checked is not None:
                out[name] = checked
        return out


def _closest(name: str, names: Sequence[str]) -> str | None:
    """The header name a typo most likely meant: a near spelling, or one containing the other (cs / cs_frac)."""
    close = difflib.get_close_matches(name, names, n=1)
    if close:
        return close[0]
    folded = name.casefold()
    return next((n for n in names if n and (folded in n.casefold() or n.casefold() in folded)), None)


def _listing(choices: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(choices[:limit])
    return shown + (f", … ({len(choices)} in all)" if len(choices) > limit else "")


def _read_table(path: Path, prior: str) -> tuple[list[str], list[dict[str, Any]]]:
    """The file's column names and one dict per data row, whatever the format."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return _read_csv(path, prior)
        if suffix == ".json":
            return _read_json(path, prior)
        if suffix == ".parquet":
            return _read_parquet(path, prior)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise PriorFileError(path, [f"cannot read the file: {exc}"], prior) from exc
    raise PriorFileError(path, [f"unknown format {suffix!r}; use a {', '.join(FORMATS)} file"], prior)


def _read_csv(path: Path, prior: str) -> tuple[list[str], list[dict[str, Any]]]:
    # utf-8-sig: spreadsheet programs often write a byte-order mark, which would otherwise stick to the first name.
    with path.open(newline="", encoding="utf-8-sig") as f:
        lines = [cells for cells in csv.reader(f) if any(c.strip() for c in cells)]
    if not lines:
        raise PriorFileError(path, ["the file is empty; it needs a header (column names) and at least one row"], prior)
    header = [c.strip() for c in lines[0]]
    _check_header(path, prior, header)
    records: list[dict[str, Any]] = []
    bad_width: list[str] = []
    for number, cells in enumerate(lines[1:], start=1):
        if len(cells) != len(header):
            bad_width.append(f"row {number}: has {len(cells)} cells, the header has {len(header)}")
        records.append(dict(zip(header, cells, strict=False)))
    if bad_width:
        raise PriorFileError(path, bad_width[:MAX_ROW_PROBLEMS], prior, hint="Give every row one cell per column.")
    return header, records


def _read_json(path: Path, prior: str) -> tuple[list[str], list[dict[str, Any]]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        problem = f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        raise PriorFileError(path, [problem], prior) from None
    shape = 'records ([{"cs": 0.1, "gap_ev": 1.6}, ...]) or columns ({"cs": [0.1, ...], "gap_ev": [1.6, ...]})'
    if isinstance(data, list):
        bad = [i for i, item in enumerate(data, start=1) if not isinstance(item, dict)]
        if bad:
            raise PriorFileError(path, [f"row {bad[0]} is not an object; give {shape}"], prior)
        header = list(dict.fromkeys(str(k) for item in data for k in item))
        return header, [{str(k): v for k, v in item.items()} for item in data]
    if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):
        lengths = {k: len(v) for k, v in data.items()}
        if len(set(lengths.values())) > 1:
            listed = ", ".join(f"{k}: {n}" for k, n in lengths.items())
            problem = f"columns have different lengths ({listed}); give one value per row in each"
            raise PriorFileError(path, [problem], prior)
        header = [str(k) for k in data]
        n = next(iter(lengths.values()), 0)
        return header, [{str(k): v[i] for k, v in data.items()} for i in range(n)]
    raise PriorFileError(path, [f"unexpected JSON layout; give {shape}"], prior)


def _read_parquet(path: Path, prior: str) -> tuple[list[str], list[dict[str, Any]]]:
    try:
        import pandas as pd  # local: only Parquet files need pandas and pyarrow
    except ImportError:
        problem = "reading Parquet needs pandas and pyarrow: pip install pandas pyarrow"
        raise PriorFileError(path, [problem], prior) from None
    try:
        frame = pd.read_parquet(path)
    except ImportError:
        raise PriorFileError(path, ["reading Parquet needs pyarrow: pip install pyarrow"], prior) from None
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise PriorFileError(path, [f"not a readable Parquet file: {exc}"], prior) from exc
    header = [str(c) for c in frame.columns]
    _check_header(path, prior, header)
    # object dtype + None for missing cells, so that every format reaches the row checks the same way.
    frame = frame.astype(object).where(frame.notna(), None)
    frame.columns = header
    return header, frame.to_dict("records")


def _check_header(path: Path, prior: str, header: Iterable[str]) -> None:
    names = list(header)
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        problem = f"column(s) {', '.join(map(repr, repeated))} appear more than once in the header"
        raise PriorFileError(path, [problem], prior)
    if any(not n for n in names):
        raise PriorFileError(path, ["the header has an empty column name; name every column"], prior)
