"""Prefect at the edge: one flow per campaign run, tasks for refit, propose and each experiment.

The tasks call ``CampaignRunner`` methods; the ledger stays the source of truth, so task results are
not persisted or cached (a cached measurement would hand back the first result for a repeated,
identical experiment). The flow run is named after the campaign and tagged with it; each experiment's
task run is named by its id and conditions; the campaign's artifacts (``orchestrator.artifacts``) are
updated as the run goes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger, tags, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.states import Completed, State
from prefect.task_runners import ThreadPoolTaskRunner
from rich.console import Console

from orchestrator.approval import BatchDecision, apply_decision, batch_markdown, pending_approval
from orchestrator.artifacts import CampaignArtifacts
from orchestrator.campaign import Campaign, load_campaign
from orchestrator.errors import CampaignBusyError, UserInputError
from orchestrator.ledger import Experiment, Ledger
from orchestrator.loop import CampaignRunner, run_loop
from orchestrator.proposer import Observations
from orchestrator.report import ProgressPrinter, fmt
from orchestrator.run_lock import RunLock
from orchestrator.backends import open_backend
from orchestrator.surrogates import Surrogate

_TASK_OPTIONS = dict(cache_policy=NO_CACHE, persist_result=False)


@task(name="refit", **_TASK_OPTIONS)
def refit_task(runner: CampaignRunner, obs: Observations) -> Surrogate | None:
    """Ingests the ledger's observations and fits the outcome surrogates."""
    return runner.refit(obs)


@task(name="propose", **_TASK_OPTIONS)
def propose_task(runner: CampaignRunner, obs: Observations, surrogate: Surrogate | None, count: int) -> list[Experiment]:
    return runner.propose(obs, surrogate, count)


def experiment_run_name() -> str:
    """``experiment-12 (anneal_temp_c=150, antisolvent=toluene, …)``: the task run's name in the UI."""
    from prefect.runtime import task_run

    params = task_run.parameters
    exp_id = params["exp_id"]
    try:
        conditions = params["runner"].ledger.get(exp_id).conditions
    except Exception:  # noqa: BLE001 - a name is never worth failing a task over
        return f"experiment-{exp_id}"
    text = ", ".join(f"{k}={fmt(v)}" for k, v in conditions.items())
    name = f"experiment-{exp_id} ({text})"
    return name if len(name) <= 200 else name[:199] + "…"


@task(name="run-experiment", task_run_name=experiment_run_name, **_TASK_OPTIONS)
def run_experiment_task(runner: CampaignRunner, exp_id: int) -> Experiment:
    return runner.run_experiment(exp_id)


class ApprovalInput(RunInput):
    """The form a person fills in the Prefect UI to decide about a batch (``approval: required``)."""

    decision: Literal["approve", "edit", "reject"] = "approve"
    decided_by: str = ""
    comment: str = ""
    conditions: list[dict[str, Any]] = []


APPROVAL_POLL_S = 10.0  # how often a paused run checks for the decision


class ApprovalTimeout(UserInputError):
    """Nobody decided about a batch within ``approval_timeout_h``; it stays proposed for the next run."""


def _approver(runner: CampaignRunner) -> Callable[[list[int]], list[int]]:
    """``approve(ids) -> ids`` for ``run_loop``: pauses the flow run with a form until a person decides."""

    def approve(ids: list[int]) -> list[int]:
        waiting = pending_approval(runner, ids)
        if not waiting:
            return ids
        logger = get_run_logger()
        problem = None
        asked = 0
        while True:
            asked += 1
            description = batch_markdown(runner, waiting, problem)
            form = ApprovalInput.with_initial_data(
                description=description, conditions=[dict(e.conditions) for e in waiting]
            )
            logger.warning(
                "batch of experiment(s) %s waits for approval: open this flow run in the Prefect UI and resume it",
                ", ".join(f"#{e.id}" for e in waiting),
            )
            try:
                answer = pause_flow_run(
                    wait_for_input=form,
                    timeout=int(runner.campaign.approval_timeout_h * 3600),
                    poll_interval=max(1, int(APPROVAL_POLL_S)),
                    key=f"approve-{waiting[0].id}-{waiting[0].dispatch_key}-{asked}",
                )
            except FlowPauseTimeout:
                raise ApprovalTimeout(
                    f"nobody approved experiment(s) {', '.join(f'#{e.id}' for e in waiting)} within "
                    f"{runner.campaign.approval_timeout_h:g} h; they stay proposed and the next run asks again"
                ) from None
            decision = BatchDecision(answer.decision, answer.decided_by, answer.comment, answer.conditions or None)
            try:
                approved = set(apply_decision(runner, waiting, decision))
            except UserInputError as exc:
                problem = str(exc)
                logger.warning("the answer was not applied (%s); asking again", problem)
                continue
            logger.info("batch %s: %s by %s", [e.id for e in waiting], answer.decision, answer.decided_by)
            waiting_ids = {e.id for e in waiting}
            return [i for i in ids if i not in waiting_ids or i in approved]

    return approve


def _prefect_map(runner: CampaignRunner) -> Callable[[Callable[[int], Experiment], Sequence[int]], list[Experiment]]:
    def map_fn(_fn: Callable[[int], Experiment], ids: Sequence[int]) -> list[Experiment]:
        if runner.concurrency <= 1:
            return [run_experiment_task.submit(runner, i).result() for i in ids]
        futures = [run_experiment_task.submit(runner, i) for i in ids]
        return [f.result() for f in futures]

    return map_fn


@flow(name="campaign", flow_run_name="{campaign_name}", persist_result=False, log_prints=False)
def campaign_flow(
    campaign_name: str,
    campaign_path: str,
    results_dir: str,
    progress: bool = True,
    simulate: bool = False,
    transcript_path: str | None = None,
    fault_rate: float = 0.0,
    skip_if_busy: bool = False,
) -> dict[str, int] | State:
    """Runs (or resumes) a campaign until its budget is used; returns the ledger's state counts.

    Args:
        campaign_name: shown as the flow run's name (must match the file's ``name``).
        campaign_path: the campaign YAML file.
        results_dir: folder holding ``<campaign name>/ledger.sqlite``.
        progress: print a line per finished experiment.
        simulate: run the campaign's instruments as byte-level simulators.
        transcript_path: record every byte sent to and read from the instruments (JSONL).
        fault_rate: with ``simulate``, the chance that a simulated reply is spoiled.
        skip_if_busy: when another run holds the campaign, end as ``Completed`` named ``Skipped`` (naming the
            holder) instead of failing: what a deployment's run wants (``orchestrator serve``), where a
            schedule may fire while the last run is still measuring.
    """
    logger = get_run_logger()
    campaign = load_campaign(campaign_path)
    try:
        return _run_campaign(logger, campaign, results_dir, progress, simulate, transcript_path, fault_rate)
    except CampaignBusyError as exc:
        if not skip_if_busy:
            raise
        logger.warning("skipped: %s", exc)
        return Completed(name="Skipped", message=f"skipped: {exc}")


def _run_campaign(
    logger: Any,
    campaign: Campaign,
    results_dir: str,
    progress: bool,
    simulate: bool,
    transcript_path: str | None,
    fault_rate: float,
) -> dict[str, int]:
    with (
        RunLock.for_campaign(campaign.name, results_dir),  # re-entrant: a no-op where `orchestrator run` holds it
        Ledger.for_campaign(campaign, results_dir) as ledger,
        open_backend(
            campaign, results_dir, simulate=simulate, transcript_path=transcript_path, fault_rate=fault_rate
        ) as backend,
    ):
        printer = ProgressPrinter(Console()) if progress else None
        runner = CampaignRunner(campaign, ledger, backend)
        artifacts = CampaignArtifacts(runner)

        def listener(kind: str, exp: Experiment, r: CampaignRunner) -> None:
            if printer is not None:
                printer(kind, exp, r)
            artifacts.on_event(kind, exp, r)

        def refit(obs: Observations) -> Surrogate | None:
            surrogate = refit_task(runner, obs)
            # Once per batch: what the last batch measured, scored by the models the next proposal uses
            # (none during the space-filling design).
            artifacts.publish(surrogate, fit_quality=surrogate is not None)
            return surrogate

        runner.on_event = listener
        artifacts.start()
        logger.info("campaign %s: %s", campaign.name, ledger.counts())
        run_loop(
            runner,
            map_experiments=_prefect_map(runner),
            submit=lambda exp_id: run_experiment_task.submit(runner, exp_id),
            refit=refit,
            propose_step=lambda obs, s, n: propose_task(runner, obs, s, n),
            approve=_approver(runner),
        )
        artifacts.publish()
        counts = ledger.counts()
        logger.info("campaign %s finished: %s", campaign.name, counts)
        return counts


def run_campaign_flow(
    campaign_path: str | Path,
    results_dir: str | Path,
    progress: bool = True,
    simulate: bool = False,
    transcript_path: str | Path | None = None,
    fault_rate: float = 0.0,
) -> dict[str, int]:
    """Runs ``campaign_flow`` tagged with the campaign's name, with one worker thread per batch slot."""
    campaign = load_campaign(campaign_path)
    configured = campaign_flow.with_options(
        task_runner=ThreadPoolTaskRunner(max_workers=max(1, campaign.budget.batch_size))
    )
    with tags("orchestrator", f"campaign:{campaign.name}"):
        return configured(
            campaign.name,
            str(campaign_path),
            str(results_dir),
            progress,
            simulate,
            str(transcript_path) if transcript_path is not None else None,
            fault_rate,
        )
