"""SIGKILL at random moments, resume, and check the ledger against the simulated lab's own journal.

The harness lives in ``benchmarks/crash_resume.py`` (which prints the counts for ≥ 30 kills); here a few kills
in the default run, and the full harness under ``-m slow``.
"""

from __future__ import annotations

import importlib.util
import sqlite3
import sys

import pytest

from tests.conftest import REPO


def _harness():
    spec = importlib.util.spec_from_file_location("crash_resume", REPO / "benchmarks" / "crash_resume.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["crash_resume"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _assert_exactly_once(report, budget):
    assert not report.problems, report.problems
    assert report.performed_twice == 0
    assert sum(report.states.values()) == budget
    assert report.states.get("proposed", 0) == report.states.get("running", 0) == 0
    assert report.unknown_resolved == report.states.get("unknown", 0)


def test_kills_in_each_narrow_window_lose_nothing_and_repeat_nothing(tmp_path):
    """One kill per decision a resumed run takes (steps 0-1 set the hotplate and move the stage; step 2 is the
    first dispense)."""
    harness = _harness()
    points = [
        "dispatched:1",  # recorded running, nothing sent: dispatched again
        "step_started:3",  # the dispense logged, its bytes not sent: the lab has no dispense, so again
        "step_done:3",  # the dispense done: never sent again, unknown until resolved
        "readings_saved:1",  # the spectrum saved, the result not committed: finished from the file
    ]
    report = harness.run_harness(tmp_path, kills=len(points), budget=5, seed=5, points=points)
    assert report.total_kills == 4, report.methods
    _assert_exactly_once(report, 5)
    assert report.redispatched == 2 and report.finished_from_saved == 1
    assert report.unknown_resolved == 1
    assert report.performed == 5, "every experiment was made exactly once by the lab"
    db = sqlite3.connect(tmp_path / "results" / "perovskite_film_hardware" / "ledger.sqlite")
    states = {s for (s,) in db.execute("SELECT state FROM experiments")}
    db.close()
    assert "unknown" not in states, "the harness resolved every unknown experiment with `orchestrator resolve`"


@pytest.mark.slow
def test_thirty_kills_across_the_phases(tmp_path):
    harness = _harness()
    report = harness.run_harness(tmp_path, kills=30, budget=60, seed=11)
    assert report.total_kills >= 30
    _assert_exactly_once(report, 60)
    hit = {phase for phase, n in report.kills.items() if n}
    assert {"proposing", "instrument step"} <= hit, report.kills
