"""Human approval of batches (``approval: required``): the decision logic on a real SQLite ledger, and the
pause / edit / approve / reject path through Prefect's pause-with-input against a real local Prefect API
(Prefect's test harness starts one as a subprocess)."""

from __future__ import annotations

import copy
import re
import threading
import time

import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.approval import BatchDecision, apply_decision, batch_markdown, pending_approval
from orchestrator.campaign import Campaign
from orchestrator.cli import app
from orchestrator.errors import UserInputError
from orchestrator.ledger import Ledger
from orchestrator.loop import CampaignRunner
from tests.conftest import BASE_CAMPAIGN
from tests.toy_simulators import toy_yield

FAST = {"num_restarts": 2, "raw_samples": 64, "mc_samples": 64}


def _campaign(**changes) -> dict:
    data = copy.deepcopy(BASE_CAMPAIGN)
    data.update(approval="required", optimizer=FAST, **changes)
    return data


@pytest.fixture
def batch(tmp_path):
    campaign = Campaign.model_validate(_campaign())
    ledger = Ledger.for_campaign(campaign, tmp_path)
    runner = CampaignRunner(campaign, ledger, toy_yield)
    exps = runner.propose(runner.observations(), None, 2)
    yield runner, exps
    ledger.close()


def test_only_unapproved_proposals_wait(batch):
    runner, exps = batch
    assert [e.id for e in pending_approval(runner, [e.id for e in exps])] == [1, 2]
    runner.ledger.approve(1, "ana")
    assert [e.id for e in pending_approval(runner, [1, 2])] == [2]
    runner.campaign = runner.campaign.model_copy(update={"approval": "none"})
    assert pending_approval(runner, [1, 2]) == []


def test_approve_edit_and_reject_are_recorded_with_who_decided(batch):
    runner, (a, b) = batch
    edited = dict(b.conditions, temp_c=55.0)
    assert apply_decision(runner, [a, b], BatchDecision("edit", "ana", "cooler", [a.conditions, edited])) == [1, 2]
    a2, b2 = runner.ledger.get(1), runner.ledger.get(2)
    assert (a2.approved_by, a2.conditions) == ("ana", a.conditions)
    assert (b2.approved_by, b2.conditions["temp_c"]) == ("ana", 55.0)
    assert runner.ledger.events(2)[-1]["detail"].startswith("edited and approved by ana:")
    assert runner.ledger.events(1)[-1]["detail"] == "approved by ana: cooler"
    (c,) = runner.propose(runner.observations(), None, 1)
    assert apply_decision(runner, [c], BatchDecision("reject", "bob", "precursor ran out")) == []
    assert runner.ledger.get(c.id).state == "failed"
    assert runner.ledger.get(c.id).error == "rejected before sending by bob: precursor ran out"


@pytest.mark.parametrize(
    ("decision", "message"),
    [
        (BatchDecision("approve", "  "), "decided_by is empty"),
        (BatchDecision("edit", "ana", conditions=[{"temp_c": 50.0, "layers": 2, "solvent": "dmf"}]), "each of the 2"),
        (BatchDecision("edit", "ana", conditions=[{"temp_c": 500.0, "layers": 2, "solvent": "dmf"}] * 2), "within [20, 120]"),
        (BatchDecision("edit", "ana", conditions=[{"temp_c": 50.0, "layers": 2, "solvent": "water"}] * 2), "one of its choices"),
        (BatchDecision("edit", "ana", conditions=[{"temp_c": 50.0, "layers": 2}] * 2), "missing solvent"),
        (BatchDecision("maybe", "ana"), "approve, edit or reject"),  # type: ignore[arg-type]
    ],
)
def test_a_bad_answer_changes_nothing(batch, decision, message):
    runner, exps = batch
    before = [(e.state, e.conditions, e.approved_by) for e in runner.ledger.experiments()]
    with pytest.raises(UserInputError, match=re.escape(message)):
        apply_decision(runner, exps, decision)
    assert [(e.state, e.conditions, e.approved_by) for e in runner.ledger.experiments()] == before


def test_the_batch_shown_to_the_person_names_each_experiment_and_escapes_markup(batch):
    runner, exps = batch
    text = batch_markdown(runner, exps, problem="conditions[0]: temp_c <b>bad</b> | x")
    assert "#1" in text and "#2" in text and "temp_c [degC]" in text
    assert "<b>" not in text and "\\|" in text


def test_run_without_prefect_is_refused_for_an_approval_campaign(write_campaign, tmp_path):
    res = CliRunner().invoke(app, ["run", str(write_campaign(_campaign())), "--no-prefect", "-r", str(tmp_path)])
    assert res.exit_code == 2 and "approval: required" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "toy").exists(), "nothing was created"


def _wait_paused(client, name: str, seen: int, timeout_s: float = 120.0):
    """The campaign's flow run once it is paused for the (seen + 1)-th time."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = [r for r in client.read_flow_runs() if r.name == name]
        if runs and runs[0].state.is_paused():
            pauses = [s for s in client.read_flow_run_states(runs[0].id) if s.is_paused()]
            if len(pauses) > seen:
                return runs[0]
        time.sleep(0.5)
    raise AssertionError("the flow run never paused for approval")


def test_batches_wait_for_a_person_in_prefect_then_run_as_decided(prefect_api, tmp_path, monkeypatch):
    from prefect import get_client
    from prefect.flow_runs import resume_flow_run

    import orchestrator.flows as flows

    monkeypatch.setattr(flows, "APPROVAL_POLL_S", 1.0)
    data = _campaign(budget={"max_experiments": 4, "batch_size": 2, "initial_experiments": 2})
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(data))
    result: dict = {}
    thread = threading.Thread(
        target=lambda: result.update(counts=flows.run_campaign_flow(path, tmp_path / "results", progress=False))
    )
    thread.start()
    try:
        with get_client(sync_client=True) as client:
            run = _wait_paused(client, "toy", 0)
            with Ledger(tmp_path / "results" / "toy" / "ledger.sqlite") as ledger:
                assert ledger.counts()["running"] == 0 and ledger.counts()["proposed"] == 2, "nothing sent before a decision"
                first = [e.conditions for e in ledger.experiments()]
            # An edit outside the bounds is not applied; the run asks again, saying why.
            bad = [dict(first[0], temp_c=500.0), first[1]]
            resume_flow_run(run.id, run_input={"decision": "edit", "decided_by": "ana", "conditions": bad})
            run = _wait_paused(client, "toy", 1)
            good = [dict(first[0], temp_c=42.0), first[1]]
            resume_flow_run(run.id, run_input={"decision": "edit", "decided_by": "ana", "comment": "cooler", "conditions": good})
            run = _wait_paused(client, "toy", 2)
            resume_flow_run(run.id, run_input={"decision": "reject", "decided_by": "bob", "comment": "out of precursor"})
        thread.join(timeout=180)
    finally:
        if thread.is_alive():
            pytest.fail("the flow did not finish after the last decision")
    assert result["counts"] == {"proposed": 0, "running": 0, "completed": 2, "failed": 2, "unknown": 0}
    with Ledger(tmp_path / "results" / "toy" / "ledger.sqlite") as ledger:
        e1, e2, e3, e4 = ledger.experiments()
        details = [ev["detail"] or "" for ev in ledger.events(1)]
    assert (e1.state, e1.conditions["temp_c"], e1.approved_by) == ("completed", 42.0, "ana")
    assert (e2.state, e2.conditions, e2.approved_by) == ("completed", first[1], "ana")
    assert any(d.startswith("edited and approved by ana:") and "(cooler)" in d for d in details)
    for e in (e3, e4):
        assert e.state == "failed" and e.error == "rejected before sending by bob: out of precursor"
