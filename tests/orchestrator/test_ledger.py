"""The ledger on a real SQLite file: state changes, events, reopen after close, mismatch refusal."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from orchestrator.campaign import Campaign
from orchestrator.errors import CampaignMismatchError, LedgerError
from orchestrator.ledger import Ledger


def test_lifecycle_survives_reopen(tmp_path):
    path = tmp_path / "ledger.sqlite"
    with Ledger(path) as ledger:
        a, b = ledger.add_proposed([{"x": 1.0}, {"x": 2.0}], "sobol", {"note": 1})
        ledger.mark_running(a.id)
        ledger.mark_completed(a.id, {"y": 3.5})
        ledger.mark_running(b.id)
        ledger.mark_failed(b.id, "film did not form")
    with Ledger(path) as ledger:
        a2, b2 = ledger.experiments()
        assert (a2.state, a2.outcomes, a2.batch, a2.proposal_info) == ("completed", {"y": 3.5}, 1, {"note": 1})
        assert (b2.state, b2.error) == ("failed", "film did not form")
        assert a2.started_at and a2.finished_at and a2.proposed_at <= a2.started_at <= a2.finished_at
        assert [e["to_state"] for e in ledger.events(a.id)] == ["proposed", "running", "completed"]
        assert ledger.counts() == {"proposed": 0, "running": 0, "completed": 1, "failed": 1, "unknown": 0}
        (c,) = ledger.add_proposed([{"x": 3.0}], "gp:qLogNEI")
        assert c.batch == 2 and c.id == 3


def test_each_change_is_committed_immediately(tmp_path):
    """Another connection sees every change at once: nothing waits in an open transaction."""
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    (e,) = ledger.add_proposed([{"x": 1.0}], "sobol")
    ledger.mark_running(e.id)
    reader = sqlite3.connect(path)
    assert reader.execute("SELECT state FROM experiments").fetchone() == ("running",)
    ledger.mark_completed(e.id, {"y": 1.0})
    assert reader.execute("SELECT state, outcomes FROM experiments").fetchone() == ("completed", '{"y": 1.0}')
    reader.close()
    ledger.close()


@pytest.mark.parametrize("first, second", [("completed", "running"), ("completed", "failed"), (None, "completed")])
def test_illegal_transitions_are_refused(tmp_path, first, second):
    with Ledger(tmp_path / "l.sqlite") as ledger:
        (e,) = ledger.add_proposed([{"x": 1.0}], "sobol")
        if first:
            ledger.mark_running(e.id)
            ledger.mark_completed(e.id, {"y": 1.0})
        act = {"running": lambda: ledger.mark_running(e.id), "failed": lambda: ledger.mark_failed(e.id, "x"),
               "completed": lambda: ledger.mark_completed(e.id, {"y": 2.0})}[second]
        with pytest.raises(LedgerError, match="cannot become"):
            act()
        assert ledger.get(e.id).state == (first or "proposed")


def test_concurrent_writers(tmp_path):
    with Ledger(tmp_path / "l.sqlite") as ledger:
        exps = ledger.add_proposed([{"x": float(i)} for i in range(40)], "sobol")

        def work(i):
            ledger.mark_running(exps[i].id)
            ledger.mark_completed(exps[i].id, {"y": float(i)})

        threads = [threading.Thread(target=work, args=(i,)) for i in range(40)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert ledger.counts()["completed"] == 40
        assert len(ledger.events()) == 120


def test_ledger_refuses_a_changed_space(tmp_path, campaign_dict):
    c = Campaign.model_validate(campaign_dict)
    Ledger.for_campaign(c, tmp_path).close()
    campaign_dict["budget"]["max_experiments"] = 20
    Ledger.for_campaign(Campaign.model_validate(campaign_dict), tmp_path).close()  # a bigger budget is fine
    campaign_dict["parameters"][0]["high"] = 300.0
    with pytest.raises(CampaignMismatchError, match="new name"):
        Ledger.for_campaign(Campaign.model_validate(campaign_dict), tmp_path)


def test_not_a_database(tmp_path):
    bad = tmp_path / "ledger.sqlite"
    bad.write_text("this is not sqlite" * 100)
    with pytest.raises(LedgerError, match="cannot open the ledger"):
        Ledger(bad)
