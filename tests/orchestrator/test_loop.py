"""The loop without Prefect: runs to budget, records everything, resumes instead of restarting."""

from __future__ import annotations

import pytest

from orchestrator.campaign import Campaign
from orchestrator.ledger import Ledger
from orchestrator.loop import CampaignRunner, run_loop
from orchestrator.simulation import build_simulator


def _runner(campaign: Campaign, ledger: Ledger, events=None) -> CampaignRunner:
    listener = (lambda kind, exp, runner: events.append((kind, exp.id))) if events is not None else None
    return CampaignRunner(campaign, ledger, build_simulator(campaign), on_event=listener)


def test_runs_to_budget_with_failures_recorded(tmp_path, campaign_dict):
    campaign_dict["budget"] = {"max_experiments": 10, "batch_size": 2, "initial_experiments": 4}
    c = Campaign.model_validate(campaign_dict)
    events: list = []
    with Ledger.for_campaign(c, tmp_path) as ledger:
        run_loop(_runner(c, ledger, events))
        exps = ledger.experiments()
    assert len(exps) == 10
    assert all(e.state in ("completed", "failed") for e in exps)
    assert [e.generator for e in exps[:4]] == ["sobol"] * 4
    assert all(e.generator == "gp:qLogNEI" for e in exps[4:])
    assert [e.batch for e in exps] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    for e in exps:
        if e.state == "failed":
            assert e.conditions["temp_c"] < 25 and "did not dissolve" in e.error
        else:
            assert set(e.outcomes) == {"yield_pct"}
    assert [k for k, i in events if i == 1] == ["proposed", "running", exps[0].state]


def test_same_seed_same_campaign(tmp_path, campaign_dict):
    c = Campaign.model_validate(campaign_dict)
    results = []
    for sub in ("a", "b"):
        with Ledger.for_campaign(c, tmp_path / sub) as ledger:
            run_loop(_runner(c, ledger))
            results.append([(e.conditions, e.outcomes) for e in ledger.experiments()])
    assert results[0] == results[1]


def test_resume_finishes_unfinished_work_without_reproposing(tmp_path, campaign_dict):
    """A crash left one experiment running and one proposed: resuming runs each once and keeps ids."""
    c = Campaign.model_validate(campaign_dict)
    with Ledger.for_campaign(c, tmp_path) as ledger:
        runner = _runner(c, ledger)
        obs = runner.observations()
        a, b = runner.propose(obs, None, 2)
        ledger.mark_running(a.id)
    events: list = []
    with Ledger.for_campaign(c, tmp_path) as ledger:
        run_loop(_runner(c, ledger, events))
        exps = ledger.experiments()
        assert exps[0].conditions == a.conditions and exps[1].conditions == b.conditions
        assert len(exps) == c.budget.max_experiments
        for e in exps:
            assert [ev["to_state"] for ev in ledger.events(e.id)][-1] == e.state
            dispatches = [ev for ev in ledger.events(e.id) if (ev["from_state"], ev["to_state"]) == ("proposed", "running")]
            assert len(dispatches) == 1
    assert ("proposed", 1) not in events and ("proposed", 2) not in events


def test_raising_the_budget_continues_the_campaign(tmp_path, campaign_dict):
    c = Campaign.model_validate(campaign_dict)
    with Ledger.for_campaign(c, tmp_path) as ledger:
        run_loop(_runner(c, ledger))
    campaign_dict["budget"]["max_experiments"] = 11
    c2 = Campaign.model_validate(campaign_dict)
    with Ledger.for_campaign(c2, tmp_path) as ledger:
        run_loop(_runner(c2, ledger))
        assert len(ledger.experiments()) == 11


def test_bad_simulator_output_fails_the_experiment_not_the_loop(tmp_path, campaign_dict):
    campaign_dict["simulator"] = {"model": "tests.toy_simulators:not_a_mapping"}
    campaign_dict["budget"] = {"max_experiments": 3, "batch_size": 1}
    c = Campaign.model_validate(campaign_dict)
    with Ledger.for_campaign(c, tmp_path) as ledger:
        run_loop(_runner(c, ledger))
        exps = ledger.experiments()
    assert [e.state for e in exps] == ["failed"] * 3
    assert "not a mapping" in exps[0].error


def test_best_uses_the_objective(tmp_path, campaign_dict):
    campaign_dict["objectives"] = [{"outcome": "yield_pct", "goal": "target", "target": 30.0, "tolerance": 1.0}]
    c = Campaign.model_validate(campaign_dict)
    with Ledger.for_campaign(c, tmp_path) as ledger:
        run_loop(_runner(c, ledger))
        runner = _runner(c, ledger)
        best = runner.best()
        ys = [e.outcomes["yield_pct"] for e in ledger.experiments(["completed"])]
    assert best.experiment.outcomes["yield_pct"] == min(ys, key=lambda y: abs(y - 30.0))
    assert best.score == pytest.approx(-abs(best.experiment.outcomes["yield_pct"] - 30.0))
