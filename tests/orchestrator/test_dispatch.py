"""Exactly-once dispatch: idempotency keys, the step log, the decision on resume, the `unknown` state and
`orchestrator resolve`, and opening a ledger written before these existed (real SQLite files)."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

import pytest
from typer.testing import CliRunner

from orchestrator.campaign import Campaign
from orchestrator.cli import app
from orchestrator.dispatch import decide
from orchestrator.errors import LedgerError
from orchestrator.ledger import Ledger, StepRecord
from orchestrator.loop import CampaignRunner, run_loop
from orchestrator.procedures import Action, Wait
from tests.toy_simulators import toy_yield

PLANNED = [
    Action("hotplate", "set_temperature", {"temp_c": 120.0}),
    Action("pump", "dispense", {"volume_ul": 40.0}),
    Wait(60.0),
    Action("spectrometer", "measure", {}, label="pl"),
]


@dataclass
class Account:
    material_samples: int

    def describe(self) -> str:
        return f"{self.material_samples} made"


def rec(i, text, repeatable, state, label=None, reading=None):
    return StepRecord(i, text, repeatable, state, label, reading)


@pytest.mark.parametrize(
    ("log", "account", "can_ask", "verdict"),
    [
        ([], None, False, "redispatch"),
        ([rec(0, "set", True, "started")], None, False, "redispatch"),
        ([rec(0, "set", True, "done"), rec(1, "dispense", False, "started")], None, False, "unknown"),
        ([rec(0, "set", True, "done"), rec(1, "dispense", False, "started")], None, True, "redispatch"),
        ([rec(0, "set", True, "done"), rec(1, "dispense", False, "started")], Account(0), True, "redispatch"),
        ([rec(0, "set", True, "done"), rec(1, "dispense", False, "started")], Account(1), True, "unknown"),
        ([rec(0, "set", True, "done"), rec(1, "dispense", False, "done"), rec(3, "measure", True, "started")], None, False, "unknown"),
        ([rec(0, "s", True, "done"), rec(1, "d", False, "done"), rec(3, "m", True, "done", "pl", "/x.json")], Account(1), True, "finish"),
    ],
)
def test_the_decision_on_resume(log, account, can_ask, verdict):
    decision = decide(PLANNED, log, account, can_ask)
    assert decision.verdict == verdict, decision.reason
    if verdict == "finish":
        assert decision.readings == {"pl": "/x.json"}
    if verdict == "unknown":
        assert "orchestrator resolve" in decision.reason


def test_keys_are_unique_and_kept_through_attempts(tmp_path, campaign_dict):
    campaign = Campaign.model_validate(campaign_dict)
    with Ledger.for_campaign(campaign, tmp_path) as ledger:
        a, b = ledger.add_proposed([{"x": 1}, {"x": 2}], "sobol")
        assert a.dispatch_key.startswith("toy-00001-") and b.dispatch_key.startswith("toy-00002-")
        assert a.dispatch_key != b.dispatch_key
        ledger.mark_running(a.id)
        again = ledger.redispatch(a.id, "nothing had been sent")
        assert (again.attempts, again.dispatch_key) == (2, a.dispatch_key)
        with pytest.raises(LedgerError, match="not running"):
            ledger.redispatch(b.id, "x")
    with Ledger.for_campaign(campaign, tmp_path / "fresh") as other:
        (c,) = other.add_proposed([{"x": 1}], "sobol")
    assert c.id == a.id and c.dispatch_key != a.dispatch_key, "a recreated ledger never reuses a key"


def test_step_log_survives_reopen_per_attempt(tmp_path):
    path = tmp_path / "l.sqlite"
    with Ledger(path) as ledger:
        (e,) = ledger.add_proposed([{"x": 1}], "sobol")
        ledger.mark_running(e.id)
        ledger.step_started(e.id, 1, 0, "pump.dispense(volume_ul=40.0)", False)
        ledger.step_done(e.id, 1, 0)
        ledger.step_started(e.id, 1, 2, "spec.measure()", True)
        ledger.step_done(e.id, 1, 2, "pl", "/raw/exp-1-pl.json")
    with Ledger(path) as ledger:
        assert ledger.steps(e.id) == [
            StepRecord(0, "pump.dispense(volume_ul=40.0)", False, "done", None, None),
            StepRecord(2, "spec.measure()", True, "done", "pl", "/raw/exp-1-pl.json"),
        ]
        ledger.redispatch(e.id, "test")
        assert ledger.steps(e.id) == [], "a new attempt starts an empty log"
        assert len(ledger.steps(e.id, attempt=1)) == 2


def test_unknown_is_settled_only_by_resolve(tmp_path):
    with Ledger(tmp_path / "l.sqlite") as ledger:
        (e,) = ledger.add_proposed([{"x": 1}], "sobol")
        with pytest.raises(LedgerError, match="cannot become"):
            ledger.mark_unknown(e.id, "x")  # a proposed experiment was never sent: its fate is known
        ledger.mark_running(e.id)
        ledger.mark_unknown(e.id, "interrupted")
        with pytest.raises(LedgerError, match="cannot become"):
            ledger.mark_completed(e.id, {"y": 1.0})  # only a person's verdict, through resolve()
        with pytest.raises(LedgerError, match="either"):
            ledger.resolve(e.id)
        done = ledger.resolve(e.id, outcomes={"y": 2.5}, by="ana")
        assert (done.state, done.outcomes) == ("completed", {"y": 2.5})
        assert ledger.events(e.id)[-1]["detail"] == 'resolved by ana: {"y": 2.5}'
        with pytest.raises(LedgerError, match="not unknown"):
            ledger.resolve(e.id, failed="x")


def test_a_ledger_written_before_unknown_existed_is_upgraded_in_place(tmp_path):
    """Version-1 ledgers have a CHECK constraint without `unknown` and no key or step columns."""
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE experiments (
            id INTEGER PRIMARY KEY, batch INTEGER NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('proposed', 'running', 'completed', 'failed')),
            conditions TEXT NOT NULL, outcomes TEXT, error TEXT, generator TEXT NOT NULL,
            proposal_info TEXT NOT NULL DEFAULT '{}', proposed_at TEXT NOT NULL, started_at TEXT, finished_at TEXT);
        CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, experiment_id INTEGER NOT NULL REFERENCES experiments(id),
            at TEXT NOT NULL, from_state TEXT, to_state TEXT NOT NULL, detail TEXT);
        INSERT INTO experiments VALUES (1, 1, 'completed', '{"x": 1}', '{"y": 3.0}', NULL, 'sobol', '{}', 't0', 't1', 't2');
        INSERT INTO experiments VALUES (2, 1, 'running', '{"x": 2}', NULL, NULL, 'sobol', '{}', 't0', 't1', NULL);
        INSERT INTO events (experiment_id, at, from_state, to_state) VALUES (1, 't0', NULL, 'proposed');
        """
    )
    db.commit()
    db.close()
    with Ledger(path) as ledger:
        first, second = ledger.experiments()
        assert (first.state, first.outcomes, first.raw) == ("completed", {"y": 3.0}, None)
        assert len(ledger.events()) == 1
        assert ledger.mark_unknown(second.id, "interrupted before the upgrade").state == "unknown"


def _unknown_ledger(tmp_path, campaign):
    with Ledger.for_campaign(campaign, tmp_path) as ledger:
        a, b = ledger.add_proposed([{"temp_c": 50.0, "layers": 2, "solvent": "dmf"}] * 2, "sobol")
        ledger.mark_running(a.id)
        ledger.mark_unknown(a.id, "interrupted: the pump's reply was lost")
    return a.id, b.id


def test_resolve_records_a_result_measured_by_hand_and_the_next_proposal_uses_it(tmp_path, write_campaign, campaign_dict):
    path = write_campaign(campaign_dict)
    campaign = Campaign.model_validate(campaign_dict)
    exp_id, _ = _unknown_ledger(tmp_path / "r", campaign)
    res = CliRunner().invoke(
        app, ["resolve", str(path), str(exp_id), "--result", "yield_pct=41.5", "--by", "ana", "-r", str(tmp_path / "r")]
    )
    assert res.exit_code == 0, res.output
    assert "experiment 1: completed (yield_pct=41.5), recorded by ana" in res.output
    with Ledger.for_campaign(campaign, tmp_path / "r") as ledger:
        runner = CampaignRunner(campaign, ledger, toy_yield)
        obs = runner.observations()
        assert obs.X.shape[0] == 1 and float(obs.Y[0, 0]) == 41.5
        run_loop(runner)
        assert sum(ledger.counts().values()) == campaign.budget.max_experiments


def test_resolve_failed_and_status_shows_unknown(tmp_path, write_campaign, campaign_dict):
    path = write_campaign(campaign_dict)
    campaign = Campaign.model_validate(campaign_dict)
    exp_id, _ = _unknown_ledger(tmp_path / "r", campaign)
    status = CliRunner().invoke(app, ["status", str(path), "-r", str(tmp_path / "r")])
    assert "unknown" in status.output and "orchestrator resolve" in status.output
    res = CliRunner().invoke(app, ["resolve", str(path), str(exp_id), "--failed", "film cracked", "-r", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    with Ledger.for_campaign(campaign, tmp_path / "r") as ledger:
        exp = ledger.get(exp_id)
    assert exp.state == "failed" and exp.error.startswith("resolved by ") and exp.error.endswith(": film cracked")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["1", "--result", "yeild_pct=3"], "'yeild_pct' is not an outcome; outcomes: yield_pct"),
        (["1", "--result", "yield_pct=abc"], "'abc' is not a number"),
        (["1", "--result", "yield_pct=nan"], "finite number"),
        (["1", "--result", "yield_pct"], "write OUTCOME=VALUE"),
        (["1", "--result", "yield_pct=1,yield_pct=2"], "given twice"),
        (["1", "--result", "yield_pct=1", "--failed", "x"], "either --result"),
        (["1"], "either --result"),
        (["1", "--failed", "  "], "needs a reason"),
        (["2", "--failed", "x"], "experiment 2 is proposed, not unknown"),
        (["9", "--failed", "x"], "no experiment 9"),
    ],
)
def test_resolve_refuses_bad_input_with_exit_2(tmp_path, write_campaign, campaign_dict, args, message):
    path = write_campaign(campaign_dict)
    _unknown_ledger(tmp_path / "r", Campaign.model_validate(campaign_dict))
    res = CliRunner().invoke(app, ["resolve", str(path), *args, "-r", str(tmp_path / "r")])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    with Ledger(tmp_path / "r" / "toy" / "ledger.sqlite") as ledger:
        assert ledger.get(1).state == "unknown", "nothing changed"
