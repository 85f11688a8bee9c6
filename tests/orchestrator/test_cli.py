"""The command line: exit codes, messages, no tracebacks for user mistakes, and the real entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.cli import app
from tests.conftest import REPO

cli = CliRunner()


def _invoke(*args: str):
    return cli.invoke(app, list(args), catch_exceptions=False)


def test_validate_ok(write_campaign, campaign_dict):
    result = _invoke("validate", str(write_campaign(campaign_dict)))
    assert result.exit_code == 0
    assert "campaign 'toy', 3 parameter(s)" in result.output


def test_validate_bad_file_exits_2_with_lines(write_campaign, campaign_dict):
    campaign_dict["parameters"][0]["low"] = 999.0
    campaign_dict["objectives"][0]["outcome"] = "missing"
    result = _invoke("validate", str(write_campaign(campaign_dict)))
    assert result.exit_code == 2
    assert "parameters[0]: low (999.0) must be below high" in result.output
    assert "Traceback" not in result.output


def test_validate_unknown_builtin_model(write_campaign, campaign_dict):
    campaign_dict["simulator"] = {"model": "no_such_model"}
    result = _invoke("validate", str(write_campaign(campaign_dict)))
    assert result.exit_code == 2
    assert "unknown model 'no_such_model'" in result.output


def test_validate_unimportable_user_model(write_campaign, campaign_dict):
    campaign_dict["simulator"] = {"model": "nowhere.at_all:sim"}
    result = _invoke("validate", str(write_campaign(campaign_dict)))
    assert result.exit_code == 2
    assert "cannot import 'nowhere.at_all'" in result.output


def test_schema_is_json():
    result = _invoke("schema")
    assert result.exit_code == 0
    assert json.loads(result.output)["title"] == "Campaign"


def test_run_status_export(tmp_path, write_campaign, campaign_dict):
    path = write_campaign(campaign_dict)
    results = tmp_path / "res"
    run = _invoke("run", str(path), "--no-prefect", "-r", str(results))
    assert run.exit_code == 0, run.output
    assert "8/8" in run.output and "summary" in run.output and "experiments used" in run.output

    status = _invoke("status", str(path), "-r", str(results))
    assert status.exit_code == 0 and "completed" in status.output

    out_csv, out_pq = tmp_path / "x.csv", tmp_path / "x.parquet"
    exp = _invoke("export", str(path), "-r", str(results), "--csv", str(out_csv), "--parquet", str(out_pq))
    assert exp.exit_code == 0
    a, b = pd.read_csv(out_csv), pd.read_parquet(out_pq)
    assert len(a) == len(b) == 8
    assert {"id", "state", "temp_c", "layers", "solvent", "yield_pct"} <= set(a.columns)
    assert a["yield_pct"].notna().sum() == (a["state"] == "completed").sum()

    again = _invoke("run", str(path), "--no-prefect", "-r", str(results))
    assert "resuming" in again.output and "8 of 8 experiments done" in again.output


def test_status_without_ledger(tmp_path, write_campaign, campaign_dict):
    result = _invoke("status", str(write_campaign(campaign_dict)), "-r", str(tmp_path / "none"))
    assert result.exit_code == 2 and "no ledger" in result.output


def test_export_needs_a_target(tmp_path, write_campaign, campaign_dict):
    result = _invoke("export", str(write_campaign(campaign_dict)), "-r", str(tmp_path))
    assert result.exit_code == 2 and "--csv" in result.output


def test_changed_space_is_refused(tmp_path, write_campaign, campaign_dict):
    results = tmp_path / "res"
    campaign_dict["budget"] = {"max_experiments": 2, "batch_size": 1}
    assert _invoke("run", str(write_campaign(campaign_dict)), "--no-prefect", "-r", str(results)).exit_code == 0
    campaign_dict["parameters"][0]["high"] = 150.0
    result = _invoke("run", str(write_campaign(campaign_dict)), "--no-prefect", "-r", str(results))
    assert result.exit_code == 2 and "different parameters" in result.output


def test_console_script_with_embedded_prefect(tmp_path, campaign_dict):
    """The installed `orchestrator` command runs a campaign as a Prefect flow on the embedded API."""
    campaign_dict["budget"] = {"max_experiments": 4, "batch_size": 2}
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(campaign_dict))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PYTHONPATH"] = str(REPO)
    exe = os.path.join(os.path.dirname(sys.executable), "orchestrator")
    proc = subprocess.run(
        [exe, "run", str(path), "-r", str(tmp_path / "res")], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "4/4" in proc.stdout and "experiments used" in proc.stdout
    assert (tmp_path / "res" / ".prefect").is_dir(), "Prefect's home is kept under the results folder"
    assert "Traceback" not in proc.stderr


def test_console_script_bad_file_exit_code(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nparameters: 3\n")
    exe = os.path.join(os.path.dirname(sys.executable), "orchestrator")
    proc = subprocess.run([exe, "validate", str(bad)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "parameters" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
