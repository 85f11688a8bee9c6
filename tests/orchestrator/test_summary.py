"""The campaign summary and report (orchestrator.summary) against real SQLite ledgers of short campaigns."""

from __future__ import annotations

import base64
import copy
import csv
import html
import io
import math
import re

import numpy as np
import pytest
import torch
from botorch.models import SingleTaskGP
from matplotlib.image import imread

from orchestrator.campaign import Campaign
from orchestrator.errors import ExperimentFailed
from orchestrator.ledger import Ledger
from orchestrator.loop import CampaignRunner, run_loop
from orchestrator.space import DTYPE, SearchSpace
from orchestrator.summary import (
    campaign_summary,
    convergence_figure,
    convergence_png,
    experiments_table,
    loo_predictions,
    summary_markdown,
    write_report,
)
from orchestrator.surrogates import _fit, _gp
from tests.conftest import BASE_CAMPAIGN
from tests.toy_simulators import toy_yield

FAST = {"num_restarts": 2, "raw_samples": 64, "mc_samples": 64}
HOSTILE = "<script>alert('x')</script> & | pipes"
HOSTILE_ERROR = "<img src=x onerror=alert(1)> four layers peeled off " + "and kept peeling " * 20


def fragile_yield(conditions, rng):
    """``toy_yield`` whose four-layer films fail, with an error message full of markup and far too long."""
    if conditions["layers"] == 4:
        raise ExperimentFailed(HOSTILE_ERROR)
    return toy_yield(conditions, rng)


def strong_and_clear(conditions, rng):
    """Two conflicting objectives (``two_goals`` without noise); films fail for y < 0.15."""
    x, y = conditions["x"], conditions["y"]
    if y < 0.15:
        raise ExperimentFailed("film cracked")
    return {"strength": 1.0 - (x - 0.2) ** 2 + 0.3 * y, "clarity": 1.0 - (x - 0.8) ** 2 + 0.3 * y}


def single_campaign() -> Campaign:
    data = copy.deepcopy(BASE_CAMPAIGN)
    data.update(description=HOSTILE, optimizer=FAST)
    return Campaign.model_validate(data)


def multi_campaign() -> Campaign:
    return Campaign.model_validate(
        {
            "name": "two_goals",
            "parameters": [
                {"name": "x", "type": "continuous", "low": 0.0, "high": 1.0, "unit": "mm"},
                {"name": "y", "type": "continuous", "low": 0.0, "high": 1.0},
            ],
            "outcomes": [{"name": "strength", "unit": "MPa"}, {"name": "clarity"}],
            "objectives": [{"outcome": "strength", "goal": "maximize"}, {"outcome": "clarity", "goal": "maximize"}],
            "outcome_constraints": [{"outcome": "clarity", "min": 1.0}],
            "optimizer": FAST,
            "budget": {"max_experiments": 8, "batch_size": 2, "initial_experiments": 6},
            "simulator": {"model": "tests.toy_simulators:two_goals"},  # validated; the runner gets strong_and_clear
            "seed": 4,
        }
    )


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """A finished 8-experiment single-objective campaign (4 Sobol, then GP) with a failure, on a SQLite ledger."""
    campaign = single_campaign()
    with Ledger.for_campaign(campaign, tmp_path_factory.mktemp("single")) as ledger:
        runner = CampaignRunner(campaign, ledger, fragile_yield)
        run_loop(runner)
        yield runner


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    """A finished two-objective campaign with an outcome constraint and failures, on a SQLite ledger."""
    campaign = multi_campaign()
    with Ledger.for_campaign(campaign, tmp_path_factory.mktemp("multi")) as ledger:
        runner = CampaignRunner(campaign, ledger, strong_and_clear)
        run_loop(runner)
        yield runner


def _png_ok(png: bytes) -> np.ndarray:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(io.BytesIO(png), format="png")
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    return image


# --- the summary ---------------------------------------------------------------------------------------------
def test_best_matches_the_ledger_rows(single):
    exps = single.ledger.experiments()
    assert {e.state for e in exps} == {"completed", "failed"}, "the fixture must include a failure"
    done = [e for e in exps if e.state == "completed"]
    top = max(done, key=lambda e: e.outcomes["yield_pct"])
    s = campaign_summary(single)
    assert s.best is not None
    assert s.best.experiment_id == top.id
    assert s.best.conditions == top.conditions and s.best.outcomes == top.outcomes
    assert s.best.score == pytest.approx(top.outcomes["yield_pct"])  # one objective, weight 1: score is the yield
    assert (s.counts["completed"], s.counts["failed"], s.total) == (len(done), len(exps) - len(done), len(exps))
    assert (s.budget_used, s.budget_total) == (8, 8)
    assert s.objectives == ["maximize yield_pct"] and not s.multi_objective and s.pareto_front == []


def test_best_and_front_honour_the_outcome_constraint(multi):
    done = multi.ledger.experiments(["completed"])
    Y = np.array([[e.outcomes["strength"], e.outcomes["clarity"]] for e in done])
    ok = Y[:, 1] >= 1.0
    assert ok.any() and not ok.all(), "the constraint must bite in this fixture"
    score = (Y / Y.std(axis=0, ddof=1)).sum(axis=1)  # weighted mode, scales from the data's spread
    s = campaign_summary(multi)
    assert s.best.experiment_id == done[int(np.argmax(np.where(ok, score, -np.inf)))].id
    assert s.best.feasible and s.best.score == pytest.approx(score[ok].max())
    feasible = [i for i in range(len(done)) if ok[i]]
    front = {done[i].id for i in feasible
             if not any((Y[j] >= Y[i]).all() and (Y[j] > Y[i]).any() for j in feasible)}
    assert {p.experiment_id for p in s.pareto_front} == front
    strengths = [p.outcomes["strength"] for p in s.pareto_front]
    assert strengths == sorted(strengths)
    assert s.constraints == ["clarity >= 1"]


def test_multi_objective_markdown_has_a_pareto_table(multi):
    s = campaign_summary(multi, fit_quality=False)
    md = summary_markdown(s)
    assert f"## Pareto front ({len(s.pareto_front)} experiment(s))" in md
    assert "| id | strength [MPa] | clarity | x [mm] | y |" in md
    for p in s.pareto_front:
        assert re.search(rf"^\| #{p.experiment_id} \| ", md, re.M), md
    assert "**Outcome constraints:** clarity &gt;= 1" in md


def test_loo_fit_quality_is_finite_and_per_modelled_outcome(single, multi):
    for runner, names in ((single, ["yield_pct"]), (multi, ["strength", "clarity"])):
        s = campaign_summary(runner)
        n = s.counts["completed"]
        assert s.fit_skipped is None
        assert [f.outcome for f in s.fit] == names
        for f in s.fit:
            assert f.n == n and f.method == "gp"
            assert all(math.isfinite(v) for v in (f.rmse, f.nrmse, f.mlpd, f.coverage95))
            assert f.rmse > 0 and 0.0 <= f.coverage95 <= 1.0
        md = summary_markdown(s)
        assert "## Model fit (leave-one-out)" in md and f"| {names[0]} | gp | {n} |" in md


def test_the_loops_surrogate_is_scored_without_fitting_again(single, multi, monkeypatch):
    """Both campaigns have failures, so the loop's surrogate also holds a success model after the outcome GPs."""
    import orchestrator.proposer as proposer

    for runner in (single, multi):
        surrogate = runner.refit(runner.observations())
        assert surrogate is not None and surrogate.has_feasibility
        fitted = campaign_summary(runner).fit

        def no_fit(*args, **kwargs):
            raise AssertionError("the summary fitted the models again")

        monkeypatch.setattr(proposer, "fit_for_objective", no_fit)
        scored = campaign_summary(runner, surrogate=surrogate).fit
        monkeypatch.undo()
        assert [(f.outcome, f.n, f.method) for f in scored] == [(f.outcome, f.n, f.method) for f in fitted]
        for a, b in zip(scored, fitted):
            # Same data, same kernel; only the optimizer's start differs, so the scores agree closely.
            assert math.isfinite(a.rmse) and a.rmse == pytest.approx(b.rmse, rel=0.25)


@pytest.mark.filterwarnings("ignore::botorch.exceptions.warnings.InputDataWarning")
def test_loo_predictions_equal_refitting_without_each_point():
    """The closed form against n explicit conditionings on n-1 points with the same hyperparameters."""
    gen = torch.Generator().manual_seed(0)
    X = torch.rand(9, 2, generator=gen, dtype=DTYPE)
    y = (torch.sin(6 * X[:, :1]) + X[:, 1:] + 0.05 * torch.randn(9, 1, generator=gen, dtype=DTYPE))
    model = SingleTaskGP(X, y, outcome_transform=None)
    _fit(model)
    resid, var = loo_predictions(model, 9)
    state = model.state_dict()
    for i in range(9):
        keep = [j for j in range(9) if j != i]
        sub = SingleTaskGP(X[keep], y[keep], outcome_transform=None)
        sub.load_state_dict(state, strict=False)
        sub.eval()
        with torch.no_grad():
            post = sub.posterior(X[i : i + 1], observation_noise=True)
            mean, variance = float(post.mean.squeeze()), float(post.variance.squeeze())
        assert float(resid[i]) == pytest.approx(float(y[i, 0]) - mean, rel=1e-5, abs=1e-8)
        assert float(var[i]) == pytest.approx(variance, rel=1e-5)


def test_loo_predictions_are_in_the_outcome_units():
    """With the project's standardizing GP, scaling the outcome by 1000 scales residuals by 1000."""
    campaign = single_campaign()
    space = SearchSpace.from_campaign(campaign)
    X = space.initial_design(seed=1, start=0, count=8)
    y = torch.linspace(0.0, 1.0, 8, dtype=DTYPE).unsqueeze(-1) ** 2 + X[:, :1]
    out = []
    for factor in (1.0, 1000.0):
        torch.manual_seed(0)
        model = _gp(space, X, y * factor)
        _fit(model)
        out.append(loo_predictions(model, 8))
    # The two fits see identical standardized targets; L-BFGS stops a little differently (measured: 0.1 %).
    assert torch.allclose(out[1][0], 1000.0 * out[0][0], rtol=1e-2)
    assert torch.allclose(out[1][1], 1e6 * out[0][1], rtol=1e-2)


# --- table and plot ------------------------------------------------------------------------------------------
def test_experiments_table_rows(single):
    rows = experiments_table(single)
    exps = single.ledger.experiments()
    assert [r["id"] for r in rows] == [e.id for e in exps]
    assert list(rows[0]) == ["id", "state", "generator", "temp_c", "layers", "solvent", "yield_pct", "error"]
    long_failures = 0
    for r, e in zip(rows, exps):
        assert r["state"] == e.state and r["generator"] == e.generator
        assert r["temp_c"] == pytest.approx(e.conditions["temp_c"], rel=1e-3) and r["layers"] == e.conditions["layers"]
        assert len(repr(r["temp_c"])) <= 8, "conditions rounded for display"
        if e.state == "failed":
            assert r["yield_pct"] is None
            if e.error == HOSTILE_ERROR:  # the four-layer failure: long, with runs of spaces
                long_failures += 1
                assert r["error"].startswith("<img src=x") and len(r["error"]) <= 120
                assert r["error"].endswith("…") and "  " not in r["error"]
            else:  # toy_yield's own short message (below 25 degC) is shown whole
                assert r["error"] == e.error
        else:
            assert r["yield_pct"] == pytest.approx(e.outcomes["yield_pct"], rel=1e-4) and r["error"] is None
    assert long_failures, "the fixture must include a four-layer failure with the long message"


def test_convergence_figure_single_objective(single):
    exps = single.ledger.experiments()
    fig = convergence_figure(single)
    (ax,) = fig.axes
    assert ax.get_xlabel() == "experiment id" and ax.get_ylabel() == "yield_pct [%] (maximize)"
    (shade,) = [p for p in ax.patches if p.get_gid() == "sobol-phase"]
    xs = shade.get_patch_transform().transform(shade.get_path().vertices)[:, 0]  # data x (blended transform)
    assert (xs.min(), xs.max()) == pytest.approx((0.5, 4.5))  # ids 1-4 are the Sobol design
    assert any(t.get_text() == "Sobol design" for t in ax.texts)
    (best_line,) = [line for line in ax.lines if line.get_label() == "best so far"]
    done = [e for e in exps if e.state == "completed"]
    expected = np.maximum.accumulate([e.outcomes["yield_pct"] for e in done])
    assert list(best_line.get_ydata()[:-1]) == pytest.approx(list(expected))
    (failed,) = [c for c in ax.collections if c.get_label().startswith("failed")]
    assert sorted(failed.get_offsets()[:, 0]) == [e.id for e in exps if e.state == "failed"]
    image = _png_ok(convergence_png(single))
    assert image.shape[:2] == (500, 750)


def test_convergence_figure_multi_objective_has_a_pareto_panel(multi, tmp_path):
    fig = convergence_figure(multi)
    assert len(fig.axes) == 2
    panel = fig.axes[1]
    assert panel.get_xlabel() == "strength [MPa] (maximize)" and panel.get_ylabel() == "clarity (maximize)"
    (front,) = [line for line in panel.lines if line.get_gid() == "pareto-front"]
    s = campaign_summary(multi, fit_quality=False)
    assert list(front.get_xdata()) == [p.outcomes["strength"] for p in s.pareto_front]
    path = tmp_path / "c.png"
    png = convergence_png(multi, path)
    assert path.read_bytes() == png
    assert _png_ok(png).shape[:2] == (500, 1200)


# --- the report folder ---------------------------------------------------------------------------------------
def test_write_report_files_html_escaping_and_embedded_png(single, tmp_path):
    paths = write_report(single, tmp_path / "report")
    assert {k: p.name for k, p in paths.items()} == {
        "markdown": "summary.md", "png": "convergence.png", "csv": "experiments.csv", "html": "report.html"
    }
    page = paths["html"].read_text()
    for e in single.ledger.experiments():
        assert f"<tr class=\"{e.state}\"><td>{e.id}</td>" in page
    (uri,) = re.findall(r'<img alt="convergence plot" src="data:image/png;base64,([A-Za-z0-9+/=]+)">', page)
    assert base64.b64decode(uri) == paths["png"].read_bytes()
    _png_ok(paths["png"].read_bytes())
    assert "<script" not in page and "<img src=x" not in page
    assert html.escape(HOSTILE) in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    md = paths["markdown"].read_text()
    assert "<script" not in md and "&lt;script&gt;alert('x')&lt;/script&gt; &amp; \\| pipes" in md
    with paths["csv"].open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["id"]) for r in rows] == [e.id for e in single.ledger.experiments()]
    assert rows[0]["solvent"] in ("dmf", "dmso", "gbl")


def test_empty_ledger_says_no_experiments_yet(tmp_path):
    campaign = single_campaign()
    with Ledger.for_campaign(campaign, tmp_path) as ledger:
        runner = CampaignRunner(campaign, ledger, fragile_yield)
        s = campaign_summary(runner)
        assert s.total == 0 and s.best is None and s.fit == []
        assert s.fit_skipped == "needs at least 3 completed experiments (have 0)"
        md = summary_markdown(s)
        assert "No experiments yet." in md and "0 of 8 used" in md
        assert experiments_table(runner) == []
        paths = write_report(runner, tmp_path / "out")
        _png_ok(paths["png"].read_bytes())
        assert paths["csv"].read_text().strip() == "id,state,generator,temp_c,layers,solvent,yield_pct,error"
        assert "No experiments yet." in paths["html"].read_text()


def test_transfer_method_from_the_latest_proposal_and_too_few_for_a_fit(tmp_path):
    """A hand-written ledger: two completed experiments, then two model proposals that recorded transfer."""
    campaign = single_campaign()
    cond = [{"temp_c": 80.0, "layers": 3, "solvent": "dmso"}, {"temp_c": 60.0, "layers": 2, "solvent": "dmf"}]
    older = {"outcome": "yield_pct", "prior": "dft", "method": "none", "loo_nats": {"none": -3.0}}
    newer = {"outcome": "yield_pct", "prior": "dft", "method": "prior_mean",
             "loo_nats": {"none": -3.0, "prior_mean": -1.5}, "heldout_nats": {"none": -2.0, "prior_mean": -0.5}}
    with Ledger.for_campaign(campaign, tmp_path) as ledger:
        for e, y in zip(ledger.add_proposed(cond, "sobol"), (70.0, 40.0)):
            ledger.mark_running(e.id)
            ledger.mark_completed(e.id, {"yield_pct": y})
        ledger.add_proposed(cond[:1], "gp:qLogNEI", {"transfer": [older]})
        (latest,) = ledger.add_proposed(cond[1:], "gp:qLogNEI", {"transfer": [newer]})
        s = campaign_summary(CampaignRunner(campaign, ledger, fragile_yield))
    assert s.transfer == [newer] and s.transfer_experiment_id == latest.id
    assert s.counts["proposed"] == 2 and s.best.experiment_id == 1
    assert s.fit == [] and s.fit_skipped == "needs at least 3 completed experiments (have 2)"
    md = summary_markdown(s)
    assert f"As chosen for experiment #{latest.id}'s proposal" in md
    assert "| yield_pct | dft | **prior_mean** | none -3, prior_mean -1.5 | none -2, prior_mean -0.5 |" in md
    assert "Not computed: needs at least 3 completed experiments (have 2)." in md


def test_best_without_a_feasible_experiment_is_flagged(tmp_path):
    campaign = multi_campaign()
    with Ledger.for_campaign(campaign, tmp_path) as ledger:
        cond = [{"x": 0.1, "y": 0.5}, {"x": 0.3, "y": 0.5}]
        for e, c in zip(ledger.add_proposed(cond, "sobol"), cond):
            ledger.mark_running(e.id)
            ledger.mark_completed(e.id, {"strength": 2.0 + c["x"], "clarity": 0.5})  # clarity < 1 everywhere
        s = campaign_summary(CampaignRunner(campaign, ledger, strong_and_clear), fit_quality=False)
    assert s.best.experiment_id == 2 and not s.best.feasible and s.pareto_front == []
    md = summary_markdown(s)
    assert "No experiment meets the outcome constraints yet" in md
    assert "No completed experiment meets the outcome constraints yet." in md


def test_report_command_writes_the_files_and_refuses_a_missing_ledger(tmp_path, write_campaign):
    from typer.testing import CliRunner

    from orchestrator.cli import app

    data = copy.deepcopy(BASE_CAMPAIGN)
    data["budget"] = {"max_experiments": 5, "batch_size": 1, "initial_experiments": 3}
    data["optimizer"] = FAST
    path = write_campaign(data)
    missing = CliRunner().invoke(app, ["report", str(path), "-r", str(tmp_path / "r")])
    assert missing.exit_code == 2 and "no ledger" in missing.output and "Traceback" not in missing.output
    assert CliRunner().invoke(app, ["run", str(path), "--no-prefect", "--quiet", "-r", str(tmp_path / "r")]).exit_code == 0
    res = CliRunner().invoke(app, ["report", str(path), "-r", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    out = tmp_path / "r" / "toy" / "report"
    assert (out / "convergence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "report.html").read_text()
    assert all(f"#{i}" in page or f">{i}<" in page for i in range(1, 6))
    with (out / "experiments.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 5
