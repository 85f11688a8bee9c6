"""The ``orchestrator`` command line: run, validate, preflight, schema, status, report, resolve, add, export.

A user's mistake (a bad campaign file, a ledger of another campaign) prints one line per problem and
exits with code 2; it never prints a traceback.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from orchestrator.campaign import Campaign, campaign_json_schema, load_campaign
from orchestrator.errors import CampaignFileError, UserInputError
from orchestrator.manual import parse_outcome_values

app = typer.Typer(
    name="orchestrator",
    help="Closed-loop autonomous experiment orchestrator for materials labs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

CampaignFile = Annotated[Path, typer.Argument(help="Campaign YAML file.", show_default=False)]
ResultsDir = Annotated[
    Path, typer.Option("--results-dir", "-r", help="Folder holding one ledger per campaign.", envvar="ORCHESTRATOR_RESULTS")
]


@contextmanager
def user_errors(campaign_file: Path | None = None) -> Iterator[None]:
    """Turns the project's user-facing errors into a message on stderr and exit code 2.

    Args:
        campaign_file: named in front of the message, for checks of a loaded campaign (its simulator, its
            prior files) whose errors would otherwise not say which campaign file they are about.
    """
    try:
        yield
    # escape(): messages quote what the file says, and text like "[/x]" would otherwise be read as rich markup.
    except CampaignFileError as exc:
        err_console.print(f"[bold red]error:[/] {escape(exc.path)}: {len(exc.problems)} problem(s)", highlight=False)
        for problem in exc.problems:
            err_console.print(f"  - {escape(problem)}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except UserInputError as exc:
        where = f"{campaign_file}: " if campaign_file is not None else ""
        err_console.print(f"[bold red]error:[/] {escape(where + str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _load(path: Path) -> Campaign:
    with user_errors():
        return load_campaign(path)


def configure_prefect(results_dir: Path) -> None:
    """Keeps Prefect local and quiet; must run before prefect is imported.

    With no ``PREFECT_API_URL`` set, Prefect starts its embedded API on a SQLite file under
    ``results_dir/.prefect``; with one set, runs report to that server.
    """
    home = (results_dir / ".prefect").resolve()
    defaults = {
        "PREFECT_HOME": str(home),
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    home.mkdir(parents=True, exist_ok=True)


@app.command()
def run(
    campaign_file: CampaignFile,
    results_dir: ResultsDir = Path("results"),
    simulate: Annotated[
        bool, typer.Option("--simulate", help="Run the campaign's instruments as byte-level simulators.")
    ] = False,
    prefect: Annotated[bool, typer.Option("--prefect/--no-prefect", help="Run as a Prefect flow.")] = True,
    transcript: Annotated[
        Optional[Path], typer.Option("--transcript", help="Record every byte to and from the instruments (JSONL).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines.")] = False,
    fault_rate: Annotated[
        float,
        typer.Option(
            "--fault-rate",
            min=0.0,
            max=0.5,
            help="With --simulate: the chance that a simulated instrument reply is spoiled (fault soak).",
        ),
    ] = 0.0,
) -> None:
    """Run (or resume) a campaign until its budget is used, then print a summary."""
    if fault_rate and not simulate:
        err_console.print("[bold red]error:[/] --fault-rate spoils simulated replies; it needs --simulate", highlight=False)
        raise typer.Exit(2)
    campaign = _load(campaign_file)
    if campaign.approval == "required" and not prefect:
        err_console.print(
            f"[bold red]error:[/] {escape(str(campaign_file))}: approval: required waits for a person in the Prefect UI; "
            "run without --no-prefect (or set approval: none)",
            highlight=False,
        )
        raise typer.Exit(2)
    if campaign.stations is not None and (not prefect or not os.environ.get("PREFECT_API_URL")):
        err_console.print(
            f"[bold red]error:[/] {escape(str(campaign_file))}: its instruments are on stations, which take their steps "
            "from a Prefect server that every station PC reaches: start `prefect server start --host 0.0.0.0`, set "
            "PREFECT_API_URL=http://HOST:4200/api here and on each station, start `prefect worker start --pool POOL` "
            "on each station PC, and run without --no-prefect",
            highlight=False,
        )
        raise typer.Exit(2)
    from orchestrator.run_lock import RunLock
    from orchestrator.simulation import build_simulator

    with user_errors(campaign_file):
        if campaign.instruments is None:
            build_simulator(campaign)  # a bad simulator is a user error before anything starts
        from orchestrator.transfer import load_priors

        load_priors(campaign)  # so is a bad prior file: nothing is created before the campaign can run
        lock = RunLock.for_campaign(campaign.name, results_dir)
        lock.acquire()  # one writer per campaign: a second run is refused here, with the holder's pid
    try:
        _run_locked(campaign, campaign_file, results_dir, simulate, prefect, transcript, quiet, fault_rate)
    finally:
        lock.release()


def _run_locked(
    campaign: Campaign,
    campaign_file: Path,
    results_dir: Path,
    simulate: bool,
    prefect: bool,
    transcript: Optional[Path],
    quiet: bool,
    fault_rate: float = 0.0,
) -> None:
    from orchestrator.backends import open_backend
    from orchestrator.ledger import Ledger
    from orchestrator.loop import CampaignRunner, run_loop
    from orchestrator.report import ProgressPrinter, summary_table

    with user_errors(campaign_file), Ledger.for_campaign(campaign, results_dir) as ledger:
        counts = ledger.counts()
    done = counts["completed"] + counts["failed"] + counts["unknown"]
    verb = "resuming" if sum(counts.values()) else "starting"
    where = "" if campaign.instruments is None else (" on simulated instruments" if simulate else " on the instruments")
    console.print(
        f"[bold]{verb}[/] campaign [cyan]{campaign.name}[/]{where}: {done} of {campaign.budget.max_experiments} "
        f"experiments done; ledger {results_dir / campaign.name / 'ledger.sqlite'}",
        highlight=False,
    )
    if prefect:
        configure_prefect(results_dir)
        from orchestrator.flows import run_campaign_flow

        with user_errors():
            run_campaign_flow(
                campaign_file,
                results_dir,
                progress=not quiet,
                simulate=simulate,
                transcript_path=transcript,
                fault_rate=fault_rate,
            )
    else:
        with (
            user_errors(),
            Ledger.for_campaign(campaign, results_dir) as ledger,
            open_backend(
                campaign, results_dir, simulate=simulate, transcript_path=transcript, fault_rate=fault_rate
            ) as backend,
        ):
            runner = CampaignRunner(campaign, ledger, backend, None if quiet else ProgressPrinter(console))
            run_loop(runner)
    from orchestrator.report import pareto_table

    with Ledger.for_campaign(campaign, results_dir) as ledger:
        runner = CampaignRunner(campaign, ledger, simulator=_no_backend)
        console.print(summary_table(runner))
        front = pareto_table(runner)
        if front is not None:
            console.print(front)


def _no_backend(conditions: object, rng: object) -> dict[str, float]:
    """Stands in for the backend where only the ledger is read (status, summaries)."""
    return {}


@app.command()
def validate(campaign_file: CampaignFile) -> None:
    """Check a campaign file and its simulator; exit 2 with one line per problem if it is wrong."""
    campaign = _load(campaign_file)
    from orchestrator.simulation import build_simulator

    with user_errors(campaign_file):
        if campaign.instruments is None:
            build_simulator(campaign)
        from orchestrator.transfer import load_priors

        load_priors(campaign)  # a missing file or bad row is reported now, not at the first refit
    n = len(campaign.parameters)
    console.print(
        f"[green]ok[/] {escape(str(campaign_file))}: campaign '{campaign.name}', {n} parameter(s), "
        f"{len(campaign.outcomes)} outcome(s), {len(campaign.objectives)} objective(s), "
        f"budget {campaign.budget.max_experiments} (batches of {campaign.budget.batch_size}, "
        f"{campaign.initial_experiments} initial)",
        highlight=False,
    )


@app.command()
def preflight(
    campaign_file: CampaignFile,
    runs: Annotated[int, typer.Option("--runs", "-n", min=2, max=1000, help="How many simulated runs.")] = 10,
    target: Annotated[
        Optional[float], typer.Option(help="Objective score that counts as success (default: 95% of the best reached).")
    ] = None,
) -> None:
    """Run the campaign as configured many times against its simulator; report experiments-to-target and
    the best value at the budget, with confidence intervals, before any hardware time is spent."""
    import tempfile

    from rich.table import Table

    from orchestrator.preflight import default_backend, run_preflight

    campaign = _load(campaign_file)
    budget = campaign.budget.max_experiments
    console.print(f"pre-flight of [cyan]{campaign.name}[/]: {runs} runs of {budget} experiments", highlight=False)
    with tempfile.TemporaryDirectory() as tmp, user_errors():
        backend = default_backend(Path(tmp))
        try:
            result = run_preflight(
                campaign,
                runs,
                backend,
                target=target,
                on_run=lambda i, failed: console.print(f"  run {i + 1}/{runs} done ({failed} failed)", highlight=False),
            )
        finally:
            backend.close()  # type: ignore[attr-defined]
    best, reach = result.best_summary(), result.target_summary(budget)

    def steps(v: float) -> str:
        return f"> {budget}" if v > budget else f"{v:g}"

    table = Table(title=f"Pre-flight: {campaign.name}, {runs} runs", show_header=True, header_style="bold")
    table.add_column("")
    table.add_column("value")
    table.add_row("best score at the budget, median", f"{best['median']:.4g}  (90% CI {best['ci_low']:.4g} to {best['ci_high']:.4g})")
    table.add_row("  10th to 90th percentile of runs", f"{best['p10']:.4g} to {best['p90']:.4g}")
    how = "given" if result.target_given else "95% of the best any run reached"
    table.add_row("target score", f"{result.target:.4g} ({how})")
    table.add_row(
        "experiments to target, median",
        f"{steps(reach['median'])}  (90% CI {steps(reach['ci_low'])} to {steps(reach['ci_high'])}; "
        f"IQR {steps(reach['q1'])} to {steps(reach['q3'])})",
    )
    table.add_row("runs reaching the target", f"{reach['reached']:.0f} of {runs}")
    table.add_row("failed experiments per run, median", f"{float(np.median(result.failed)):.0f}")
    console.print(table)


@app.command()
def schema() -> None:
    """Print the JSON Schema of campaign files (for editor completion)."""
    sys.stdout.write(json.dumps(campaign_json_schema(), indent=2) + "\n")


@app.command()
def status(
    campaign_file: CampaignFile,
    results_dir: ResultsDir = Path("results"),
    last: Annotated[Optional[int], typer.Option(help="Show only the last N experiments.")] = None,
) -> None:
    """Print the campaign's experiments from its ledger, and the best so far."""
    campaign = _load(campaign_file)
    from orchestrator.ledger import Ledger
    from orchestrator.loop import CampaignRunner
    from orchestrator.report import ledger_table, pareto_table, summary_table

    path = results_dir / campaign.name / "ledger.sqlite"
    if not path.exists():
        err_console.print(f"[bold red]error:[/] no ledger at {path}; run the campaign first, or pass --results-dir")
        raise typer.Exit(2)
    with user_errors(), Ledger.for_campaign(campaign, results_dir) as ledger:
        console.print(ledger_table(ledger, [o.name for o in campaign.outcomes], limit=last))
        runner = CampaignRunner(campaign, ledger, simulator=_no_backend)
        console.print(summary_table(runner))
        front = pareto_table(runner)
        if front is not None:
            console.print(front)


@app.command()
def report(
    campaign_file: CampaignFile,
    results_dir: ResultsDir = Path("results"),
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Folder to write to (default: <results>/<campaign>/report).")
    ] = None,
) -> None:
    """Write the campaign's summary, convergence plot, experiments table and an HTML page, from its ledger.

    The same summary and plot the Prefect UI shows as artifacts, for people who do not run Prefect's server.
    """
    campaign = _load(campaign_file)
    from orchestrator.ledger import Ledger
    from orchestrator.loop import CampaignRunner
    from orchestrator.summary import write_report

    path = results_dir / campaign.name / "ledger.sqlite"
    if not path.exists():
        err_console.print(f"[bold red]error:[/] no ledger at {path}; run the campaign first, or pass --results-dir")
        raise typer.Exit(2)
    target = out if out is not None else results_dir / campaign.name / "report"
    with user_errors(campaign_file), Ledger.for_campaign(campaign, results_dir) as ledger:
        runner = CampaignRunner(campaign, ledger, simulator=_no_backend)
        try:
            paths = write_report(runner, target)
        except OSError as exc:
            raise UserInputError(f"cannot write the report to {target}: {exc.strerror or exc}") from None
    for kind, written in paths.items():
        console.print(f"wrote {kind:<8} {written}", highlight=False)


@app.command()
def resolve(
    campaign_file: CampaignFile,
    experiment_id: Annotated[int, typer.Argument(help="The experiment's id (see `orchestrator status`).", show_default=False)],
    result: Annotated[
        Optional[list[str]],
        typer.Option("--result", help="OUTCOME=VALUE as measured by hand; repeat (or comma-separate) for every outcome."),
    ] = None,
    failed: Annotated[Optional[str], typer.Option("--failed", help="Record it as failed, with this reason.")] = None,
    by: Annotated[Optional[str], typer.Option("--by", help="Who decided (default: your user name).")] = None,
    results_dir: ResultsDir = Path("results"),
) -> None:
    """Settle an experiment whose fate a crash left unknown: give its measured outcomes, or mark it failed.

    The next proposal uses what you record. Only `unknown` experiments can be resolved; nothing is sent to
    an instrument.
    """
    import getpass

    campaign = _load(campaign_file)
    from orchestrator.ledger import Ledger

    if (result is None) == (failed is None):
        err_console.print("[bold red]error:[/] give either --result OUTCOME=VALUE ... or --failed REASON", highlight=False)
        raise typer.Exit(2)
    outcomes = None
    with user_errors():
        if result is not None:
            outcomes = parse_outcome_values(result, [o.name for o in campaign.outcomes])
        if failed is not None and not failed.strip():
            raise UserInputError("--failed needs a reason (what happened to the sample)")
    path = results_dir / campaign.name / "ledger.sqlite"
    if not path.exists():
        err_console.print(f"[bold red]error:[/] no ledger at {path}; run the campaign first, or pass --results-dir")
        raise typer.Exit(2)
    who = by or _user_name(getpass)
    with user_errors(), Ledger.for_campaign(campaign, results_dir) as ledger:
        ids = {e.id for e in ledger.experiments()}
        if experiment_id not in ids:
            raise UserInputError(f"no experiment {experiment_id} in {path}; `orchestrator status {campaign_file}` lists them")
        exp = ledger.get(experiment_id)
        if exp.state != "unknown":
            raise UserInputError(
                f"experiment {experiment_id} is {exp.state}, not unknown; only experiments whose fate a crash left "
                "unknown are resolved by hand"
            )
        exp = ledger.resolve(experiment_id, outcomes=outcomes, failed=failed, by=who)
    what = ", ".join(f"{k}={v:g}" for k, v in (exp.outcomes or {}).items()) or exp.error
    console.print(f"experiment {experiment_id}: {exp.state} ({escape(str(what))}), recorded by {escape(who)}", highlight=False)


def _user_name(getpass_module: object) -> str:
    try:
        return getpass_module.getuser()  # type: ignore[attr-defined]
    except (KeyError, OSError):  # no user name in a container without passwd entry
        return "unknown user"


@app.command()
def export(
    campaign_file: CampaignFile,
    results_dir: ResultsDir = Path("results"),
    csv: Annotated[Optional[Path], typer.Option("--csv", help="Write a CSV file here.")] = None,
    parquet: Annotated[Optional[Path], typer.Option("--parquet", help="Write a Parquet file here.")] = None,
) -> None:
    """Write the ledger's experiments as a table (one row per experiment, a column per parameter/outcome)."""
    campaign = _load(campaign_file)
    if csv is None and parquet is None:
        err_console.print("[bold red]error:[/] say where to write: --csv FILE and/or --parquet FILE")
        raise typer.Exit(2)
    from orchestrator.export import ledger_frame
    from orchestrator.ledger import Ledger

    path = results_dir / campaign.name / "ledger.sqlite"
    if not path.exists():
        err_console.print(f"[bold red]error:[/] no ledger at {path}; run the campaign first, or pass --results-dir")
        raise typer.Exit(2)
    with user_errors(), Ledger.for_campaign(campaign, results_dir) as ledger:
        frame = ledger_frame(ledger, campaign)
    for target, writer in ((csv, frame.to_csv), (parquet, frame.to_parquet)):
        if target is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            writer(target, index=False)
            console.print(f"wrote {len(frame)} experiments to {target}", highlight=False)


@app.command()
def add(
    campaign_file: CampaignFile,
    conditions: Annotated[
        list[str],
        typer.Option(
            "--conditions", help="PARAMETER=VALUE of the experiment you ran; repeat (or comma-separate) for every parameter."
        ),
    ],
    outcomes: Annotated[
        Optional[list[str]],
        typer.Option("--outcomes", help="OUTCOME=VALUE as you measured it; repeat (or comma-separate) for every outcome."),
    ] = None,
    failed: Annotated[
        Optional[str], typer.Option("--failed", help="Record it as failed (e.g. the film did not form), with this reason.")
    ] = None,
    by: Annotated[Optional[str], typer.Option("--by", help="Who ran it (default: your user name).")] = None,
    note: Annotated[Optional[str], typer.Option("--note", help="Free text kept with the experiment.")] = None,
    results_dir: ResultsDir = Path("results"),
) -> None:
    """Add an experiment you ran by hand: its conditions and measured outcomes, or --failed with a reason.

    It is recorded as finished (generator `manual`), counts in the budget like any experiment, and the next
    proposal learns from it. A ledger that does not exist yet is created. No run lock is taken: a running
    campaign picks the result up at its next proposal.
    """
    import getpass

    campaign = _load(campaign_file)
    from orchestrator.ledger import Ledger
    from orchestrator.manual import parse_conditions

    if (outcomes is None) == (failed is None):
        err_console.print("[bold red]error:[/] give either --outcomes OUTCOME=VALUE ... or --failed REASON", highlight=False)
        raise typer.Exit(2)
    with user_errors():
        values = parse_conditions(conditions, campaign)
        measured = None
        if outcomes is not None:
            measured = parse_outcome_values(outcomes, [o.name for o in campaign.outcomes], option="--outcomes")
        if failed is not None and not failed.strip():
            raise UserInputError("--failed needs a reason (what happened to the sample)")
    who = by or _user_name(getpass)
    with user_errors(), Ledger.for_campaign(campaign, results_dir) as ledger:
        exp = ledger.add_manual(values, measured, who, note, failed=failed.strip() if failed is not None else None)
        used = sum(ledger.counts().values())
    what = ", ".join(f"{k}={v:g}" for k, v in (exp.outcomes or {}).items()) or f"failed: {exp.error}"
    console.print(
        f"experiment {exp.id}: {exp.state} ({escape(what)}), added by hand by {escape(who)}; "
        f"{used} of {campaign.budget.max_experiments} experiments used",
        highlight=False,
    )
    if used >= campaign.budget.max_experiments:
        console.print(
            "the budget is used: `orchestrator run` proposes no more experiments; raise budget.max_experiments to "
            "continue the campaign",
            highlight=False,
        )


@app.command()
def serve(
    campaign_file: CampaignFile,
    results_dir: ResultsDir = Path("results"),
    simulate: Annotated[
        bool, typer.Option("--simulate", help="Run the campaign's instruments as byte-level simulators.")
    ] = False,
    cron: Annotated[
        Optional[str], typer.Option("--cron", help="Start a run on this cron schedule, e.g. '0 * * * *' (hourly).")
    ] = None,
    interval_min: Annotated[
        Optional[float], typer.Option("--interval-min", help="Start a run every N minutes.")
    ] = None,
    timezone: Annotated[
        Optional[str], typer.Option("--timezone", help="IANA time zone of --cron times (default: this machine's).")
    ] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Deployment name (default: the campaign's name).")] = None,
) -> None:
    """Serve the campaign as a Prefect deployment on this machine until Ctrl-C.

    Needs a Prefect server (PREFECT_API_URL). Each run, started by the schedule, the UI's Run button or
    `prefect deployment run 'campaign/NAME'`, resumes the campaign from its ledger on this machine; a run
    that finds the budget used does nothing, one that finds the campaign busy is skipped.
    """
    campaign = _load(campaign_file)
    from orchestrator.simulation import build_simulator

    with user_errors(campaign_file):
        if campaign.instruments is None:
            build_simulator(campaign)  # a bad simulator is reported now, not at the first run
        from orchestrator.transfer import load_priors

        load_priors(campaign)
    configure_prefect(results_dir)
    from orchestrator import service

    with user_errors():
        schedule = service.parse_schedule(cron, interval_min, timezone)
        service.require_api_url()
    service.serve_campaign(
        campaign,
        campaign_file,
        results_dir,
        simulate=simulate,
        schedule=schedule,
        name=name,
        echo=lambda text: console.print(escape(text), highlight=False, soft_wrap=True),
    )


@app.command()
def deploy(
    campaign_file: CampaignFile,
    pool: Annotated[str, typer.Option("--pool", help="Process work pool whose worker runs on the PC that owns the instruments.")],
    queue: Annotated[Optional[str], typer.Option("--queue", help="Work queue in the pool (default: the pool's default).")] = None,
    results_dir: ResultsDir = Path("results"),
    simulate: Annotated[
        bool, typer.Option("--simulate", help="Run the campaign's instruments as byte-level simulators.")
    ] = False,
    cron: Annotated[Optional[str], typer.Option("--cron", help="Start a run on this cron schedule.")] = None,
    interval_min: Annotated[Optional[float], typer.Option("--interval-min", help="Start a run every N minutes.")] = None,
    timezone: Annotated[
        Optional[str], typer.Option("--timezone", help="IANA time zone of --cron times (default: this machine's).")
    ] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Deployment name (default: the campaign's name).")] = None,
) -> None:
    """Register the campaign as a deployment of a process work pool, then return.

    A `prefect worker start --pool POOL` on the lab PC that owns the instruments runs it; the campaign file and
    RESULTS are bound as absolute paths, which must exist on that PC, and the orchestrator must be installed there.
    """
    campaign = _load(campaign_file)
    configure_prefect(results_dir)
    from orchestrator import service

    with user_errors():
        schedule = service.parse_schedule(cron, interval_min, timezone)
        service.require_api_url()
        deployment_id = service.deploy_campaign(
            campaign, campaign_file, results_dir, pool=pool, queue=queue, simulate=simulate, schedule=schedule, name=name
        )
    console.print(
        f"deployment 'campaign/{escape(name or campaign.name)}' ({deployment_id}) in work pool '{escape(pool)}'"
        f"{f', queue {escape(queue)!r}' if queue else ''}; {escape(schedule.describe())}\n"
        f"  its runs start when a worker polls the pool: `prefect worker start --pool {escape(pool)}` on the lab PC "
        "that owns the instruments",
        highlight=False,
        soft_wrap=True,
    )


if __name__ == "__main__":
    app()
