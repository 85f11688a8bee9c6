"""Campaigns on instruments: checking the ``instruments:`` section against the drivers, building the
drivers (one transport per port), and the backend that runs an experiment as procedure → executor →
analysis.

:func:`lab_problems` runs when a campaign file is loaded. Besides the drivers' options and limits it
sweeps the search space (every corner of the box, each categorical choice, and scattered interior points)
through the procedure and checks each resulting step against the instruments' limits: a campaign whose
search space reaches beyond what the hardware accepts is refused with the parameter and limit named,
so the proposer only ever searches conditions the instruments will take.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from instruments.base import Driver, DriverSpec
from instruments.clock import Clock
from instruments.errors import InstrumentError, LimitError
from instruments.readings import dumps, reading_from_json
from instruments.transport import SerialSettings, Transcript, Transport
from orchestrator.analysis import analysis_function, analyze
from orchestrator.errors import ExperimentFailed, UserInputError
from orchestrator.dispatch import Decision, Inquire, LedgerStepLog, decide
from orchestrator.executor import Executor, reading_of
from orchestrator.procedures import Action, Procedure, ProcedureError

if TYPE_CHECKING:
    from orchestrator.campaign import Campaign
    from orchestrator.ledger import Experiment, Ledger, StepRecord

log = logging.getLogger(__name__)
Loc = tuple[str | int, ...]
_SWEEP_RANDOM_POINTS = 64
_SWEEP_MAX_CORNERS = 1024


def port_settings(spec: DriverSpec, overrides: Any) -> SerialSettings:
    """The device's factory line settings with the campaign's overrides applied."""
    changes = {k: v for k, v in overrides.model_dump().items() if v is not None}
    return replace(spec.serial, **changes)


def make_drivers(
    campaign: "Campaign",
    *,
    port_map: Mapping[str, str] | None = None,
    transcript: Transcript | None = None,
    clock: Clock | None = None,
) -> dict[str, Driver]:
    """Builds (does not connect) a driver per instrument; instruments on one port share its transport.

    Args:
        port_map: configured port name → the port to open instead (the simulated bench's pty links).

    Raises:
        UserInputError: an unknown driver, or options/limits the driver refuses.
    """
    from instruments.registry import driver_specs

    specs = driver_specs()
    transports: dict[str, Transport] = {}
    drivers: dict[str, Driver] = {}
    for name, inst in (campaign.instruments or {}).items():
        spec = specs.get(inst.driver)
        if spec is None:
            raise UserInputError(f"instruments.{name}.driver: unknown driver '{inst.driver}'; known: {', '.join(specs)}")
        port = (port_map or {}).get(inst.port, inst.port)
        if port not in transports:
            settings = port_settings(spec, inst.serial)
            if port_map and inst.port in port_map:
                # A pseudo-terminal carries bytes, not bits: Linux ptys refuse 7-bit or parity settings.
                settings = replace(settings, bytesize=8, parity="N", stopbits=1)
            transports[port] = Transport(port, settings, name=name, transcript=transcript)
        drivers[name] = spec.driver(
            transports[port],
            name=name,
            limits=spec.driver.Limits.model_validate(inst.limits),
            options=spec.driver.Options.model_validate(inst.options),
            clock=clock,
        )
    return drivers


def make_procedure(campaign: "Campaign", drivers: Mapping[str, Driver]) -> Procedure:
    """The campaign's procedure, with scalar arguments mapped through the drivers' signatures."""
    assert campaign.procedure is not None

    def arg_names(instrument: str, action: str) -> list[str]:
        driver = drivers.get(instrument)
        return driver.action_parameters(action) if driver is not None and action in driver.ACTIONS else []

    return Procedure(steps=campaign.procedure.steps, function=campaign.procedure.function, arg_names=arg_names)


# --- checks when a campaign file is loaded ---------------------------------------------------------------


def lab_problems(campaign: "Campaign") -> list[tuple[Loc, str]]:
    """Everything wrong with a campaign's instruments, procedure and analysis, as (field path, message)."""
    from instruments.registry import driver_specs

    problems: list[tuple[Loc, str]] = []
    if campaign.procedure is None:
        problems.append((("procedure",), "instruments need a 'procedure:' (the steps of one experiment)"))
    if not campaign.analysis:
        problems.append((("analysis",), "instruments need an 'analysis:' that turns readings into the outcomes"))
    specs = driver_specs()
    drivers: dict[str, Driver] = {}
    kinds_by_port: dict[str, tuple[str, str]] = {}
    for name, inst in (campaign.instruments or {}).items():
        spec = specs.get(inst.driver)
        if spec is None:
            problems.append(((("instruments", name, "driver")), f"unknown driver '{inst.driver}'; known: {', '.join(specs)}"))
            continue
        first = kinds_by_port.setdefault(inst.port, (name, inst.driver))
        if first[1] != inst.driver:
            problems.append(
                (("instruments", name, "port"), f"{inst.port} is also {first[0]}'s port ({first[1]}); one port speaks one protocol")
            )
        models: dict[str, Any] = {}
        for section, model in (("limits", spec.driver.Limits), ("options", spec.driver.Options)):
            try:
                models[section] = model.model_validate(getattr(inst, section))
            except ValidationError as exc:
                for err in exc.errors(include_url=False):
                    msg = "unknown key; remove it or check its spelling" if err["type"] == "extra_forbidden" else err["msg"]
                    problems.append((("instruments", name, section, *err["loc"]), msg.removeprefix("Value error, ")))
        if len(models) < 2:
            continue
        try:
            drivers[name] = spec.driver(Transport(inst.port), name=name, **models)
        except (InstrumentError, ValueError) as exc:
            problems.append((("instruments", name), str(exc)))
    if campaign.procedure is None or len(drivers) < len(campaign.instruments or {}):
        return problems
    try:
        procedure = make_procedure(campaign, drivers)
    except ProcedureError as exc:
        return problems + [(_loc(exc.where), str(exc).removeprefix(f"{exc.where}: "))]
    problems += _template_problems(campaign, procedure, drivers)
    if problems:
        return problems
    problems += _sweep_problems(campaign, procedure, drivers)
    problems += _analysis_problems(campaign, procedure)
    return problems


def _loc(where: str) -> Loc:
    out: list[str | int] = []
    for part in where.replace("]", "").replace("[", ".").split("."):
        out.append(int(part) if part.isdigit() else part)
    return tuple(out)


def _template_problems(campaign: "Campaign", procedure: Procedure, drivers: Mapping[str, Driver]) -> list[tuple[Loc, str]]:
    problems: list[tuple[Loc, str]] = []
    for where, instrument, action in procedure.templates():
        driver = drivers.get(instrument)
        if driver is None:
            problems.append((_loc(where), f"no instrument '{instrument}'; instruments: {', '.join(drivers)}"))
        elif action not in driver.ACTIONS:
            problems.append((_loc(where), f"{instrument} has no action '{action}'; it offers: {', '.join(sorted(driver.ACTIONS))}"))
    known = {p.name for p in campaign.parameters}
    unknown = sorted(procedure.parameter_names - known)
    if unknown:
        problems.append((("procedure", "steps"), f"reads {', '.join(unknown)}, which {'is' if len(unknown) == 1 else 'are'} not a parameter"))
    return problems


def sweep_points(campaign: "Campaign", seed: int = 0) -> list[dict[str, Any]]:
    """Conditions that probe the search space: every corner that meets the constraints (each categorical
    choice), then points of the campaign's own space-filling design, which always meet them."""
    from orchestrator.space import SearchSpace

    space = SearchSpace.from_campaign(campaign)
    axes = []
    for p in campaign.parameters:
        if p.type == "categorical":
            axes.append(list(p.choices))
        else:
            axes.append([p.low, p.high])
    names = [p.name for p in campaign.parameters]
    corners = (dict(zip(names, combo)) for combo in itertools.islice(itertools.product(*axes), _SWEEP_MAX_CORNERS))
    points = [c for c in corners if space.satisfies(c)]
    return points + space.decode(space.initial_design(seed, 0, _SWEEP_RANDOM_POINTS))


def _sweep_problems(campaign: "Campaign", procedure: Procedure, drivers: Mapping[str, Driver]) -> list[tuple[Loc, str]]:
    executor = Executor(drivers, clock=None)  # type: ignore[arg-type] - check() never waits
    seen: set[str] = set()
    problems: list[tuple[Loc, str]] = []
    for point in sweep_points(campaign, campaign.seed):
        try:
            steps = procedure.steps(point)
            executor.check(steps)
        except (LimitError, ProcedureError) as exc:
            message = str(exc)
            shape = re.sub(r"[-+]?\d[\d.e+-]*", "#", message)  # the same refusal at other values is one problem
            if shape in seen:
                continue
            seen.add(shape)
            at = ", ".join(f"{k}={_fmt(v)}" for k, v in point.items())
            problems.append(
                (("procedure",), f"at {at}: {message}; narrow the parameters so every allowed condition stays within limits")
            )
            if len(problems) >= 3:
                break
    return problems


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _analysis_problems(campaign: "Campaign", procedure: Procedure) -> list[tuple[Loc, str]]:
    problems: list[tuple[Loc, str]] = []
    try:
        steps = procedure.steps(sweep_points(campaign)[0])
    except ProcedureError:
        steps = []
    labels = {s.label or s.instrument for s in steps if isinstance(s, Action)}
    outcome_names = {o.name for o in campaign.outcomes}
    filled: set[str] = set()
    for i, spec in enumerate(campaign.analysis):
        if labels and spec.reading not in labels:
            problems.append((("analysis", i, "reading"), f"no step takes a reading '{spec.reading}'; readings: {', '.join(sorted(labels))}"))
        try:
            analysis_function(spec.function)
        except UserInputError as exc:
            problems.append((("analysis", i, "function"), str(exc)))
        for quantity, outcome in spec.outcomes.items():
            if outcome not in outcome_names:
                problems.append((("analysis", i, "outcomes", quantity), f"'{outcome}' is not an outcome of the campaign"))
            filled.add(outcome)
    missing = sorted(outcome_names - filled)
    if missing:
        problems.append((("analysis",), f"no analysis fills the outcome(s) {', '.join(missing)}"))
    return problems


# --- running ---------------------------------------------------------------------------------------------


class InstrumentBackend:
    """Runs one experiment on instruments: procedure → executor → raw readings on disk → analysis → outcomes.

    Args:
        campaign: the campaign (its procedure and analysis).
        drivers: connected drivers by instrument name.
        clock: the lab's clock.
        raw_dir: folder for raw readings (``exp-<id>-<label>.json``).
        before_experiment: called with the experiment's id and key before its first step (a simulated lab
            starts a new sample labelled with the key).
        inquire: asks the lab what it did for an idempotency key (the simulated bench's journal); None where
            the instruments keep no such record.
    """

    def __init__(
        self,
        campaign: "Campaign",
        drivers: Mapping[str, Driver],
        clock: Clock,
        raw_dir: Path,
        before_experiment: Callable[[int, str | None], None] | None = None,
        inquire: Inquire | None = None,
    ):
        self.campaign = campaign
        self.drivers = dict(drivers)
        self.procedure = make_procedure(campaign, self.drivers)
        self.executor = Executor(self.drivers, clock, before_experiment)
        self.raw_dir = Path(raw_dir)
        self.inquire = inquire
        self.max_concurrent = 1  # one bench: the executor serializes experiments anyway; this keeps id order

    def run_experiment(
        self, exp_id: int, conditions: Mapping[str, Any], dispatch: "LedgerStepLog | None" = None, key: str | None = None
    ) -> tuple[dict[str, float], dict[str, str]]:
        """Returns (outcomes, raw reading files by label).

        Args:
            exp_id: the experiment's id.
            conditions: its conditions.
            dispatch: the step log to write (each reading is saved as soon as it is taken).
            key: its idempotency key.

        Raises:
            ExperimentFailed: refused by a limit (nothing sent), an instrument failure, or an analysis that
                found nothing to measure; ``raw`` holds whatever readings were taken.
        """
        log = dispatch if dispatch is not None else self.step_log(None, exp_id, 0)
        try:
            steps = self.procedure.steps(conditions)
            readings = self.executor.run(steps, exp_id, key=key, log=log)
        except LimitError as exc:
            raise ExperimentFailed(f"refused before sending: {exc}") from None
        except ProcedureError as exc:
            raise ExperimentFailed(f"procedure: {exc}", raw=log.saved or None) from None
        except InstrumentError as exc:
            raise ExperimentFailed(f"instrument failure: {exc}", raw=log.saved or None) from None
        return self._analyze(readings, dict(log.saved))

    def _analyze(self, readings: Mapping[str, Any], raw: dict[str, str]) -> tuple[dict[str, float], dict[str, str]]:
        try:
            return analyze(self.campaign.analysis, readings), raw
        except ExperimentFailed as exc:
            raise ExperimentFailed(exc.reason, raw=raw) from None

    def step_log(self, ledger: "Ledger | None", exp_id: int, attempt: int) -> "LedgerStepLog":
        """The step log of one attempt: readings saved as taken, progress in the ledger (none: files only)."""
        return LedgerStepLog(
            ledger if ledger is not None else _NoLedger(), exp_id, attempt, lambda label, r: self._save(exp_id, label, r), reading_of
        )

    def recover(self, exp: "Experiment", log: list["StepRecord"]) -> Decision:
        """Decides, from its step log and the lab's own record, what to do with an experiment a crash left
        ``running`` (see :mod:`orchestrator.dispatch`)."""
        try:
            planned = self.procedure.steps(exp.conditions)
        except ProcedureError as exc:
            return Decision("unknown", f"its procedure no longer builds ({exc}); check the sample and resolve it")
        account = self.inquire(exp.dispatch_key) if self.inquire is not None and exp.dispatch_key else None
        return decide(planned, log, account, can_ask=self.inquire is not None)

    def finish(self, readings: Mapping[str, str]) -> tuple[dict[str, float], dict[str, str]]:
        """Outcomes from readings saved before a crash (label → file).

        Raises:
            ExperimentFailed: a file is missing or unreadable, or the analysis finds nothing to measure.
        """
        loaded = {}
        for label, path in readings.items():
            try:
                loaded[label] = reading_from_json(raw_reading(path))
            except (OSError, ValueError, KeyError) as exc:
                raise ExperimentFailed(f"saved reading {label} at {path} cannot be read ({exc})", raw=dict(readings)) from None
        return self._analyze(loaded, dict(readings))

    def _save(self, exp_id: int, label: str, reading: Any) -> str:
        return save_reading(self.raw_dir, exp_id, label, reading)

    def connect(self) -> None:
        connect_all(self.drivers, self.executor)

    def close(self) -> None:
        """Makes every instrument safe, then closes the ports."""
        close_all(self.drivers, self.executor)


def connect_all(drivers: Mapping[str, Driver], executor: Executor) -> None:
    """Connects every driver, then feeds the watchdogs from the executor until :func:`close_all`."""
    for driver in drivers.values():
        driver.connect()
    executor.start_keepalive()


def close_all(drivers: Mapping[str, Driver], executor: Executor) -> None:
    """Makes every instrument safe (heaters off, pumps stopped, motion halted), then closes the ports."""
    executor.stop_keepalive()
    for name, driver in drivers.items():
        try:
            driver.safe_state()
        except (InstrumentError, OSError) as exc:
            log.error("%s: could not bring to a safe state at exit: %s", name, exc)
    for driver in drivers.values():
        driver.close()


def save_reading(raw_dir: Path, exp_id: int, label: str, reading: Any) -> str:
    """Writes a raw reading to ``raw_dir/exp-<id>-<label>.json``, durably; returns the path."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    path = raw_dir / f"exp-{exp_id:05d}-{label}.json"
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(dumps(reading))
        f.flush()
        os.fsync(f.fileno())  # the step is logged done only after this; the file must outlive a power cut
    tmp.replace(path)  # a crash never leaves a half-written reading under the final name
    return str(path)


def raw_reading(path: str | Path) -> dict[str, Any]:
    """A stored raw reading as JSON."""
    return json.loads(Path(path).read_text())


class _NoLedger:
    """Stands in for the ledger where a backend runs an experiment without one (tests, benchmarks)."""

    def step_started(self, *args: Any) -> None:
        pass

    def step_done(self, *args: Any) -> None:
        pass
