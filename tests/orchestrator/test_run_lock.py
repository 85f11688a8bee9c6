"""One writer per campaign: real processes holding the run lock, a real SIGKILL, readers during a real run."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.errors import CampaignBusyError, UserInputError
from orchestrator.ledger import Ledger
from orchestrator.run_lock import RunLock
from tests.conftest import REPO

cli = CliRunner()
ENV = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "250"}
EXE = os.path.join(os.path.dirname(sys.executable), "orchestrator")

# Takes the campaign's run lock in its own process, says so, and sleeps until killed.
HOLDER = """
import sys, time
from orchestrator.run_lock import RunLock
RunLock.for_campaign(sys.argv[2], sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def _invoke(*args: str):
    return cli.invoke(app, list(args), catch_exceptions=False)


def _hold(results, name: str = "toy") -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(results), name], stdout=subprocess.PIPE, text=True, env=ENV, cwd=REPO
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.fixture
def small(campaign_dict):
    campaign_dict["budget"] = {"max_experiments": 3, "batch_size": 1, "initial_experiments": 3}
    return campaign_dict


def test_second_run_is_refused_naming_the_holder(tmp_path, write_campaign, small):
    results = tmp_path / "res"
    holder = _hold(results)
    try:
        result = _invoke("run", str(write_campaign(small)), "--no-prefect", "-r", str(results))
    finally:
        _kill(holder)
    assert result.exit_code == 2, result.output
    assert f"campaign 'toy' is already running (pid {holder.pid} on host" in result.output
    assert "wait for it or stop it" in result.output and "Traceback" not in result.output
    assert not (results / "toy" / "ledger.sqlite").exists(), "a refused run touches nothing"


def test_lock_of_a_killed_process_does_not_stick(tmp_path, write_campaign, small):
    results = tmp_path / "res"
    holder = _hold(results)
    _kill(holder)  # SIGKILL: no cleanup ran, the lock file still names the dead holder
    assert str(holder.pid) in (results / "toy" / "run.lock").read_text()
    result = _invoke("run", str(write_campaign(small)), "--no-prefect", "-r", str(results))
    assert result.exit_code == 0, result.output
    assert "3/3" in result.output and "experiments used" in result.output
    assert (results / "toy" / "run.lock").read_text() == "", "a clean exit leaves a lock file naming nobody"


def test_lock_is_reentrant_in_one_process_and_held_until_the_outer_exit(tmp_path):
    with RunLock.for_campaign("toy", tmp_path) as outer:
        with RunLock.for_campaign("toy", tmp_path):  # the flow inside `orchestrator run`: no self-deadlock
            pass
        other = subprocess.run(
            [sys.executable, "-c", HOLDER, str(tmp_path), "toy"], capture_output=True, text=True, env=ENV, timeout=60
        )
        assert other.returncode != 0 and "already running" in other.stderr, "still held after the inner exit"
        assert outer.path.read_text().startswith('{"pid": %d' % os.getpid())
    assert issubclass(CampaignBusyError, UserInputError)


def test_status_reads_while_a_real_run_writes_and_the_run_resumes_after_sigkill(tmp_path, write_campaign):
    """`orchestrator run` in its own process writes the ledger; `status` polls it meanwhile (exit 0, counts),
    a second run is refused naming that process, and after a SIGKILL mid-run a new run finishes the campaign."""
    campaign = {
        "name": "slow",
        "parameters": [
            {"name": "x", "type": "continuous", "low": 0.0, "high": 1.0},
            {"name": "y", "type": "continuous", "low": 0.0, "high": 1.0},
        ],
        "outcomes": [{"name": "score"}],
        "objectives": [{"outcome": "score", "goal": "maximize"}],
        # 0.6 to 1.4 s per experiment, one at a time, all Sobol: about 10 s of writing without model fits.
        "budget": {"max_experiments": 10, "batch_size": 1, "initial_experiments": 10},
        "seed": 1,
        "simulator": {"model": "tests.toy_simulators:uneven"},
    }
    path, results = write_campaign(campaign), tmp_path / "res"
    ledger_path = results / "slow" / "ledger.sqlite"
    writer = subprocess.Popen(
        [EXE, "run", str(path), "--no-prefect", "-q", "-r", str(results)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 60
        while not (ledger_path.exists() and _started(ledger_path)):
            assert writer.poll() is None and time.monotonic() < deadline, "the run did not start writing"
            time.sleep(0.1)

        refused = _invoke("run", str(path), "--no-prefect", "-r", str(results))
        assert refused.exit_code == 2 and f"(pid {writer.pid} on host" in refused.output, refused.output

        used = []
        while len(used) < 3 and writer.poll() is None:
            status = _invoke("status", str(path), "-r", str(results))
            assert status.exit_code == 0, status.output
            used.append(int(re.search(r"experiments used\s*│\s*(\d+) of 10", status.output).group(1)))
            time.sleep(0.5)
        assert len(used) >= 2 and writer.poll() is None, f"the run ended before status could poll it: {used}"
        assert used == sorted(used)
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    finally:
        _kill(writer)
    with Ledger(ledger_path) as ledger:
        before = ledger.counts()
    assert before["completed"] + before["failed"] < 10, "killed mid-run"

    resumed = _invoke("run", str(path), "--no-prefect", "-q", "-r", str(results))
    assert resumed.exit_code == 0, resumed.output
    assert "resuming" in resumed.output and "10 of 10" in resumed.output
    with Ledger(ledger_path) as ledger:
        assert len(ledger.experiments()) == 10, "nothing proposed twice"


def _started(ledger_path) -> bool:
    with Ledger(ledger_path) as ledger:
        return len(ledger.experiments()) > 0
