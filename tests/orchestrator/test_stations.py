"""Instruments on several lab PCs: segmenting, the campaign file's checks, and the whole path on a real
`prefect server start` with one process worker per station, each with its own station folder (its own "PC").

The campaign (`campaigns/perovskite_film_stations.yaml`, budget cut to 2) runs in a subprocess, as on the PC
that proposes; the synthesis station's worker runs the pumps, stage and hotplate steps, the optics station's
worker the spectrometer, each against byte-level simulators on its own pseudo-terminals.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from orchestrator.campaign import Campaign
from orchestrator.errors import CampaignFileError
from orchestrator.ledger import Ledger
from orchestrator.procedures import Action, Wait
from orchestrator.stations import split_segments, step_from_json, step_to_json
from simulators.lab import read_journal, sample_accounts
from tests.conftest import REPO
from tests.prefect_server import api, wait_for

STATIONS_FILE = REPO / "campaigns" / "perovskite_film_stations.yaml"
PROPOSER_TIMEOUT_S = 420


# --- pure parts --------------------------------------------------------------------------------------------


def _a(instrument: str, action: str = "go") -> Action:
    return Action(instrument, action, {})


def test_segments_follow_the_stations_and_waits_stay_where_the_sample_is():
    where = {"pump": "A", "plate": "A", "spec": "B", "smu": "C"}
    steps = [Wait(5), _a("pump"), _a("plate"), Wait(60), _a("spec"), Wait(1), _a("plate"), _a("smu")]
    segments = split_segments(steps, where)
    assert [(s.number, s.station, s.first_index, len(s.steps)) for s in segments] == [
        (0, "A", 0, 4), (1, "B", 4, 2), (2, "A", 6, 1), (3, "C", 7, 1)
    ]
    assert segments[0].steps[0] == Wait(5) and segments[0].steps[-1] == Wait(60)  # the anneal waits on A
    assert [i for i, _ in segments[1].actions()] == [4]  # procedure indexes, waits left out
    assert [s for seg in segments for s in seg.steps] == steps  # nothing lost, nothing reordered
    assert split_segments([Wait(1)], where) == []


def test_steps_travel_as_json_unchanged():
    for step in (Action("pump_a", "dispense", {"volume_ul": 40.5, "rate_ul_min": 500}, None),
                 Action("spectrometer", "measure", {"integration_ms": 100}, "pl"), Wait(12.5)):
        assert step_from_json(step_to_json(step)) == step
    with pytest.raises(ValueError, match="needs 'instrument' and 'action'"):
        step_from_json({"kwargs": {}})


def _stations_data() -> dict:
    return yaml.safe_load(STATIONS_FILE.read_text())


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda d: d["instruments"]["hotplate"].pop("station"), "instruments.hotplate.station: required when the campaign has stations; one of: synthesis, optics"),
        (lambda d: d["instruments"]["hotplate"].update(station="bench"), "instruments.hotplate.station: no station 'bench'; stations: synthesis, optics"),
        (lambda d: d["instruments"]["pump_dmf"].update(station="optics"), "instruments.pump_dmf.station: /dev/serial/by-id/usb-FTDI_FT232R_USB_UART_NE1000-if00-port0 is also pump_fai's port, on station 'synthesis'"),
        (lambda d: d["stations"].update(spare={"pool": "spare-pc"}), "stations.spare: no instrument is on this station"),
        (lambda d: d.pop("stations"), "instruments.pump_fai.station: there is no 'stations:' section"),
        (lambda d: d["stations"]["optics"].pop("pool"), "stations.optics.pool"),
    ],
)
def test_station_mistakes_are_refused_with_the_field_named(change, expected):
    data = _stations_data()
    change(data)
    with pytest.raises(Exception) as info:
        Campaign.model_validate(data)
    assert expected in str(info.value)


def test_run_refuses_stations_without_a_prefect_server(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    for extra in ([], ["--no-prefect"]):
        done = subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", "run", str(STATIONS_FILE), "--simulate", "-r", str(tmp_path), *extra],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
        )
        assert done.returncode == 2, done.stdout + done.stderr
        assert "PREFECT_API_URL" in done.stderr and "Traceback" not in done.stderr
        assert not (tmp_path / "perovskite_film_stations").exists()  # nothing created


# --- on a real server, one worker per station ---------------------------------------------------------------


def _campaign(tmp_path: Path, budget: int = 2, batch: int = 2) -> Path:
    data = _stations_data()
    data["budget"] = {"max_experiments": budget, "batch_size": batch, "initial_experiments": budget}
    path = tmp_path / "stations.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@contextmanager
def _workers(base: str, tmp_path: Path, crash_at: dict[str, str] | None = None) -> Iterator[dict[str, Path]]:
    """One process worker per station pool, each with its own station folder; yields station → folder."""
    folders: dict[str, Path] = {}
    procs = []
    try:
        for station, pool in (("synthesis", "synthesis-pc"), ("optics", "optics-pc")):
            folders[station] = tmp_path / f"pc-{station}"
            env = {
                **os.environ, "PREFECT_API_URL": f"{base}/api", "DO_NOT_TRACK": "1", "PREFECT_WORKER_QUERY_SECONDS": "1",
                "PREFECT_HOME": str(tmp_path / f"home-{station}"), "ORCHESTRATOR_STATION_DIR": str(folders[station]),
            }
            env.pop("ORCHESTRATOR_CRASH_AT", None)
            if crash_at and station in crash_at:
                env["ORCHESTRATOR_CRASH_AT"] = crash_at[station]
            procs.append(subprocess.Popen(
                [str(Path(sys.executable).parent / "prefect"), "worker", "start", "--pool", pool],
                cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
        yield folders
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)


def _run(base: str, path: Path, results: Path, crash_at: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_API_URL": f"{base}/api", "DO_NOT_TRACK": "1"}
    env.pop("PREFECT_HOME", None)
    env.pop("ORCHESTRATOR_CRASH_AT", None)
    if crash_at:
        env["ORCHESTRATOR_CRASH_AT"] = crash_at
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "run", str(path), "--simulate", "-r", str(results), "-q"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=PROPOSER_TIMEOUT_S,
    )


def _station_runs(base: str, campaign: str) -> list[dict]:
    runs = api(base, "/flow_runs/filter", {"flow_runs": {"tags": {"all_": [f"campaign:{campaign}"]}}})
    return [r for r in runs if r["deployment_id"] is not None and any(t.startswith("station:") for t in r["tags"])]


@pytest.fixture(scope="module")
def station_pools(prefect_server):
    for pool in ("synthesis-pc", "optics-pc"):
        api(prefect_server.base, "/work_pools/", {"name": pool, "type": "process"})
    return prefect_server.base


def _rename(path: Path, name: str) -> None:
    data = yaml.safe_load(path.read_text())
    data["name"] = name
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_each_station_runs_its_own_steps_and_the_results_reach_the_ledger(station_pools, tmp_path):
    base = station_pools
    path, results = _campaign(tmp_path), tmp_path / "results"
    with _workers(base, tmp_path) as folders:
        done = _run(base, path, results)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        # Someone clicks Retry on a finished synthesis run in the UI: the station refuses to make the film again.
        synthesis_run = next(r for r in _station_runs(base, "perovskite_film_stations") if "-synthesis-" in r["name"])
        api(base, f"/flow_runs/{synthesis_run['id']}/set_state", {"state": {"type": "SCHEDULED", "name": "AwaitingRetry"}, "force": True})
        retried = wait_for(
            "the retried run to end",
            lambda: (r := api(base, f"/flow_runs/{synthesis_run['id']}"))["state_type"] in ("COMPLETED", "FAILED", "CRASHED") and r,
            120,
        )
    assert (retried["state_type"], retried["state_name"]) == ("FAILED", "Refused"), retried["state"]
    assert "already ran steps [0, 1, 2" in retried["state"]["message"]

    with Ledger(results / "perovskite_film_stations" / "ledger.sqlite") as ledger:
        exps = ledger.experiments()
        assert [e.state for e in exps] == ["completed", "completed"]
        for e in exps:
            assert 1.2 < e.outcomes["band_gap_ev"] < 2.4 and e.outcomes["pl_counts_per_ms"] >= 0
            log = ledger.steps(e.id)
            assert len(log) == 12 and all(r.state == "done" for r in log)  # 11 synthesis actions + 1 measurement
            assert Path(e.raw["pl"]).parent == results / "perovskite_film_stations" / "raw"  # kept on this PC
            assert Path(e.raw["pl"]).exists()

    # Two segments per experiment, each one flow run of its station's deployment, run by that station's pool.
    runs = _station_runs(base, "perovskite_film_stations")
    assert len(runs) == 4 and sum(r["state_type"] == "COMPLETED" for r in runs) == 3  # and the refused retry
    assert sorted((r["name"].split("-s", 1)[1], r["work_pool_name"]) for r in runs) == [
        ("0-synthesis-t1", "synthesis-pc"), ("0-synthesis-t1", "synthesis-pc"), ("1-optics-t1", "optics-pc"), ("1-optics-t1", "optics-pc")
    ]
    # What each "PC" physically did, from its own simulated lab's journal: dispensing only at the synthesis
    # station, measuring only at the optics station, one substrate per experiment.
    synthesis = read_journal(next(folders["synthesis"].rglob("journal.jsonl")))
    optics = read_journal(next(folders["optics"].rglob("journal.jsonl")))
    assert {e["kind"] for e in synthesis} >= {"dispensed", "position"} and "measured" not in {e["kind"] for e in synthesis}
    assert "measured" in {e["kind"] for e in optics} and "dispensed" not in {e["kind"] for e in optics}
    assert sorted(a.material_samples for a in sample_accounts(synthesis).values()) == [1, 1]
    assert len(list((folders["optics"] / "perovskite_film_stations" / "optics" / "raw").glob("*.json"))) == 2


def test_a_crashed_proposer_finds_its_segments_again_and_sends_none_twice(station_pools, tmp_path):
    """Killed just after a segment's flow run was created (before the ledger noted it), then in the middle of
    recording a finished segment: each resumed run re-attaches to the runs it had sent."""
    base = station_pools
    path, results = _campaign(tmp_path, budget=2, batch=1), tmp_path / "results"
    _rename(path, "stations_crash")
    with _workers(base, tmp_path) as folders:
        first = _run(base, path, results, crash_at="segment_sent:1")
        assert first.returncode == -9, first.stdout[-2000:] + first.stderr[-2000:]
        second = _run(base, path, results, crash_at="step_done:15")  # experiment 2's synthesis, being recorded
        assert second.returncode == -9, second.stdout[-2000:] + second.stderr[-2000:]
        third = _run(base, path, results)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    with Ledger(results / "stations_crash" / "ledger.sqlite") as ledger:
        assert [e.state for e in ledger.experiments()] == ["completed", "completed"]
    runs = _station_runs(base, "stations_crash")
    assert sorted(r["name"].split("-s", 1)[1] for r in runs) == ["0-synthesis-t1"] * 2 + ["1-optics-t1"] * 2
    synthesis = read_journal(next(folders["synthesis"].rglob("journal.jsonl")))
    assert sorted(a.material_samples for a in sample_accounts(synthesis).values()) == [1, 1]  # no film made twice


def test_a_station_that_dies_mid_dispense_leaves_the_experiment_unknown(station_pools, tmp_path):
    """The synthesis PC's flow run is killed (SIGKILL) after it labelled the first dispense started: the
    campaign cannot tell whether precursor went onto the substrate, so it sends nothing again."""
    base = station_pools
    path, results = _campaign(tmp_path, budget=1, batch=1), tmp_path / "results"
    _rename(path, "stations_dead")
    with _workers(base, tmp_path, crash_at={"synthesis": "step_started:3"}):
        done = _run(base, path, results)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with Ledger(results / "stations_dead" / "ledger.sqlite") as ledger:
        (exp,) = ledger.experiments()
        assert exp.state == "unknown"
        assert "pump_fai.dispense" in exp.error and "orchestrator resolve" in exp.error
    runs = _station_runs(base, "stations_dead")
    assert [(r["state_type"], r["name"].split("-s", 1)[1]) for r in runs] == [("CRASHED", "0-synthesis-t1")]
