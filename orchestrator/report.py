"""What a person sees on the console: a progress line per experiment and summary tables."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from orchestrator.ledger import Experiment, Ledger

if TYPE_CHECKING:
    from orchestrator.loop import CampaignRunner


def fmt(value: Any) -> str:
    """Short, readable form of a condition or outcome value."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class ProgressPrinter:
    """Prints one line whenever an experiment finishes (called from experiment threads)."""

    def __init__(self, console: Console):
        self.console = console
        self._lock = threading.Lock()

    def __call__(self, kind: str, exp: Experiment, runner: "CampaignRunner") -> None:
        if kind not in ("completed", "failed", "unknown"):
            return
        with self._lock:
            counts = runner.ledger.counts()
            done = counts["completed"] + counts["failed"] + counts["unknown"]
            budget = runner.campaign.budget.max_experiments
            if exp.state == "completed":
                result = "  ".join(f"{k}={fmt(v)}" for k, v in (exp.outcomes or {}).items())
                status = f"[green]ok[/]    {result}"
            elif exp.state == "unknown":
                status = f"[magenta]unknown[/] {escape(exp.error or '')}"
            else:
                status = f"[red]failed[/] {escape(exp.error or '')}"
            best = runner.best()
            best_txt = f"  [dim]best #{best.experiment.id} score {best.score:.4g}[/]" if best else ""
            conds = ", ".join(f"{k}={fmt(v)}" for k, v in exp.conditions.items())
            self.console.print(
                f"[bold]{done:>4}/{budget}[/] #{exp.id:<4} [dim]{exp.generator:<12}[/] {status}{best_txt}\n"
                f"          [dim]{conds}[/]",
                highlight=False,
            )


def summary_table(runner: "CampaignRunner") -> Table:
    """Best conditions, best measured values and experiments used."""
    counts = runner.ledger.counts()
    best = runner.best()
    table = Table(title=f"Campaign '{runner.campaign.name}' summary", show_header=True, header_style="bold")
    table.add_column("")
    table.add_column("value", overflow="fold")
    used = counts["completed"] + counts["failed"] + counts["unknown"]
    table.add_row("experiments used", f"{used} of {runner.campaign.budget.max_experiments}")
    table.add_row("completed / failed", f"{counts['completed']} / {counts['failed']}")
    if counts["unknown"]:
        table.add_row(
            "[magenta]unknown[/]",
            f"{counts['unknown']} (a crash left their fate unknown; settle each with `orchestrator resolve`)",
        )
    if best is None:
        table.add_row("best", "no experiment completed")
        return table
    table.add_row("best experiment", f"#{best.experiment.id} ({best.experiment.generator}), score {best.score:.4g}")
    units = {p.name: getattr(p, "unit", None) for p in runner.campaign.parameters}
    for name, value in best.experiment.conditions.items():
        table.add_row(f"  {name}", f"{fmt(value)} {units.get(name) or ''}".rstrip())
    out_units = {o.name: o.unit for o in runner.campaign.outcomes}
    for name, value in (best.experiment.outcomes or {}).items():
        table.add_row(f"  [bold]{name}[/]", f"{fmt(value)} {out_units.get(name) or ''}".rstrip())
    return table


def ledger_table(ledger: Ledger, outcome_names: list[str], limit: int | None = None) -> Table:
    """Every experiment as a row: id, batch, state, generator, conditions, outcomes or error."""
    exps = ledger.experiments()
    if limit is not None:
        exps = exps[-limit:]
    table = Table(show_header=True, header_style="bold")
    for col in ("id", "batch", "state", "by", "conditions", *outcome_names, "error"):
        table.add_column(col, overflow="fold")
    colours = {"completed": "green", "failed": "red", "running": "yellow", "proposed": "cyan", "unknown": "magenta"}
    for e in exps:
        outs = [fmt(e.outcomes[n]) if e.outcomes and n in e.outcomes else "" for n in outcome_names]
        conds = ", ".join(f"{k}={fmt(v)}" for k, v in e.conditions.items())
        table.add_row(
            str(e.id), str(e.batch), f"[{colours[e.state]}]{e.state}[/]", e.generator, conds, *outs, escape(e.error or "")
        )
    return table


def pareto_table(runner: "CampaignRunner") -> Table | None:
    """The current Pareto front (campaigns with several objectives), or None."""
    if len(runner.campaign.objectives) < 2:
        return None
    front = runner.pareto_front()
    names = [o.outcome for o in runner.campaign.objectives]
    goals = {o.outcome: o.goal if o.goal != "target" else f"target {o.target:g}" for o in runner.campaign.objectives}
    table = Table(title=f"Pareto front: {len(front)} experiment(s)", show_header=True, header_style="bold")
    table.add_column("id")
    for n in names:
        table.add_column(f"{n} ({goals[n]})")
    table.add_column("conditions", overflow="fold")
    for e in sorted(front, key=lambda x: (x.outcomes or {}).get(names[0], 0.0)):
        conds = ", ".join(f"{k}={fmt(v)}" for k, v in e.conditions.items())
        table.add_row(str(e.id), *(fmt((e.outcomes or {})[n]) for n in names), conds)
    return table
