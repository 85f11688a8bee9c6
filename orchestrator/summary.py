"""A campaign at a glance, from its ledger: what the CLI's ``report`` command and the Prefect flow's artifacts show.

Pure reads of a :class:`~orchestrator.loop.CampaignRunner` (its ledger and campaign): nothing here writes to the
ledger or runs an experiment. :func:`campaign_summary` gathers the facts (counts, best so far, Pareto front,
transfer method, leave-one-out fit quality of the outcome GPs); :func:`summary_markdown`,
:func:`experiments_table` and :func:`convergence_png` present them; :func:`write_report` writes them all to a
folder, with a self-contained HTML page.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import html
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from orchestrator.ledger import Experiment
from orchestrator.report import fmt
from orchestrator.threads import single_threaded

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from orchestrator.campaign import Campaign
    from orchestrator.loop import CampaignRunner

MIN_COMPLETED_FOR_FIT = 3
ERROR_CHARS = 120
SOBOL = "sobol"  # the generator name of the space-filling design (``propose``)


@dataclass(frozen=True)
class Point:
    """One completed experiment as the summary shows it.

    Attributes:
        experiment_id: the ledger id.
        generator: what proposed it (``sobol`` or the BO generator).
        conditions: parameter values.
        outcomes: measured outcomes.
        score: the scalar objective score (higher is better), as ``CampaignRunner.best`` ranks it.
        feasible: whether every outcome constraint holds.
    """

    experiment_id: int
    generator: str
    conditions: dict[str, Any]
    outcomes: dict[str, float]
    score: float
    feasible: bool


@dataclass(frozen=True)
class FitQuality:
    """Leave-one-out quality of one outcome's GP on the completed experiments (hyperparameters fitted on all).

    Attributes:
        outcome: the outcome's name.
        unit: its unit, if the campaign gives one.
        n: completed experiments the GP was fitted to.
        method: ``gp``, or the transfer method the outcome's model used (``prior_mean``, ``multitask``, ``none``).
        rmse: root-mean-square LOO prediction error, in the outcome's units.
        nrmse: ``rmse`` over the outcome's sample standard deviation (1 is no better than predicting the mean).
        mlpd: mean LOO log predictive density (nats per experiment) of the outcome standardized by its sample
            standard deviation, so outcomes in different units compare (a unit Gaussian scores about -1.42).
        coverage95: share of experiments inside their LOO 95 % predictive interval (calibration; ideal 0.95).
    """

    outcome: str
    unit: str | None
    n: int
    method: str
    rmse: float
    nrmse: float
    mlpd: float
    coverage95: float


@dataclass(frozen=True)
class Summary:
    """What a campaign's ledger says, ready to present (plain data: ``dataclasses.asdict`` makes it JSON).

    Attributes:
        campaign: the campaign's name.
        description: its free-text description (untrusted text: escape before rendering).
        counts: experiments by state (``proposed``, ``running``, ``completed``, ``failed``).
        budget_used: experiments no longer proposed or running (completed, failed, or any other settled state).
        budget_total: ``budget.max_experiments``.
        objectives: one line per objective, e.g. ``maximize yield_pct``.
        constraints: one line per outcome constraint, e.g. ``coverage >= 0.9``.
        best: the best completed experiment (``CampaignRunner.best``), or ``None`` before any completed.
        pareto_front: the current front, for campaigns with several objectives (sorted by the first objective's
            outcome); empty otherwise.
        multi_objective: whether the campaign has several objectives.
        transfer: the ``transfer`` entries of the latest proposal that recorded any (outcome, prior, method,
            ``loo_nats``, ``heldout_nats``).
        transfer_experiment_id: the experiment whose proposal recorded ``transfer``.
        priors: the campaign's configured priors as ``name → outcome (method)``.
        fit: leave-one-out quality per modelled outcome.
        fit_skipped: why ``fit`` is empty, when it is.
        units: the unit of each parameter and outcome that has one, by name.
    """

    campaign: str
    description: str
    counts: dict[str, int]
    budget_used: int
    budget_total: int
    objectives: list[str]
    constraints: list[str]
    best: Point | None
    pareto_front: list[Point] = field(default_factory=list)
    multi_objective: bool = False
    transfer: list[dict[str, Any]] = field(default_factory=list)
    transfer_experiment_id: int | None = None
    priors: list[str] = field(default_factory=list)
    fit: list[FitQuality] = field(default_factory=list)
    fit_skipped: str | None = None
    units: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Experiments in the ledger, in any state."""
        return sum(self.counts.values())


# --- gathering ------------------------------------------------------------------------------------------------
def campaign_summary(runner: "CampaignRunner", *, fit_quality: bool = True, surrogate: Any = None) -> Summary:
    """Summarizes the runner's ledger.

    Args:
        runner: the campaign bound to its ledger (the backend is never called).
        fit_quality: report the outcome GPs' leave-one-out quality; ``False`` skips it.
        surrogate: the loop's surrogate, fitted to the ledger's completed experiments as they are now
            (``CampaignRunner.refit``); its GPs are scored instead of fitting them again. Without one, the
            GPs are fitted here (one fit per modelled outcome, a fraction of a second on a few dozen).
    """
    campaign = runner.campaign
    counts = runner.ledger.counts()
    exps = runner.ledger.experiments()
    points = _points(runner, [e for e in exps if e.state == "completed"])
    best = runner.best()
    best_point = next(p for p in points if p.experiment_id == best.experiment.id) if best else None
    multi = len(campaign.objectives) > 1
    front: list[Point] = []
    if multi:
        ids = {e.id for e in runner.pareto_front()}
        first = campaign.objectives[0].outcome
        front = sorted((p for p in points if p.experiment_id in ids),
                       key=lambda p: (p.outcomes[first], p.experiment_id))
    transfer, transfer_id = _latest_transfer(exps)
    if not fit_quality:
        fits, skipped = [], "not computed here (the models take over after the space-filling design)"
    else:
        fits, skipped = _fit_quality(runner, surrogate)
    return Summary(
        campaign=campaign.name,
        description=campaign.description,
        counts=counts,
        budget_used=sum(n for state, n in counts.items() if state not in ("proposed", "running")),
        budget_total=campaign.budget.max_experiments,
        objectives=[_objective_text(o) for o in campaign.objectives],
        constraints=[_constraint_text(c) for c in campaign.outcome_constraints],
        best=best_point,
        pareto_front=front,
        multi_objective=multi,
        transfer=transfer,
        transfer_experiment_id=transfer_id,
        priors=[f"{p.name} → {p.outcome} ({p.method})" for p in runner.prior_data],
        fit=fits,
        fit_skipped=skipped,
        units={x.name: x.unit for x in [*campaign.parameters, *campaign.outcomes] if getattr(x, "unit", None)},
    )


def _points(runner: "CampaignRunner", done: list[Experiment]) -> list[Point]:
    """Scores every completed experiment with the objective ``CampaignRunner.best`` uses (same data scales)."""
    if not done:
        return []
    Y = torch.tensor([[e.outcomes[n] for n in runner.outcome_names] for e in done], dtype=torch.double)
    objective = runner.objective(Y)
    scores, ok = objective(Y).tolist(), objective.feasible(Y).tolist()
    return [
        Point(e.id, e.generator, dict(e.conditions), dict(e.outcomes or {}), float(s), bool(f))
        for e, s, f in zip(done, scores, ok)
    ]


def _latest_transfer(exps: list[Experiment]) -> tuple[list[dict[str, Any]], int | None]:
    for e in reversed(exps):
        entries = e.proposal_info.get("transfer")
        if entries:
            return [dict(t) for t in entries], e.id
    return [], None


def _objective_text(o) -> str:
    goal = f"bring to {o.target:g} ± {o.tolerance:g}" if o.goal == "target" else o.goal
    weight = f" (weight {o.weight:g})" if o.weight != 1.0 else ""
    return f"{goal} {o.outcome}{weight}"


def _constraint_text(c) -> str:
    parts = ([f"{c.outcome} >= {c.min:g}"] if c.min is not None else []) + (
        [f"{c.outcome} <= {c.max:g}"] if c.max is not None else []
    )
    return " and ".join(parts)


# --- model fit quality ----------------------------------------------------------------------------------------
def _fit_quality(runner: "CampaignRunner", surrogate: Any = None) -> tuple[list[FitQuality], str | None]:
    """LOO quality of the GPs the loop fits: the objective's and constraints' outcomes, priors included.

    Scores ``surrogate``'s outcome GPs where given; otherwise fits them, leaving the success model out
    (failures are not regression data), so each modelled outcome costs one fit (more where a prior's
    ``auto`` method compares candidates, as the loop does).
    """
    from orchestrator.proposer import fit_for_objective

    obs = runner.observations()
    n = obs.X.shape[0]
    if n < MIN_COMPLETED_FOR_FIT:
        return [], f"needs at least {MIN_COMPLETED_FOR_FIT} completed experiments (have {n})"
    obs = dataclasses.replace(obs, X_failed=obs.X_failed[:0], X_pending=obs.X_pending[:0])
    objective = runner.objective(obs.Y)
    cols = list(objective.all_columns)
    units = {o.name: o.unit for o in runner.campaign.outcomes}
    try:
        with single_threaded(), torch.random.fork_rng():
            torch.manual_seed(runner.campaign.seed)  # a summary of the same ledger repeats exactly
            if surrogate is None:
                surrogate = fit_for_objective(runner.space, obs, objective, runner.prior_models())
            out = []
            for j, k in enumerate(cols):
                name = runner.outcome_names[k]
                resid, var = loo_predictions(surrogate.model.models[j], n)
                method = surrogate.transfer.get(j, {}).get("method", "gp")
                out.append(_metrics(name, units.get(name), method, obs.Y[:, k], resid, var))
    except (RuntimeError, ValueError) as exc:  # e.g. a Cholesky failure on duplicated points
        return [], f"model fit failed numerically ({str(exc)[:120]})"
    return out, None


def loo_predictions(model, n_target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form leave-one-out residuals and predictive variances (with noise) of a fitted exact GP.

    For the last ``n_target`` training points (a multitask GP's experiments follow its calculated rows), in the
    outcome's units: ``y_i - mu_{-i} = [K^-1 (y - m)]_i / [K^-1]_ii`` and ``var_{-i} = 1 / [K^-1]_ii``, with the
    hyperparameters fitted on all points (Rasmussen & Williams, eq. 5.12).

    Returns:
        ``(residuals, variances)``, each of shape ``n_target``.
    """
    model.train()  # the prior over the training inputs, as in ``transfer.loo_log_likelihood``
    try:
        with torch.no_grad():
            inputs = model.train_inputs
            dist = model.likelihood(model(*inputs), *inputs)
            L = torch.linalg.cholesky(dist.covariance_matrix)
            K_inv = torch.cholesky_inverse(L)
            diag = K_inv.diagonal()
            resid = (K_inv @ (model.train_targets - dist.mean).unsqueeze(-1)).squeeze(-1) / diag
            var = 1.0 / diag
    finally:
        model.eval()
    transform = getattr(model, "outcome_transform", None)
    stdv = float(transform.stdvs.reshape(-1)[0]) if transform is not None else 1.0  # back from standardized units
    return resid[-n_target:] * stdv, var[-n_target:] * stdv**2


def _metrics(
    name: str, unit: str | None, method: str, y: torch.Tensor, resid: torch.Tensor, var: torch.Tensor
) -> FitQuality:
    sd = float(y.std()) if y.numel() > 1 else 0.0
    sd = sd if sd > 1e-12 else 1.0  # a constant outcome: report in its own units rather than divide by zero
    var = var.clamp_min(1e-300)
    rmse = float(resid.pow(2).mean().sqrt())
    z2 = resid.pow(2) / var
    mlpd = float((-0.5 * torch.log(2 * math.pi * var / sd**2) - 0.5 * z2).mean())
    coverage = float((z2 <= 1.959964**2).double().mean())
    return FitQuality(name, unit, int(y.numel()), method, rmse, rmse / sd, mlpd, coverage)


# --- markdown -------------------------------------------------------------------------------------------------
def _md(value: Any) -> str:
    """Text safe inside markdown (and markdown table cells): HTML-escaped, pipes and newlines neutralized.

    Campaign text is untrusted; escaping keeps a description like ``<script>`` inert wherever the markdown is
    rendered (Prefect's UI, a browser).
    """
    text = fmt(value) if not isinstance(value, str) else value
    return html.escape(text, quote=False).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _counts_text(counts: dict[str, int]) -> str:
    """``8 completed, 1 failed, 0 running, 0 proposed``, plus any other state (e.g. ``unknown``) that occurs."""
    main = ("completed", "failed", "running", "proposed")
    extra = [k for k, n in counts.items() if k not in main and n]
    return ", ".join(f"{counts.get(k, 0)} {k}" for k in (*main, *extra))


def _unit(unit: str | None) -> str:
    return f" {unit}" if unit else ""


def summary_markdown(summary: Summary) -> str:
    """The summary as markdown: counts, best so far, Pareto front, transfer method, model fit quality."""
    s = summary
    lines = [f"# Campaign {_md(s.campaign)}", ""]
    if s.description:
        lines += [f"> {_md(s.description)}", ""]
    lines += [
        f"**Experiments:** {s.budget_used} of {s.budget_total} used — {_md(_counts_text(s.counts))}",
        "",
        f"**Objective:** {_md('; '.join(s.objectives))}",
    ]
    if s.constraints:
        lines.append(f"  \n**Outcome constraints:** {_md('; '.join(s.constraints))}")
    lines.append("")
    lines += ["## Best so far", ""]
    if s.total == 0:
        lines += ["No experiments yet.", ""]
    elif s.best is None:
        lines += ["No experiment has completed yet.", ""]
    else:
        b = s.best
        lines.append(f"Experiment **#{b.experiment_id}** ({_md(b.generator)}), score {b.score:.4g}")
        if not b.feasible:
            lines.append("  \n*No experiment meets the outcome constraints yet: this is the best unconstrained score.*")
        lines += ["", "| | value |", "| --- | --- |"]
        lines += [f"| {_md(k)} | {_md(fmt(v) + _unit(s.units.get(k)))} |" for k, v in b.conditions.items()]
        lines += [f"| **{_md(k)}** | **{_md(fmt(v) + _unit(s.units.get(k)))}** |" for k, v in b.outcomes.items()]
        lines.append("")
    if s.multi_objective:
        lines += [f"## Pareto front ({len(s.pareto_front)} experiment(s))", ""]
        if s.pareto_front:
            outs = list(s.pareto_front[0].outcomes)
            conds = list(s.pareto_front[0].conditions)
            heads = [n + (f" [{s.units[n]}]" if n in s.units else "") for n in outs + conds]
            lines.append("| id | " + " | ".join(_md(h) for h in heads) + " |")
            lines.append("|" + " --- |" * (1 + len(outs) + len(conds)))
            for p in s.pareto_front:
                cells = [p.outcomes[n] for n in outs] + [p.conditions.get(n, "") for n in conds]
                lines.append(f"| #{p.experiment_id} | " + " | ".join(_md(v) for v in cells) + " |")
        else:
            lines.append("No completed experiment meets the outcome constraints yet.")
        lines.append("")
    if s.transfer or s.priors:
        lines += ["## Transfer from calculated data", ""]
        if s.transfer:
            lines += [f"As chosen for experiment #{s.transfer_experiment_id}'s proposal:", ""]
            lines += ["| outcome | prior | method | LOO nats | held-out nats |", "| --- | --- | --- | --- | --- |"]
            for t in s.transfer:
                lines.append(
                    f"| {_md(t.get('outcome', ''))} | {_md(t.get('prior', ''))} | **{_md(t.get('method', ''))}** | "
                    f"{_md(_nats(t.get('loo_nats')))} | {_md(_nats(t.get('heldout_nats')))} |"
                )
        else:
            lines.append(f"Priors configured ({_md('; '.join(s.priors))}); not used yet (space-filling design).")
        lines.append("")
    lines += ["## Model fit (leave-one-out)", ""]
    if s.fit:
        lines += [
            "| outcome | model | n | LOO RMSE | RMSE / sd | mean log pred. density (sd units) | 95 % coverage |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for f in s.fit:
            lines.append(
                f"| {_md(f.outcome)} | {_md(f.method)} | {f.n} | {_md(f'{f.rmse:.4g}{_unit(f.unit)}')} | "
                f"{f.nrmse:.3f} | {f.mlpd:.3f} | {f.coverage95:.0%} |"
            )
    else:
        lines.append(f"Not computed: {_md(s.fit_skipped or 'no modelled outcome')}.")
    lines.append("")
    return "\n".join(lines)


def _nats(table: Any) -> str:
    if not isinstance(table, dict) or not table:
        return "—"
    return ", ".join(f"{k} {v:.3g}" if isinstance(v, (int, float)) else f"{k} {v}" for k, v in table.items())


# --- the table of experiments ---------------------------------------------------------------------------------
def _round(value: Any, digits: int) -> Any:
    """Floats to ``digits`` significant digits (display, not archive: ``orchestrator export`` keeps full precision)."""
    if isinstance(value, float) and math.isfinite(value) and value != 0.0:
        return float(f"{value:.{digits}g}")
    return value


def _columns(campaign: "Campaign") -> list[str]:
    return ["id", "state", "generator", *(p.name for p in campaign.parameters), *(o.name for o in campaign.outcomes),
            "error"]


def experiments_table(runner: "CampaignRunner") -> list[dict[str, Any]]:
    """One row per experiment, in id order: id, state, generator, a column per parameter (4 significant
    digits), a column per outcome (5 significant digits; ``None`` where not measured), error (shortened).

    Values are JSON-native (int, float, str, None), as Prefect table artifacts need.
    """
    params = [p.name for p in runner.campaign.parameters]
    rows = []
    for e in runner.ledger.experiments():
        row: dict[str, Any] = {"id": e.id, "state": e.state, "generator": e.generator}
        row.update({p: _round(e.conditions.get(p), 4) for p in params})
        row.update({o: _round((e.outcomes or {}).get(o), 5) for o in runner.outcome_names})
        err = " ".join(e.error.split()) if e.error else None
        row["error"] = err if err is None or len(err) <= ERROR_CHARS else err[: ERROR_CHARS - 1] + "…"
        rows.append(row)
    return rows


# --- the convergence plot -------------------------------------------------------------------------------------
def _display_values(campaign: "Campaign", points: list[Point]) -> tuple[list[float], str, bool]:
    """What the plot's y axis shows: per point the value, the axis label, and whether higher is better.

    A single objective is plotted in its outcome's units (its score is the same ranking); several as their
    weighted score.
    """
    if len(campaign.objectives) != 1:
        return [p.score for p in points], "weighted objective score (higher is better)", True
    o = campaign.objectives[0]
    unit = next((x.unit for x in campaign.outcomes if x.name == o.outcome), None)
    units = f" [{unit}]" if unit else ""
    if o.goal == "target":
        vals = [abs(p.outcomes[o.outcome] - o.target) for p in points]
        return vals, f"|{o.outcome} − {o.target:g}|{units} (lower is better)", False
    vals = [p.outcomes[o.outcome] for p in points]
    return vals, f"{o.outcome}{units} ({o.goal})", o.goal == "maximize"


def convergence_figure(runner: "CampaignRunner") -> "Figure":
    """The convergence figure (not yet rendered): running best and each experiment's own value by experiment
    id, failed experiments marked, the space-filling design shaded (its patch has gid ``sobol-phase``); for
    several objectives a second panel with the Pareto front of the first two."""
    from matplotlib.figure import Figure  # no pyplot: no global figure registry or GUI backend involved

    campaign = runner.campaign
    exps = runner.ledger.experiments()
    done = [e for e in exps if e.state == "completed"]
    points = _points(runner, done)
    multi = len(campaign.objectives) > 1
    fig = Figure(figsize=(12.0, 5.0) if multi else (7.5, 5.0), dpi=100, layout="constrained")
    ax = fig.add_subplot(1, 2, 1) if multi else fig.add_subplot(1, 1, 1)
    fig.suptitle(f"Campaign {campaign.name}")
    ax.set_xlabel("experiment id")
    if not exps:
        ax.set_ylabel("objective")
        ax.text(0.5, 0.5, "no experiments yet", ha="center", va="center", transform=ax.transAxes)
        return fig
    values, ylabel, higher = _display_values(campaign, points)
    ax.set_ylabel(ylabel)
    ax.set_xlim(0.5, max(e.id for e in exps) + 0.5)

    # The design phase: the leading run of Sobol proposals (later "sobol" rows are fallbacks, not the design).
    design = []
    for e in exps:
        if e.generator != SOBOL:
            break
        design.append(e.id)
    if design:
        ax.axvspan(min(design) - 0.5, max(design) + 0.5, color="0.88", zorder=0, gid="sobol-phase",
                   label=f"Sobol design ({len(design)})")
        ax.text((min(design) + max(design)) / 2, 0.98, "Sobol design", transform=ax.get_xaxis_transform(),
                ha="center", va="top", fontsize=9, color="0.35")

    ids = [p.experiment_id for p in points]
    feasible = [p.feasible for p in points]
    ok = [(i, v) for i, v, f in zip(ids, values, feasible) if f]
    bad = [(i, v) for i, v, f in zip(ids, values, feasible) if not f]
    if ok:
        ax.scatter(*zip(*ok), s=22, color="tab:blue", zorder=3, label="experiment")
    if bad:
        ax.scatter(*zip(*bad), s=22, facecolors="none", edgecolors="tab:orange", zorder=3,
                   label="violates outcome constraints")
    # Running best over feasible experiments, as CampaignRunner.best ranks them (all of them while none is).
    track = ok if ok else list(zip(ids, values))
    if track:
        run_x, run_y, cur = [], [], None
        for i, v in track:
            cur = v if cur is None else (max(cur, v) if higher else min(cur, v))
            run_x.append(i)
            run_y.append(cur)
        run_x.append(max(e.id for e in exps) + 0.5)
        run_y.append(cur)
        ax.step(run_x, run_y, where="post", color="tab:green", linewidth=2, zorder=2, label="best so far")
    failed = [e.id for e in exps if e.state == "failed"]
    if failed:
        # Failed experiments have no value: marked along the bottom edge, in axes coordinates.
        ax.scatter(failed, [0.03] * len(failed), marker="x", color="tab:red", zorder=4,
                   transform=ax.get_xaxis_transform(), clip_on=False, label=f"failed ({len(failed)})")
    unsettled = [e.id for e in exps if e.state not in ("completed", "failed", "proposed", "running")]
    if unsettled:  # e.g. "unknown": dispatched, outcome not known; a person settles it
        ax.scatter(unsettled, [0.03] * len(unsettled), marker="$?$", color="0.3", zorder=4,
                   transform=ax.get_xaxis_transform(), clip_on=False, label=f"unsettled ({len(unsettled)})")
    if not points:
        ax.text(0.5, 0.5, "no experiment completed yet", ha="center", va="center", transform=ax.transAxes)
    ax.grid(True, alpha=0.3)
    # Below the axes: inside, it would hide the failed markers along the bottom edge.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=4, fontsize=8, frameon=False)
    if multi:
        _pareto_panel(fig.add_subplot(1, 2, 2), runner, points)
    return fig


def _pareto_panel(ax, runner: "CampaignRunner", points: list[Point]) -> None:
    """The first two objectives' outcomes of every completed experiment, the Pareto front highlighted."""
    o1, o2 = runner.campaign.objectives[:2]
    units = {o.name: o.unit for o in runner.campaign.outcomes}

    def label(o) -> str:
        goal = f"target {o.target:g}" if o.goal == "target" else o.goal
        return f"{o.outcome}{f' [{units[o.outcome]}]' if units.get(o.outcome) else ''} ({goal})"

    ax.set_xlabel(label(o1))
    ax.set_ylabel(label(o2))
    ax.set_title("Pareto front" + (" (first two objectives)" if len(runner.campaign.objectives) > 2 else ""),
                 fontsize=10)
    if not points:
        ax.text(0.5, 0.5, "no experiment completed yet", ha="center", va="center", transform=ax.transAxes)
        return
    front_ids = {e.id for e in runner.pareto_front()}
    rest = [p for p in points if p.experiment_id not in front_ids]
    front = sorted((p for p in points if p.experiment_id in front_ids), key=lambda p: p.outcomes[o1.outcome])
    if rest:
        ax.scatter([p.outcomes[o1.outcome] for p in rest], [p.outcomes[o2.outcome] for p in rest], s=18,
                   color="0.6", label="dominated")
    if front:
        xs, ys = [p.outcomes[o1.outcome] for p in front], [p.outcomes[o2.outcome] for p in front]
        ax.plot(xs, ys, "o-", color="tab:purple", markersize=6, gid="pareto-front", label=f"front ({len(front)})")
        for p, x, y in zip(front, xs, ys):
            ax.annotate(f"#{p.experiment_id}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


def convergence_png(runner: "CampaignRunner", path: str | Path | None = None) -> bytes:
    """The convergence figure (:func:`convergence_figure`) as PNG bytes, also written to ``path`` if given."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = convergence_figure(runner)
    FigureCanvasAgg(fig)  # render with Agg whatever backend pyplot is set to elsewhere
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    png = buf.getvalue()
    if path is not None:
        Path(path).write_bytes(png)
    return png


# --- the report folder ----------------------------------------------------------------------------------------
def write_report(runner: "CampaignRunner", out_dir: str | Path) -> dict[str, Path]:
    """Writes ``summary.md``, ``convergence.png``, ``experiments.csv`` and a self-contained ``report.html``.

    Returns:
        The written paths by kind: ``markdown``, ``png``, ``csv``, ``html``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = campaign_summary(runner)
    rows = experiments_table(runner)
    columns = _columns(runner.campaign)
    paths = {
        "markdown": out / "summary.md",
        "png": out / "convergence.png",
        "csv": out / "experiments.csv",
        "html": out / "report.html",
    }
    markdown = summary_markdown(summary)
    paths["markdown"].write_text(markdown, encoding="utf-8")
    png = convergence_png(runner, paths["png"])
    with paths["csv"].open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    paths["html"].write_text(_html(summary, columns, rows, png), encoding="utf-8")
    return paths


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:80em;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f3f3f3}tr.failed td{color:#a00}img{max-width:100%}blockquote{color:#555}
"""


def _html(summary: Summary, columns: list[str], rows: list[dict[str, Any]], png: bytes) -> str:
    """A page with everything inline (CSS, image as a data URI): it opens anywhere, mailed or archived.

    Every piece of text goes through ``html.escape``; the only markup is this function's own.
    """
    e = lambda v: html.escape(v if isinstance(v, str) else fmt(v))  # noqa: E731
    s = summary
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Campaign {e(s.campaign)} report</title><style>{_CSS}</style></head><body>",
        f"<h1>Campaign {e(s.campaign)}</h1>",
    ]
    if s.description:
        parts.append(f"<blockquote>{e(s.description)}</blockquote>")
    parts.append(
        f"<p><b>Experiments:</b> {s.budget_used} of {s.budget_total} used — {e(_counts_text(s.counts))}<br>"
        f"<b>Objective:</b> {e('; '.join(s.objectives))}"
        + (f"<br><b>Outcome constraints:</b> {e('; '.join(s.constraints))}" if s.constraints else "")
        + "</p>"
    )
    parts.append("<h2>Best so far</h2>")
    if s.best is None:
        parts.append(f"<p>{'No experiments yet.' if s.total == 0 else 'No experiment has completed yet.'}</p>")
    else:
        b = s.best
        parts.append(f"<p>Experiment <b>#{b.experiment_id}</b> ({e(b.generator)}), score {b.score:.4g}"
                     + ("" if b.feasible else " — <i>no experiment meets the outcome constraints yet</i>") + "</p>")
        parts.append(_html_table(["", "value"], [[k, fmt(v) + _unit(s.units.get(k))]
                                                 for k, v in {**b.conditions, **b.outcomes}.items()]))
    if s.multi_objective:
        parts.append(f"<h2>Pareto front ({len(s.pareto_front)} experiment(s))</h2>")
        if s.pareto_front:
            outs, conds = list(s.pareto_front[0].outcomes), list(s.pareto_front[0].conditions)
            body = [[f"#{p.experiment_id}", *(p.outcomes[n] for n in outs), *(p.conditions.get(n, "") for n in conds)]
                    for p in s.pareto_front]
            parts.append(_html_table(["id", *(n + (f" [{s.units[n]}]" if n in s.units else "") for n in outs + conds)],
                                     body))
    if s.transfer:
        parts.append(f"<h2>Transfer from calculated data</h2><p>As chosen for experiment "
                     f"#{s.transfer_experiment_id}'s proposal:</p>")
        parts.append(_html_table(
            ["outcome", "prior", "method", "LOO nats", "held-out nats"],
            [[t.get("outcome", ""), t.get("prior", ""), t.get("method", ""), _nats(t.get("loo_nats")),
              _nats(t.get("heldout_nats"))] for t in s.transfer],
        ))
    parts.append("<h2>Model fit (leave-one-out)</h2>")
    if s.fit:
        parts.append(_html_table(
            ["outcome", "model", "n", "LOO RMSE", "RMSE / sd", "mean log pred. density (sd units)", "95 % coverage"],
            [[f.outcome, f.method, str(f.n), f"{f.rmse:.4g}{_unit(f.unit)}", f"{f.nrmse:.3f}", f"{f.mlpd:.3f}",
              f"{f.coverage95:.0%}"] for f in s.fit],
        ))
    else:
        parts.append(f"<p>Not computed: {e(s.fit_skipped or 'no modelled outcome')}.</p>")
    data_uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    parts.append(f'<h2>Convergence</h2><img alt="convergence plot" src="{data_uri}">')
    parts.append(f"<h2>Experiments ({len(rows)})</h2>")
    parts.append(_html_table(columns, [[r.get(k) for k in columns] for r in rows],
                             classes=[r["state"] for r in rows]))
    parts.append("</body></html>")
    return "\n".join(parts)


def _html_table(header: list[str], body: list[list[Any]], classes: list[str] | None = None) -> str:
    def cell(v: Any) -> str:
        return "" if v is None else html.escape(v if isinstance(v, str) else fmt(v))

    out = ["<table><thead><tr>" + "".join(f"<th>{cell(h)}</th>" for h in header) + "</tr></thead><tbody>"]
    for i, row in enumerate(body):
        cls = f' class="{html.escape(classes[i])}"' if classes else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


__all__ = [
    "FitQuality",
    "Point",
    "Summary",
    "campaign_summary",
    "convergence_figure",
    "convergence_png",
    "experiments_table",
    "loo_predictions",
    "summary_markdown",
    "write_report",
]
