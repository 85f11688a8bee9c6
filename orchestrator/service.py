"""A campaign as a Prefect deployment: `orchestrator serve FILE` (and `deploy FILE --pool POOL`).

``serve`` registers a deployment of the campaign flow with the campaign's parameters bound, on a real
Prefect server (``PREFECT_API_URL``), and runs a Prefect ``Runner`` in this process until Ctrl-C: a click
on the UI's "Run" button, ``prefect deployment run 'campaign/<name>'`` or the deployment's schedule
creates a flow run, and the runner executes it in a child process on this machine, the one that owns the
instruments. Every run resumes the campaign from its ledger; a run that finds the budget used does nothing
and completes, one that finds the campaign already running (another run holds its run lock) completes as
``Skipped`` with the holder named in the state message, instead of failing.

``deploy`` registers the same deployment for a work pool instead: a ``prefect worker start --pool POOL``
process on the lab PC that owns the campaign's instruments picks its runs up (see the README, "Running
as a service").

The deployed flow is :func:`orchestrator.flows.campaign_flow` itself, with ``skip_if_busy`` bound.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from orchestrator.campaign import Campaign
from orchestrator.errors import UserInputError
from orchestrator.flows import campaign_flow

FLOW_NAME = campaign_flow.name  # "campaign": served runs sit next to `orchestrator run`'s under one flow


@dataclass(frozen=True)
class ScheduleSpec:
    """At most one of a cron expression (in ``timezone``) or an interval."""

    cron: str | None = None
    interval: datetime.timedelta | None = None
    timezone: str | None = None

    def schedules(self) -> list[Any]:
        from prefect.schedules import Cron, Interval

        if self.cron is not None:
            return [Cron(self.cron, timezone=self.timezone)]
        if self.interval is not None:
            return [Interval(self.interval, timezone=self.timezone)]
        return []

    def describe(self) -> str:
        if self.cron is not None:
            return f"cron '{self.cron}' ({self.timezone or 'UTC'})"
        if self.interval is not None:
            return f"every {self.interval.total_seconds() / 60:g} min"
        return "no schedule (runs start from the UI's Run button or `prefect deployment run`)"


def parse_schedule(cron: str | None, interval_min: float | None, timezone: str | None) -> ScheduleSpec:
    """Checks the schedule options; raises ``UserInputError`` on a clash, a bad cron or an unknown time zone."""
    from pydantic import ValidationError

    from prefect.client.schemas.schedules import CronSchedule

    if cron is not None and interval_min is not None:
        raise UserInputError("give --cron or --interval-min, not both")
    if interval_min is not None and not interval_min > 0:
        raise UserInputError(f"--interval-min must be more than 0 minutes (got {interval_min:g})")
    if timezone is not None:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise UserInputError(f"--timezone '{timezone}' is not an IANA time zone name (e.g. Europe/Berlin)") from None
    elif cron is not None:
        timezone = local_timezone()
    if cron is not None:
        try:
            CronSchedule(cron=cron, timezone=timezone)
        except ValidationError as exc:
            reasons = "; ".join(str(e.get("msg", e)).removeprefix("Value error, ") for e in exc.errors())
            raise UserInputError(
                f"--cron '{cron}' is not a cron schedule ({reasons}); five fields, minute hour day month weekday, "
                "e.g. '0 * * * *' for every hour on the hour"
            ) from None
    interval = datetime.timedelta(minutes=interval_min) if interval_min is not None else None
    return ScheduleSpec(cron=cron, interval=interval, timezone=timezone)


def local_timezone() -> str | None:
    """This machine's IANA time zone name (cron times are wall-clock times in the lab), or None (UTC)."""
    try:
        import tzlocal

        return tzlocal.get_localzone_name()
    except Exception:  # noqa: BLE001 - no tzlocal or no zone configured: Prefect's default, UTC
        return None


def require_api_url(purpose: str = "serving a campaign") -> str:
    """The Prefect server this process talks to; ``UserInputError`` if none is set or it does not answer.

    A deployment served against Prefect's embedded, ephemeral API would vanish with this process, and
    nobody could click its Run button, so serving needs a real server (and so do stations on other PCs).
    """
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise UserInputError(
            f"{purpose} needs a Prefect server: start one with `prefect server start --host 127.0.0.1 "
            "--port 4200` (on the lab PC, in its own terminal or as a system service) and set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api; without it Prefect would use its embedded API, which "
            "vanishes when this command ends"
        )
    from prefect import get_client

    with get_client(sync_client=True) as client:
        problem = client.api_healthcheck()
    if problem is not None:
        raise UserInputError(
            f"the Prefect server at PREFECT_API_URL={url} does not answer ({problem}); is `prefect server start` "
            "running there?"
        )
    return url


def require_process_pool(pool: str, owner: str, field: str = "") -> None:
    """Checks that the server has a process work pool ``pool``; ``UserInputError`` naming how to make it if not.

    Args:
        pool: the pool's name.
        owner: the PC whose worker should poll it, for the message.
        field: the campaign field that names the pool, to prefix the message with.
    """
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    where = f"{field}: " if field else ""
    with get_client(sync_client=True) as client:
        try:
            work_pool = client.read_work_pool(pool)
        except ObjectNotFound:
            raise UserInputError(
                f"{where}no work pool '{pool}' on the Prefect server; create it with `prefect work-pool create {pool} "
                f"--type process` and start `prefect worker start --pool {pool}` on {owner}"
            ) from None
    if work_pool.type != "process":
        raise UserInputError(
            f"{where}work pool '{pool}' is of type '{work_pool.type}'; the orchestrator runs in process pools only "
            "(installed on the worker's PC, no image is built)"
        )


def deployment_parameters(campaign: Campaign, campaign_file: Path, results_dir: Path, simulate: bool) -> dict[str, Any]:
    """The flow's arguments, bound in the deployment: absolute paths, so a run does not depend on a cwd."""
    return {
        "campaign_name": campaign.name,
        "campaign_path": str(Path(campaign_file).resolve()),
        "results_dir": str(Path(results_dir).resolve()),
        "progress": False,
        "simulate": simulate,
        "skip_if_busy": True,
    }


def deployment_tags(campaign: Campaign) -> list[str]:
    return ["orchestrator", f"campaign:{campaign.name}"]


def _configured_flow(campaign: Campaign) -> Any:
    from prefect.task_runners import ThreadPoolTaskRunner

    # One worker thread per batch slot, as `orchestrator run` does.
    return campaign_flow.with_options(
        task_runner=ThreadPoolTaskRunner(max_workers=max(1, campaign.budget.batch_size))
    )


def _description(campaign: Campaign) -> str:
    text = (
        f"Campaign '{campaign.name}' (orchestrator): each run resumes it from its ledger until the budget of "
        f"{campaign.budget.max_experiments} experiments is used."
    )
    return f"{campaign.description}\n\n{text}" if campaign.description else text


def serve_campaign(
    campaign: Campaign,
    campaign_file: Path,
    results_dir: Path,
    *,
    simulate: bool = False,
    schedule: ScheduleSpec = ScheduleSpec(),
    name: str | None = None,
    echo: Any = print,
) -> None:
    """Registers the campaign's deployment on the server and runs its flow runs here until interrupted.

    Returns when interrupted (Ctrl-C / SIGINT, or SIGTERM); the deployment's schedule is paused then, so no
    runs pile up while nobody serves it. Call ``require_api_url`` first.
    """
    import asyncio
    import signal
    import threading

    from prefect.runner import Runner
    from prefect.types.entrypoint import EntrypointType

    deployment_name = name or campaign.name
    runner = Runner(name=f"orchestrator-{deployment_name}", pause_on_shutdown=True)
    deployment_id = runner.add_flow(
        _configured_flow(campaign),
        name=deployment_name,
        schedules=schedule.schedules(),
        parameters=deployment_parameters(campaign, campaign_file, results_dir, simulate),
        description=_description(campaign),
        tags=deployment_tags(campaign),
        entrypoint_type=EntrypointType.MODULE_PATH,  # orchestrator.flows.campaign_flow, cwd-independent
    )
    echo(_serving_message(deployment_name, deployment_id, schedule))
    if threading.current_thread() is threading.main_thread():
        # Ctrl-C works even where the shell started us with SIGINT ignored (a background job), and SIGTERM takes
        # the same path: asyncio cancels the runner, which pauses the schedule and cancels a run in progress.
        # (Prefect's own SIGTERM handler calls sys.exit from inside the event loop.)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        runner.handle_sigterm = lambda *_: signal.raise_signal(signal.SIGINT)  # type: ignore[method-assign]
    try:
        asyncio.run(runner.start())
    except KeyboardInterrupt:
        pass
    echo(f"stopped serving '{FLOW_NAME}/{deployment_name}'")


def _serving_message(deployment_name: str, deployment_id: Any, schedule: ScheduleSpec) -> str:
    from prefect.settings import PREFECT_UI_URL

    lines = [
        f"serving deployment '{FLOW_NAME}/{deployment_name}' ({deployment_id}); {schedule.describe()}",
        f"  start a run: the Run button in the UI, or `prefect deployment run '{FLOW_NAME}/{deployment_name}'`",
    ]
    ui = PREFECT_UI_URL.value()
    if ui:
        lines.append(f"  UI: {ui}/deployments/deployment/{deployment_id}")
    lines.append("  Ctrl-C stops serving (a run in progress is interrupted; the next run resumes it from the ledger)")
    return "\n".join(lines)


def deploy_campaign(
    campaign: Campaign,
    campaign_file: Path,
    results_dir: Path,
    *,
    pool: str,
    queue: str | None = None,
    simulate: bool = False,
    schedule: ScheduleSpec = ScheduleSpec(),
    name: str | None = None,
) -> Any:
    """Registers (or updates) the campaign's deployment for a work pool and returns its id; runs nothing here.

    A ``prefect worker start --pool POOL`` on the lab PC that owns the instruments runs its flow runs: a process
    worker starts ``python -m prefect.engine``, which imports ``orchestrator.flows.campaign_flow``
    (no image, no code storage: the orchestrator must be installed in the worker's Python), and the campaign
    file and results folder are the absolute paths bound here, so they must exist on the worker's machine.
    """
    from prefect.deployments.runner import RunnerDeployment
    from prefect.types.entrypoint import EntrypointType

    require_process_pool(pool, "the lab PC that owns the instruments")
    deployment = RunnerDeployment.from_flow(
        _configured_flow(campaign),
        name=name or campaign.name,
        schedules=schedule.schedules(),
        parameters=deployment_parameters(campaign, campaign_file, results_dir, simulate),
        description=_description(campaign),
        tags=deployment_tags(campaign),
        work_pool_name=pool,
        work_queue_name=queue,
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    return deployment.apply()
