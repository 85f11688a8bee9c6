"""`orchestrator serve`: a campaign as a Prefect deployment on a real `prefect server start` (127.0.0.1, a
free port), its runs started through the REST API exactly as the UI's Run button starts them."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.ledger import Ledger
from tests.conftest import BASE_CAMPAIGN, REPO
from tests.prefect_server import api, wait_for


def _toy(tmp_path: Path) -> Path:
    data = copy.deepcopy(BASE_CAMPAIGN)
    data["budget"] = {"max_experiments": 4, "batch_size": 2, "initial_experiments": 3}
    data["optimizer"] = {"num_restarts": 2, "raw_samples": 64, "mc_samples": 64}
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _run_and_wait(base: str, deployment_id: str) -> dict:
    run = api(base, f"/deployments/{deployment_id}/create_flow_run", {})  # what the UI's Run button posts
    final = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
    return wait_for("the flow run to end", lambda: (r := api(base, f"/flow_runs/{run['id']}"))["state_type"] in final and r, 180)


def _ledger(results: Path) -> list[tuple]:
    with Ledger(results / "toy" / "ledger.sqlite") as ledger:
        return [(e.id, e.state, e.conditions, e.outcomes) for e in ledger.experiments()]


def test_serve_runs_the_campaign_when_a_run_is_started_and_stops_on_sigint(prefect_server, tmp_path):
    base = prefect_server.base
    path, results = _toy(tmp_path), tmp_path / "results"
    env = {**os.environ, "PREFECT_API_URL": f"{base}/api", "DO_NOT_TRACK": "1"}
    env.pop("PREFECT_HOME", None)
    log = (tmp_path / "serve.log").open("w+")
    serve = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "serve", str(path), "-r", str(results)],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
    )
    try:
        (deployment,) = wait_for(
            "the deployment", lambda: api(base, "/deployments/filter", {"deployments": {"name": {"any_": ["toy"]}}}),
            120, serve,
        )
        assert deployment["entrypoint"] == "orchestrator.flows.campaign_flow"
        assert {"orchestrator", "campaign:toy"} <= set(deployment["tags"])
        assert deployment["parameters"] == {
            "campaign_name": "toy", "campaign_path": str(path.resolve()), "results_dir": str(results.resolve()),
            "progress": False, "simulate": False, "skip_if_busy": True,
        }
        assert api(base, f"/flows/{deployment['flow_id']}")["name"] == "campaign"

        first = _run_and_wait(base, deployment["id"])
        assert first["state_type"] == "COMPLETED", first["state"]
        assert first["name"] == "toy" and {"orchestrator", "campaign:toy"} <= set(first["tags"])
        done = _ledger(results)
        assert len(done) == 4 and all(state in ("completed", "failed") for _, state, _, _ in done)

        # The budget is used: a second run resumes, finds nothing to do, and completes.
        second = _run_and_wait(base, deployment["id"])
        assert second["state_type"] == "COMPLETED" and second["state_name"] == "Completed", second["state"]
        assert _ledger(results) == done

        # The campaign busy in another process (an `orchestrator run`): the run is skipped, not failed.
        holder = subprocess.Popen(
            [sys.executable, "-c", "import sys, time; from orchestrator.run_lock import RunLock; "
             "RunLock.for_campaign('toy', sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(120)",
             str(results)],
            stdout=subprocess.PIPE, text=True,
        )
        try:
            assert holder.stdout.readline().strip() == "locked"
            busy = _run_and_wait(base, deployment["id"])
        finally:
            holder.kill()
            holder.wait(timeout=30)
        assert busy["state_type"] == "COMPLETED" and busy["state_name"] == "Skipped", busy["state"]
        assert f"already running (pid {holder.pid}" in busy["state"]["message"]
        assert _ledger(results) == done

        serve.send_signal(signal.SIGINT)  # Ctrl-C
        assert serve.wait(timeout=60) == 0
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait(timeout=30)
    log.seek(0)
    out = log.read()
    assert "serving deployment 'campaign/toy'" in out and "stopped serving 'campaign/toy'" in out, out
    assert "Traceback" not in out, out


def test_serve_needs_a_prefect_server(tmp_path, monkeypatch):
    from orchestrator.cli import app

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))  # no profile naming a server either
    result = CliRunner().invoke(app, ["serve", str(_toy(tmp_path)), "-r", str(tmp_path / "results")])
    assert result.exit_code == 2, result.output
    assert "needs a Prefect server" in result.output and "prefect server start" in result.output
    assert "PREFECT_API_URL" in result.output
    assert not (tmp_path / "results" / "toy").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--cron", "0 * * * *", "--interval-min", "5"], "give --cron or --interval-min, not both"),
        (["--cron", "61 * * * *"], "is not a cron schedule"),
        (["--interval-min", "0"], "must be more than 0 minutes"),
        (["--cron", "@hourly", "--timezone", "Mars/Base"], "not an IANA time zone"),
    ],
)
def test_serve_rejects_bad_schedule_options(tmp_path, monkeypatch, options, message):
    from orchestrator.cli import app

    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # never reached: the options are checked first
    result = CliRunner().invoke(app, ["serve", str(_toy(tmp_path)), "-r", str(tmp_path / "results"), *options])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_deploy_registers_the_campaign_for_a_process_worker(prefect_server, tmp_path):
    """`orchestrator deploy --pool` returns at once; a worker polling that pool's queue runs the campaign."""
    base = prefect_server.base
    path, results = _toy(tmp_path), tmp_path / "results"
    env = {**os.environ, "PREFECT_API_URL": f"{base}/api", "DO_NOT_TRACK": "1"}
    env.pop("PREFECT_HOME", None)
    cli = [sys.executable, "-m", "orchestrator.cli", "deploy", str(path), "-r", str(results), "--name", "toy-station"]
    missing = subprocess.run([*cli, "--pool", "nowhere"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "no work pool 'nowhere'" in missing.stderr, missing.stdout + missing.stderr

    api(base, "/work_pools/", {"name": "station-a", "type": "process"})
    done = subprocess.run(
        [*cli, "--pool", "station-a", "--queue", "bench"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (deployment,) = api(base, "/deployments/filter", {"deployments": {"name": {"any_": ["toy-station"]}}})
    assert (deployment["work_pool_name"], deployment["work_queue_name"]) == ("station-a", "bench")
    assert deployment["entrypoint"] == "orchestrator.flows.campaign_flow"

    # The worker of "station a": a process worker, started elsewhere (its own cwd); `tests` on its path for the
    # toy simulator.
    worker_env = {**env, "PYTHONPATH": str(REPO), "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_HOME": str(tmp_path / "w")}
    worker = subprocess.Popen(
        [str(Path(sys.executable).parent / "prefect"), "worker", "start", "--pool", "station-a", "--work-queue", "bench"],
        cwd=tmp_path, env=worker_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        run = _run_and_wait(base, deployment["id"])
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(timeout=30)
    assert run["state_type"] == "COMPLETED", run["state"]
    assert {"orchestrator", "campaign:toy"} <= set(run["tags"])
    assert len(_ledger(results)) == 4
