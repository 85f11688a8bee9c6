"""Fault soak on the simulated bench: with 10 % of the instruments' replies spoiled the campaign still uses its
whole budget, every failed experiment says why, and no pump is told to ``RUN`` twice for one experiment.
The full soak with figures is ``benchmarks/fault_soak.py``."""

from __future__ import annotations

import re

import pytest
import yaml
from typer.testing import CliRunner

from instruments.transport import Transcript
from orchestrator.backends import open_backend
from orchestrator.campaign import load_campaign
from orchestrator.cli import app
from orchestrator.ledger import Ledger
from orchestrator.loop import CampaignRunner, run_loop
from simulators.bench import pump_runs_repeated
from tests.conftest import REPO


@pytest.mark.slow
def test_a_campaign_with_ten_percent_faulty_replies_uses_its_budget(tmp_path):
    data = yaml.safe_load((REPO / "campaigns" / "perovskite_film_hardware.yaml").read_text())
    data["budget"] = {"max_experiments": 2, "batch_size": 1, "initial_experiments": 2}
    data["seed"] = 3
    path = tmp_path / "hw.yaml"
    path.write_text(yaml.safe_dump(data))
    campaign = load_campaign(path)
    transcript = tmp_path / "bytes.jsonl"
    with (
        Ledger.for_campaign(campaign, tmp_path) as ledger,
        open_backend(campaign, tmp_path, simulate=True, transcript_path=transcript, fault_rate=0.1) as backend,
    ):
        run_loop(CampaignRunner(campaign, ledger, backend))
        counts = ledger.counts()
        exps = ledger.experiments()
    assert counts["proposed"] == counts["running"] == 0, counts
    assert counts["completed"] + counts["failed"] == 2, counts
    assert all((e.error or "").strip() for e in exps if e.state == "failed"), [e.error for e in exps]
    entries = Transcript.load(transcript)
    assert any(re.fullmatch(rb"\d+RUN\r", bytes.fromhex(e["hex"])) for e in entries if e["dir"] == "tx")
    assert pump_runs_repeated(entries) == []


def test_the_fault_rate_option_needs_simulate(tmp_path):
    path = REPO / "campaigns" / "perovskite_film_hardware.yaml"
    result = CliRunner().invoke(app, ["run", str(path), "--fault-rate", "0.1", "--no-prefect", "-r", str(tmp_path)])
    assert result.exit_code == 2
    assert "--fault-rate" in result.output and "--simulate" in result.output
    assert not (tmp_path / "perovskite_film_hardware").exists(), "nothing is created"


def test_the_fault_rate_option_is_bounded(tmp_path):
    path = REPO / "campaigns" / "perovskite_film_hardware.yaml"
    result = CliRunner().invoke(app, ["run", str(path), "--simulate", "--fault-rate", "0.9", "-r", str(tmp_path)])
    assert result.exit_code == 2
