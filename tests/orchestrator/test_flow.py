"""The campaign as a Prefect flow, end to end, against Prefect's test harness (a real temporary API)."""

from __future__ import annotations

import pytest
import yaml

from orchestrator.ledger import Ledger


def test_flow_runs_campaign_and_reports_to_prefect(prefect_api, tmp_path, campaign_dict):
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, TaskRunFilter

    from orchestrator.flows import run_campaign_flow

    campaign_dict["budget"] = {"max_experiments": 7, "batch_size": 3, "initial_experiments": 4}
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(campaign_dict))
    counts = run_campaign_flow(path, tmp_path / "results", progress=False)
    assert counts["completed"] + counts["failed"] == 7

    with Ledger(tmp_path / "results" / "toy" / "ledger.sqlite") as ledger:
        exps = ledger.experiments()
    assert [e.batch for e in exps] == [1, 1, 1, 2, 2, 2, 3]
    assert exps[-1].generator == "gp:qLogNEI"

    with get_client(sync_client=True) as client:
        (run,) = [r for r in client.read_flow_runs() if r.name == "toy"]
        assert run.state.is_completed()
        assert {"orchestrator", "campaign:toy"} <= set(run.tags)
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])), task_run_filter=TaskRunFilter()
        )
    names = sorted(t.name for t in tasks)
    by_id = {e.id: e for e in exps}
    expected = []
    for i in range(1, 8):
        c = by_id[i].conditions
        expected.append(f"experiment-{i} (temp_c={c['temp_c']:.4g}, layers={c['layers']}, solvent={c['solvent']})")
    assert [n for n in names if n.startswith("experiment-")] == sorted(expected)
    assert sum(n.startswith("propose") for n in names) == 3
    assert sum(n.startswith("refit") for n in names) == 3
    assert all(t.state.is_completed() for t in tasks)

    # A second run of the finished campaign resumes and does nothing more.
    assert run_campaign_flow(path, tmp_path / "results", progress=False) == counts

    # The campaign's artifacts, under keys stable per campaign: each run added a version of each.
    with get_client(sync_client=True) as client:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[
            "toy-progress", "toy-experiments", "toy-summary", "toy-convergence"
        ])))
    by_key: dict = {}
    for a in arts:
        by_key.setdefault(a.key, []).append(a)
    assert set(by_key) == {"toy-progress", "toy-experiments", "toy-summary", "toy-convergence"}
    assert len(by_key["toy-progress"]) == 2, "one progress artifact per flow run"
    assert any(a.data == 100 and a.flow_run_id == run.id for a in by_key["toy-progress"])
    latest_table = max(by_key["toy-experiments"], key=lambda a: a.created)
    table = latest_table.data if isinstance(latest_table.data, list) else __import__("json").loads(latest_table.data)
    assert sorted(r["id"] for r in table) == list(range(1, 8))
    summary = max(by_key["toy-summary"], key=lambda a: a.created).data
    assert "Best so far" in summary and f"#{_best_id(exps)}" in summary
    image = max(by_key["toy-convergence"], key=lambda a: a.created).data
    assert image.startswith("data:image/png;base64,iVBORw0KGgo")
    assert len(by_key["toy-summary"]) >= 3, "published once per batch, not only at the end"
    # Fit quality in the batch-3 summary (scored on the loop's own surrogate) and in each run's final one.
    assert sum("| yield_pct | gp |" in a.data for a in by_key["toy-summary"]) == 3


def _best_id(exps):
    done = [e for e in exps if e.state == "completed"]
    return max(done, key=lambda e: e.outcomes["yield_pct"]).id


def test_flow_runs_a_campaign_on_simulated_instruments(prefect_api, tmp_path):
    from orchestrator.flows import run_campaign_flow
    from tests.orchestrator.test_hardware import LAB

    path = tmp_path / "lab.yaml"
    path.write_text(yaml.safe_dump(LAB))
    counts = run_campaign_flow(path, tmp_path / "results", progress=False, simulate=True)
    assert counts["completed"] + counts["failed"] == LAB["budget"]["max_experiments"]
    with Ledger(tmp_path / "results" / "plate_lab" / "ledger.sqlite") as ledger:
        assert all(e.raw and "pl" in e.raw for e in ledger.experiments())


def test_flow_takes_the_run_lock_itself(prefect_api, tmp_path, campaign_dict):
    """Called directly (not through `orchestrator run`), the flow refuses a campaign another process is running."""
    import subprocess
    import sys

    from orchestrator.errors import CampaignBusyError
    from orchestrator.flows import run_campaign_flow

    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(campaign_dict))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from orchestrator.run_lock import RunLock; "
         "RunLock.for_campaign('toy', sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(120)",
         str(tmp_path / "results")],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(CampaignBusyError, match=f"pid {holder.pid} on host"):
            run_campaign_flow(path, tmp_path / "results", progress=False)
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert not (tmp_path / "results" / "toy" / "ledger.sqlite").exists()
