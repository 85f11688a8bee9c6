"""The campaign's side of a lab spread over several PCs: each segment of an experiment goes to the station
that owns its instruments, as a flow run of that station's deployment (see :mod:`orchestrator.station_flow`).

:class:`StationBackend` stands where an :class:`~orchestrator.hardware.InstrumentBackend` stands for a
single PC: the loop calls ``run_experiment`` and gets outcomes and raw reading files back; the proposing,
the ledger and the analysis stay on this PC. For one experiment it renders the steps, checks every step
against every station's limits (so an experiment that station B would refuse never starts on station A),
cuts them into segments, and for each in order:

1. logs the segment's steps ``started`` in the ledger, creates the station's flow run with an idempotency
   key (``<dispatch key>-s<segment>-<station>-t<try>``, also its name), and notes the run in the ledger;
2. waits for it to end (the station's worker picks it up; a run nobody picks up is reported as late);
3. on ``Completed`` fetches its readings (artifacts), saves them beside the ledger and logs the steps done.
   A station's clean refusal or instrument failure fails the experiment with the station's reason; a run
   that died (``Crashed``, ``Cancelled``) is decided from its step labels: sent again as a new try when only
   steps that are harmless to repeat had started, otherwise the experiment is ``unknown`` for a person.

After a crash of this PC the loop asks :meth:`StationBackend.recover`, which answers ``continue``: the same
attempt runs on, and step 1 finds each segment's flow run again by its key, so a segment that was sent is
waited for (or its result read), never sent twice. A segment the ledger noted as sent but the server does
not know (a different or wiped server) makes the experiment ``unknown``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from instruments.clock import WallClock
from instruments.errors import LimitError
from instruments.readings import Values, reading_from_json
from orchestrator.crashpoints import crash_point
from orchestrator.dispatch import Decision, LedgerStepLog
from orchestrator.errors import ExperimentFailed, ExperimentUnknown
from orchestrator.hardware import InstrumentBackend, make_drivers
from orchestrator.procedures import ProcedureError
from orchestrator.station_flow import INSTRUMENT_FAILURE, READING_ARTIFACT, REFUSED, SAMPLE_ARTIFACT, STEP_LABEL, station_flow
from orchestrator.stations import Segment, StationLab, segment_run_name, split_segments, station_of, step_to_json

if TYPE_CHECKING:
    from orchestrator.campaign import Campaign
    from orchestrator.ledger import Experiment, StepRecord

log = logging.getLogger(__name__)

MAX_TRIES = 3  # a segment whose run died before anything irreversible is sent at most this often
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
SENT_NOTE = "sent to station"


def deployment_name(campaign: "Campaign", station: str) -> str:
    return f"{campaign.name}-{station}"


class StationBackend(InstrumentBackend):
    """Runs experiments whose instruments sit on several stations, through their Prefect work pools.

    Args:
        campaign: a campaign with ``stations:``.
        raw_dir: where this PC keeps the readings the stations send back.
        simulate: the stations run their instruments' byte-level simulators (the sample's history travels
            with it from station to station).
        poll_s: how often a station's flow run is checked.
        late_warning_s: after this long without a worker taking a run, say so (once per run).
    """

    def __init__(
        self, campaign: "Campaign", raw_dir: Path, simulate: bool = False, poll_s: float = 0.5, late_warning_s: float = 60.0
    ):
        # Drivers that are never connected: they render the procedure, check limits and say what is repeatable.
        super().__init__(campaign, make_drivers(campaign), WallClock(), raw_dir)
        assert campaign.stations is not None
        self.stations = dict(campaign.stations)
        self.station_of = station_of(campaign)
        self.station_lab = StationLab.of(campaign)
        self.lab = self.station_lab.to_json()
        self.simulate = simulate
        self.poll_s = poll_s
        self.late_warning_s = late_warning_s
        self.api_url = ""
        self.deployments: dict[str, Any] = {}  # station → deployment id
        # Stations work side by side: while one anneals experiment 2, another measures experiment 1.
        self.max_concurrent = None

    # --- setting up ------------------------------------------------------------------------------------
    def connect(self) -> None:
        """Checks the server and the stations' work pools, and registers each station's deployment.

        Raises:
            UserInputError: no Prefect server, a missing work pool, or one that is not a process pool.
        """
        from prefect.deployments.runner import RunnerDeployment
        from prefect.types.entrypoint import EntrypointType

        from orchestrator.service import require_api_url, require_process_pool

        self.api_url = require_api_url("a campaign with stations")
        for station, spec in self.stations.items():
            owner = f"the PC that owns {', '.join(self.station_lab.on(station))}"
            require_process_pool(spec.pool, owner, field=f"stations.{station}.pool")
        for station, spec in self.stations.items():
            deployment = RunnerDeployment.from_flow(
                station_flow,
                name=deployment_name(self.campaign, station),
                description=f"Steps of campaign '{self.campaign.name}' on station '{station}' "
                f"({', '.join(self.station_lab.on(station))}); runs are created by the campaign's flow, one per segment.",
                tags=["orchestrator", f"campaign:{self.campaign.name}", f"station:{station}"],
                work_pool_name=spec.pool,
                work_queue_name=spec.queue,
                entrypoint_type=EntrypointType.MODULE_PATH,  # orchestrator.station_flow.station_flow
            )
            self.deployments[station] = deployment.apply()

    def close(self) -> None:
        """Nothing to close here: each station makes its instruments safe at the end of every segment."""

    # --- running -----------------------------------------------------------------------------------------
    def run_experiment(
        self, exp_id: int, conditions: Mapping[str, Any], dispatch: LedgerStepLog | None = None, key: str | None = None
    ) -> tuple[dict[str, float], dict[str, str]]:
        """Runs one experiment segment by segment on its stations; returns (outcomes, raw reading files).

        Raises:
            ExperimentFailed: refused by a limit (nothing sent), a station's instrument failure, or an analysis
                that found nothing to measure.
            ExperimentUnknown: a station's run died while an irreversible step was unconfirmed.
        """
        if dispatch is None or key is None:
            raise ValueError("a station backend needs the ledger's step log and the experiment's key")
        try:
            steps = self.procedure.steps(conditions)
            self.executor.check(steps)
        except LimitError as exc:
            raise ExperimentFailed(f"refused before sending: {exc}") from None
        except ProcedureError as exc:
            raise ExperimentFailed(f"procedure: {exc}") from None
        history: list[dict[str, Any]] | None = None
        readings: dict[str, Any] = {}
        try:
            for segment in split_segments(steps, self.station_of):
                flow_run = self._segment(segment, exp_id, key, dispatch, history)
                artifacts = self._artifacts(flow_run.id)
                history = artifacts["history"] if artifacts["history"] is not None else history
                readings.update(self._record(segment, dispatch, flow_run, artifacts))
        except (ExperimentFailed, ExperimentUnknown):
            raise
        except Exception as exc:  # noqa: BLE001 - the server went away mid-experiment: never call that "failed"
            raise ExperimentUnknown(
                f"lost touch with the Prefect server at {self.api_url} while the experiment was on its stations "
                f"({type(exc).__name__}: {exc}); what the stations did cannot be told here. Check their flow runs and "
                "the sample, then `orchestrator resolve ID --result outcome=value ...` or `--failed REASON`",
                raw=dict(dispatch.saved) or None,
            ) from None
        return self._analyze(readings, dict(dispatch.saved))

    def recover(self, exp: "Experiment", log: list["StepRecord"]) -> Decision:
        return Decision(
            "continue",
            "its segments' flow runs are found again on the Prefect server by their keys; a segment already sent is "
            "waited for or read, not sent again",
        )

    def _segment(
        self, segment: Segment, exp_id: int, key: str, dispatch: LedgerStepLog, history: list[dict[str, Any]] | None
    ) -> Any:
        """Creates (or finds again) the segment's flow run and waits for one that completed; returns it."""
        from prefect import get_client

        with get_client(sync_client=True) as client:
            tries = self._tries(client, key, segment)
            try_no = max(tries, default=0)
            if try_no == 0:
                self._check_never_sent(exp_id, segment, dispatch)
                try_no = 1
                run = self._send(client, segment, exp_id, key, dispatch, history, try_no)
            else:
                run = tries[try_no]
            while True:
                run = self._wait(client, run, segment)
                state = run.state
                if state.type.value == "COMPLETED":
                    return run
                if state.type.value == "FAILED" and state.name in (REFUSED, INSTRUMENT_FAILURE):
                    self._record(segment, dispatch, run, self._artifacts(run.id))
                    raise ExperimentFailed(state.message or state.name, raw=dict(dispatch.saved) or None)
                unconfirmed = self._irreversible_started(segment, run)
                what = f"station {segment.station}'s flow run {run.name} ended {state.name}" + (
                    f" ({state.message})" if state.message else ""
                )
                if unconfirmed:
                    self._record(segment, dispatch, run, self._artifacts(run.id))
                    raise ExperimentUnknown(
                        f"{what} while {unconfirmed} was unconfirmed. It was not sent again: check the sample, then "
                        "`orchestrator resolve ID --result outcome=value ...` or `--failed REASON`",
                        raw=dict(dispatch.saved) or None,
                    )
                if try_no >= MAX_TRIES:
                    raise ExperimentFailed(f"{what}; tried {try_no} times, each before any irreversible step")
                log.warning("%s before any irreversible step; sending the segment again", what)
                dispatch.ledger.note(exp_id, f"{what} before any irreversible step; sent again")
                try_no += 1
                run = self._send(client, segment, exp_id, key, dispatch, history, try_no)

    def _tries(self, client: Any, key: str, segment: Segment) -> dict[int, Any]:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

        names = {segment_run_name(key, segment, t): t for t in range(1, MAX_TRIES + 1)}
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=list(names))))
        return {names[r.name]: r for r in runs if r.name in names}

    def _check_never_sent(self, exp_id: int, segment: Segment, dispatch: LedgerStepLog) -> None:
        """The server knows no run of this segment: fine, unless the ledger noted one (another or a wiped server)."""
        marker = f"segment {segment.number} {SENT_NOTE} {segment.station} as "
        noted = [e for e in dispatch.ledger.events(exp_id) if marker in (e.get("detail") or "")]
        if noted:
            raise ExperimentUnknown(
                f"the ledger says segment {segment.number} went to station {segment.station} "
                f"({noted[-1]['detail']}), but the Prefect server at {self.api_url} has no such flow run (another "
                "server, or its database was reset), so what the station did cannot be told. Check the sample, then "
                "`orchestrator resolve ID --result outcome=value ...` or `--failed REASON`"
            )

    def _send(
        self, client: Any, segment: Segment, exp_id: int, key: str, dispatch: LedgerStepLog,
        history: list[dict[str, Any]] | None, try_no: int,
    ) -> Any:
        for index, action in segment.actions():
            dispatch.started(index, action, self.drivers[action.instrument].repeatable(action.action))
        name = segment_run_name(key, segment, try_no)
        from prefect.states import Scheduled

        run = client.create_flow_run_from_deployment(
            self.deployments[segment.station],
            parameters={
                "lab": self.lab,
                "station": segment.station,
                "experiment_id": exp_id,
                "dispatch_key": key,
                "segment": segment.number,
                "first_index": segment.first_index,
                "steps": [step_to_json(s) for s in segment.steps],
                "simulate": self.simulate,
                "history": history,
            },
            state=Scheduled(),
            name=name,
            tags=["orchestrator", f"campaign:{self.campaign.name}", f"experiment:{exp_id}", f"station:{segment.station}"],
            idempotency_key=name,  # created twice (a crash between here and the note), it is still one run
        )
        crash_point("segment_sent")
        dispatch.ledger.note(exp_id, f"segment {segment.number} {SENT_NOTE} {segment.station} as {name} (flow run {run.id})")
        return run

    def _wait(self, client: Any, run: Any, segment: Segment) -> Any:
        started = time.monotonic()
        warned = False
        while run.state is None or run.state.type.value not in FINAL:
            if not warned and run.state is not None and run.state.type.value in ("SCHEDULED", "PENDING") and (
                time.monotonic() - started > self.late_warning_s
            ):
                log.warning(
                    "flow run %s waits for station %s: is `prefect worker start --pool %s` running on that PC?",
                    run.name, segment.station, self.stations[segment.station].pool,
                )
                warned = True
            time.sleep(self.poll_s)
            run = client.read_flow_run(run.id)
        return run

    def _irreversible_started(self, segment: Segment, run: Any) -> str | None:
        """The first step the station labelled started (or done) that is not harmless to repeat, as text."""
        labels = run.labels or {}
        for index, action in segment.actions():
            if labels.get(f"{STEP_LABEL}{index}") in ("started", "done") and not self.drivers[
                action.instrument
            ].repeatable(action.action):
                return str(action)
        return None

    def _artifacts(self, flow_run_id: Any) -> dict[str, Any]:
        """The readings (by procedure index) and the simulated sample's history a station run reported."""
        from prefect import get_client
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

        with get_client(sync_client=True) as client:
            found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
        readings: dict[int, Any] = {}
        history = None
        for artifact in found:
            data = artifact.data if isinstance(artifact.data, dict) else {}
            if artifact.type == READING_ARTIFACT:
                readings[int(data["index"])] = reading_from_json(data["reading"])
            elif artifact.type == SAMPLE_ARTIFACT:
                history = list(data.get("events") or [])
        return {"readings": readings, "history": history}

    def _record(self, segment: Segment, dispatch: LedgerStepLog, run: Any, artifacts: dict[str, Any]) -> dict[str, Any]:
        """Logs the steps the station confirmed as done (saving their readings here); returns label → reading."""
        labels = run.labels or {}
        taken: dict[str, Any] = {}
        done = {r.index for r in dispatch.ledger.steps(dispatch.exp_id, dispatch.attempt) if r.state == "done"}
        for index, action in segment.actions():
            if labels.get(f"{STEP_LABEL}{index}") != "done" and index not in artifacts["readings"]:
                continue
            reading = artifacts["readings"].get(index)
            if reading is not None:
                taken[action.label or action.instrument] = reading
            if index not in done:
                dispatch.done(index, action, _result_of(reading))
        return taken


def _result_of(reading: Any) -> Any:
    """What the action returned, for the step log: a labelled reply's values as a mapping."""
    return dict(reading.values) if isinstance(reading, Values) else reading
