"""A station's part of an experiment: the flow run that a station's Prefect worker executes on the lab PC
that owns the instruments.

The campaign's flow (on the PC that proposes) sends each segment of an experiment (see
:mod:`orchestrator.stations`) as a run of the deployment ``station/<campaign>-<station>``, whose work pool's
worker runs on the station's PC. The run opens that station's instruments (or, with ``simulate``, their
byte-level simulators), runs the segment's steps through the :class:`~orchestrator.executor.Executor`
exactly as a single-PC campaign does (limits checked before the first byte, instruments made safe on any
error and at the end), and reports back through the Prefect server, which both PCs reach:

- **progress**, written before each step's first byte and after its answer, as the flow run's labels
  ``orchestrator.step.<procedure index>`` = ``started`` / ``done``: the write-ahead step log of a step
  that runs on another PC, read by the campaign's flow if this run dies;
- each **reading**, saved to the station's disk (fsynced) and then sent as an artifact of the flow run
  (type ``orchestrator-reading``) before its step is labelled done;
- with ``simulate``, the **sample's history** (type ``orchestrator-sample``): a simulated sample carries
  what was done to it to the next station, as a real one carries it physically.

A refusal by a limit ends the run ``Failed`` named ``Refused`` (nothing was sent), as does a run retried from
the UI after it had started steps (the campaign sends each try as a new run), an instrument failure
``Failed`` named ``InstrumentFailure``; anything else (the PC lost power, the worker was killed) leaves the
run ``Crashed`` and the campaign's flow decides from the labels what happened. One station runs one segment
at a time: a lock file in the station's folder serializes runs that the worker starts side by side.

The station's folder (raw readings, the simulated lab's journal) is ``$ORCHESTRATOR_STATION_DIR``, by default
``~/orchestrator-stations``, then ``<campaign>/<station>/``. This module imports no torch: a station PC only
runs instruments.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.states import Failed, State

from instruments.clock import WallClock
from instruments.errors import InstrumentError, LimitError
from instruments.readings import Reading
from orchestrator.crashpoints import crash_point
from orchestrator.executor import Executor, reading_of
from orchestrator.procedures import Action, ProcedureError
from orchestrator.stations import StationLab, step_from_json

READING_ARTIFACT = "orchestrator-reading"
SAMPLE_ARTIFACT = "orchestrator-sample"
STEP_LABEL = "orchestrator.step."
REFUSED, INSTRUMENT_FAILURE = "Refused", "InstrumentFailure"  # state names of a station's clean failures


def station_dir() -> Path:
    """Where stations keep their files: ``$ORCHESTRATOR_STATION_DIR`` or ``~/orchestrator-stations``."""
    configured = os.environ.get("ORCHESTRATOR_STATION_DIR")
    return Path(configured) if configured else Path.home() / "orchestrator-stations"


class ServerStepLog:
    """The executor's step log, written to the station flow run's labels (and readings to its artifacts).

    Args:
        flow_run_id: this flow run.
        first_index: the procedure index of the segment's first step.
        raw_dir: where readings are saved on this PC.
        experiment_id: for the file names.
    """

    def __init__(self, flow_run_id: Any, first_index: int, raw_dir: Path, experiment_id: int):
        self.flow_run_id = flow_run_id
        self.first_index = first_index
        self.raw_dir = raw_dir
        self.experiment_id = experiment_id

    def _label(self, index: int, state: str) -> None:
        from prefect import get_client

        with get_client(sync_client=True) as client:
            client.update_flow_run_labels(self.flow_run_id, {f"{STEP_LABEL}{self.first_index + index}": state})

    def started(self, index: int, step: Action, repeatable: bool) -> None:
        self._label(index, "started")
        crash_point("step_started")

    def done(self, index: int, step: Action, result: Any) -> None:
        reading = reading_of(step, result)
        if reading is not None:
            self.report_reading(self.first_index + index, *reading)
        self._label(index, "done")
        crash_point("step_done")

    def report_reading(self, index: int, label: str, reading: Reading) -> None:
        from prefect import get_client
        from prefect.client.schemas.actions import ArtifactCreate

        from orchestrator.hardware import save_reading

        path = save_reading(self.raw_dir, self.experiment_id, label, reading)
        with get_client(sync_client=True) as client:
            client.create_artifact(
                ArtifactCreate(
                    type=READING_ARTIFACT,
                    flow_run_id=self.flow_run_id,
                    description=f"Reading `{label}` of step {index} ({reading.kind}); saved on the station as `{path}`",
                    data={"index": index, "label": label, "reading": reading.to_json()},
                )
            )


@contextmanager
def _bench_lock(folder: Path) -> Iterator[None]:
    """Holds ``<folder>/bench.lock``: one segment at a time on a station's instruments."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "bench.lock", "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # blocks: the next experiment waits for the bench
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


@contextmanager
def _open_station(
    lab: StationLab, station: str, folder: Path, simulate: bool, history: list[dict[str, Any]] | None, segment: int
) -> Iterator[tuple[Executor, Any]]:
    """Yields (executor on this station's connected instruments, the simulated lab or None)."""
    from orchestrator.hardware import close_all, connect_all, make_drivers

    own = lab.on(station)
    subset = dataclasses.replace(lab, instruments={k: v for k, v in lab.instruments.items() if k in own})
    if not simulate:
        drivers = make_drivers(subset, clock=WallClock())  # type: ignore[arg-type] - duck-typed: instruments only
        executor = Executor(drivers, WallClock())
        try:
            connect_all(drivers, executor)
            yield executor, None
        finally:
            close_all(drivers, executor)
        return
    from simulators.bench import SimulatedBench

    with SimulatedBench(lab, folder / "simulated", only=own) as bench:  # type: ignore[arg-type]
        sim = bench.lab

        def start_sample(exp_id: int, key: str | None) -> None:
            if segment == 0 or history is None:
                sim.new_sample(exp_id, key)
            else:
                sim.continue_sample(exp_id, key, history)

        drivers = make_drivers(subset, port_map=bench.port_map, clock=sim.clock)  # type: ignore[arg-type]
        executor = Executor(drivers, sim.clock, start_sample)
        try:
            connect_all(drivers, executor)
            yield executor, sim
        finally:
            close_all(drivers, executor)


@flow(name="station", persist_result=False, log_prints=False)
def station_flow(
    lab: dict[str, Any],
    station: str,
    experiment_id: int,
    dispatch_key: str,
    segment: int,
    first_index: int,
    steps: list[dict[str, Any]],
    simulate: bool = False,
    history: list[dict[str, Any]] | None = None,
) -> dict[str, Any] | State:
    """Runs one segment of one experiment on this station's instruments.

    Args:
        lab: the campaign's :class:`~orchestrator.stations.StationLab` as JSON.
        station: this station's name.
        experiment_id: the experiment's id in the campaign's ledger.
        dispatch_key: its idempotency key.
        segment: the segment's number within the experiment (0: a fresh sample).
        first_index: the procedure index of ``steps[0]``.
        steps: the segment's steps (``orchestrator.stations.step_to_json``).
        simulate: run the instruments' byte-level simulators.
        history: with ``simulate``, what the earlier stations did to the sample.

    Returns:
        ``{"readings": {label: file on this PC}, "steps": n}``, or a ``Failed`` state named ``Refused`` or
        ``InstrumentFailure`` with the reason.
    """
    from prefect.runtime import flow_run

    logger = get_run_logger()
    already = _steps_already_labelled(flow_run.id)
    if already:
        # A person clicked Retry on a segment that had run (or started): running it again could dispense twice.
        return Failed(
            name=REFUSED,
            message=f"this segment already ran steps {already} (a retried run is not run again); the campaign "
            "decides what to send, each try as a new flow run",
        )
    config = StationLab.from_json(lab)
    parsed = [step_from_json(s) for s in steps]
    folder = station_dir() / config.name / station
    log = ServerStepLog(flow_run.id, first_index, folder / "raw", experiment_id)
    logger.info("experiment %s, segment %s: %s step(s) on station %s", experiment_id, segment, len(parsed), station)
    with _bench_lock(folder), _open_station(config, station, folder, simulate, history, segment) as (executor, sim):
        try:
            readings = executor.run(parsed, experiment_id, key=dispatch_key, log=log)
        except (LimitError, ProcedureError) as exc:
            return Failed(name=REFUSED, message=f"refused before sending: {exc}")
        except InstrumentError as exc:
            _report_sample(flow_run.id, sim)
            return Failed(name=INSTRUMENT_FAILURE, message=f"instrument failure on station {station}: {exc}")
        _report_sample(flow_run.id, sim)
    logger.info("experiment %s, segment %s done; readings: %s", experiment_id, segment, ", ".join(readings) or "none")
    return {"readings": sorted(readings), "steps": len(parsed)}


def _steps_already_labelled(flow_run_id: Any) -> list[int]:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        labels = client.read_flow_run(flow_run_id).labels or {}
    return sorted(int(k[len(STEP_LABEL):]) for k in labels if k.startswith(STEP_LABEL) and k[len(STEP_LABEL):].isdigit())


def _report_sample(flow_run_id: Any, sim: Any) -> None:
    """A simulated sample's history, for the next station (real samples carry theirs physically)."""
    if sim is None:
        return
    from prefect import get_client
    from prefect.client.schemas.actions import ArtifactCreate

    events = [dataclasses.asdict(e) for e in sim.history]
    with get_client(sync_client=True) as client:
        client.create_artifact(
            ArtifactCreate(
                type=SAMPLE_ARTIFACT,
                flow_run_id=flow_run_id,
                description=f"The simulated sample's history so far ({len(events)} events)",
                data={"events": events},
            )
        )
