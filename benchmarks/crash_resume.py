"""Crash-resume harness: SIGKILL a simulated instrument campaign at random moments, resume it, and check the
ledger against what the simulated lab physically did.

The campaign (``campaigns/perovskite_film_hardware.yaml`` with a larger budget) runs as a subprocess,
``orchestrator run FILE --simulate --no-prefect``. Each run is killed with SIGKILL in one of two ways, drawn
at random:

- **timed**: once the run has written to its ledger (so start-up is not what gets killed) the harness waits
  a random time, up to ``--max-delay-s``, and kills it;
- **at a crash point**: the run is started with ``ORCHESTRATOR_CRASH_AT=name:n`` (``orchestrator/crashpoints.py``)
  and kills itself the n-th time it passes that point, n drawn at random. These reach windows a few
  milliseconds wide (just after an experiment is recorded as dispatched, between a step's log entry and its
  bytes, between the last reading saved and the result committed) that timed kills almost never hit.

After each kill the harness reads the ledger to name the phase the kill hit:

- ``proposing``: no experiment running (fitting the models, optimizing the acquisition, or between batches);
- ``dispatching``: an experiment recorded ``running`` whose first step is not yet logged;
- ``instrument step``: a step logged ``started`` and not ``done`` (bytes on the wire, waiting on a reply);
- ``between steps``: the last logged step done and the next not started (a timed wait such as the anneal);
- ``writing results``: every step done, the result not yet committed.

It starts the run again after every kill, until the run finishes by itself. The simulated bench keeps a
journal by idempotency key that outlives the process; at the end the harness checks that:

1. the campaign used its whole budget (every experiment completed, failed or unknown; none left proposed or
   running);
2. no experiment was performed twice (no key has two samples with material dispensed on them);
3. every experiment the lab performed is in the ledger exactly once, and every completed one was measured
   by the lab, with the band gap the lab's materials model gave (within the analysis's precision);
4. each ``unknown`` experiment can be resolved with ``orchestrator resolve`` (the harness marks them failed,
   as a person who discarded the sample would).

    .venv/bin/python benchmarks/crash_resume.py                  # >= 30 kills, budget 60
    .venv/bin/python benchmarks/crash_resume.py --kills 5 --budget 8   # a quick run

Exit status 0 only if every check passed and at least ``--kills`` kills landed after start-up.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.crashpoints import POINTS  # noqa: E402
from simulators.lab import read_journal, sample_accounts  # noqa: E402

CAMPAIGN = ROOT / "campaigns" / "perovskite_film_hardware.yaml"
PHASES = ("proposing", "dispatching", "instrument step", "between steps", "writing results")
# How far into a run a crash point may be armed (the n-th passage): an experiment passes "step_started" and
# "step_done" 13 times each, the others once.
_MAX_PASSES = {"proposed": 2, "dispatched": 3, "step_started": 30, "step_done": 30, "readings_saved": 3}


@dataclass
class Report:
    kills: Counter = field(default_factory=Counter)  # phase → kills
    methods: Counter = field(default_factory=Counter)  # "timed" or "crash point <name>" → kills
    runs: int = 0
    states: dict[str, int] = field(default_factory=dict)
    performed: int = 0
    performed_twice: int = 0
    redispatched: int = 0
    finished_from_saved: int = 0
    unknown_resolved: int = 0
    failures: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def total_kills(self) -> int:
        return sum(self.kills.values())


def _ledger_state(path: Path) -> tuple[int, str | None]:
    """(last event seq, phase) read through a separate read-only connection, as `orchestrator status` would."""
    if not path.exists():
        return 0, None
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        seq = db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
        running = db.execute("SELECT id, attempts FROM experiments WHERE state = 'running'").fetchall()
        if not running:
            return seq, "proposing"
        exp_id, attempt = running[0]
        steps = db.execute(
            "SELECT idx, state FROM steps WHERE experiment_id = ? AND attempt = ? ORDER BY idx", (exp_id, attempt)
        ).fetchall()
        return seq, _phase(steps)
    except sqlite3.OperationalError:  # the tables are being created
        return 0, None
    finally:
        db.close()


def _phase(steps: list[tuple[int, str]]) -> str:
    if not steps:
        return "dispatching"
    if any(state == "started" for _, state in steps):
        return "instrument step"
    return "writing results" if len(steps) >= _actions() else "between steps"


@functools.cache
def _actions() -> int:
    """How many instrument actions one experiment of the campaign has (its procedure minus waits)."""
    steps = yaml.safe_load(CAMPAIGN.read_text())["procedure"]["steps"]
    return sum(1 for s in steps if not (isinstance(s, dict) and "wait" in s))


def write_campaign(workdir: Path, budget: int, seed: int) -> Path:
    data = yaml.safe_load(CAMPAIGN.read_text())
    data["seed"] = seed
    data["budget"] = {"max_experiments": budget, "batch_size": 2, "initial_experiments": min(6, budget)}
    path = workdir / "campaign.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_harness(
    workdir: Path,
    kills: int,
    budget: int,
    seed: int = 11,
    max_delay_s: float = 4.0,
    point_share: float = 0.5,
    points: list[str] | None = None,
) -> Report:
    """Kills and resumes the campaign until it finishes; returns the counts and any failed checks.

    Args:
        point_share: the share of kills made at crash points rather than timed.
        points: crash points (``name:n``) to use, one per run, instead of random kills.
    """
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    path = write_campaign(workdir, budget, seed)
    results = workdir / "results"
    name = yaml.safe_load(path.read_text())["name"]
    ledger_path = results / name / "ledger.sqlite"
    cmd = [sys.executable, "-m", "orchestrator.cli", "run", str(path), "--simulate", "--no-prefect", "--quiet", "-r", str(results)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    report = Report()
    while True:
        report.runs += 1
        want_kill = report.total_kills < kills
        point = None
        run_env = dict(env)
        if points is not None:
            want_kill = report.runs <= len(points)
            point = points[report.runs - 1] if want_kill else None
            if point is not None:
                run_env["ORCHESTRATOR_CRASH_AT"] = point
        elif want_kill and rng.random() < point_share:
            name = str(rng.choice([p for p in POINTS if p in _MAX_PASSES]))  # segment_sent: stations only
            point = f"{name}:{int(rng.integers(1, _MAX_PASSES[name] + 1))}"
            run_env["ORCHESTRATOR_CRASH_AT"] = point
        proc = subprocess.Popen(cmd, cwd=ROOT, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        start_seq, _ = _ledger_state(ledger_path)
        delay = float(rng.uniform(0.0, max_delay_s))
        ready_at = None
        while proc.poll() is None:
            time.sleep(0.02)
            if not want_kill or point is not None:
                continue
            if ready_at is None:
                # Wait until the resumed run has written something: start-up is not what we want to kill.
                seq, _ = _ledger_state(ledger_path)
                if seq > start_seq:
                    ready_at = time.perf_counter()
            elif time.perf_counter() - ready_at >= delay:
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait()
        output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
        if proc.returncode == -signal.SIGKILL:
            _, phase = _ledger_state(ledger_path)
            report.kills[phase or "start-up"] += 1
            report.methods[f"crash point {point.split(':')[0]}" if point else "timed"] += 1
            continue
        if proc.returncode != 0:
            report.problems.append(f"run {report.runs} exited {proc.returncode}: {output[-2000:]}")
        break
    check(report, path, results, ledger_path)
    report.wall_s = time.perf_counter() - t0
    return report


def check(report: Report, campaign_path: Path, results: Path, ledger_path: Path) -> None:
    """The checks of the module docstring; problems are appended to ``report.problems``."""
    db = sqlite3.connect(ledger_path)
    db.row_factory = sqlite3.Row
    rows = [dict(r) for r in db.execute("SELECT * FROM experiments ORDER BY id")]
    details = [r["detail"] or "" for r in db.execute("SELECT detail FROM events")]
    db.close()
    budget = yaml.safe_load(campaign_path.read_text())["budget"]["max_experiments"]
    report.states = dict(Counter(r["state"] for r in rows))
    report.redispatched = sum(1 for d in details if d.startswith("dispatched again"))
    report.finished_from_saved = sum(1 for d in details if d.startswith("resumed: every step had been done"))
    if len(rows) != budget or any(r["state"] in ("proposed", "running") for r in rows):
        report.problems.append(f"budget not completed: {report.states} of {budget}")
    name = yaml.safe_load(campaign_path.read_text())["name"]
    accounts = sample_accounts(read_journal(results / name / "simulated" / "journal.jsonl"))
    by_key = {r["dispatch_key"]: r for r in rows}
    for key, account in accounts.items():
        if account.material_samples == 0:
            continue
        report.performed += 1
        if account.material_samples > 1:
            report.performed_twice += 1
            report.problems.append(f"{key}: performed {account.material_samples} times")
        row = by_key.get(key)
        if row is None:
            report.problems.append(f"{key}: performed by the lab but not in the ledger")
            continue
        if row["state"] == "completed":
            if not account.measured:
                report.problems.append(f"experiment {row['id']}: completed but the lab never measured it")
            elif account.truth is not None:
                gap = json.loads(row["outcomes"])["band_gap_ev"]
                if abs(gap - account.truth["band_gap_ev"]) > 0.02:
                    report.problems.append(
                        f"experiment {row['id']}: ledger gap {gap:.3f} eV, the lab's film {account.truth['band_gap_ev']:.3f} eV"
                    )
    for r in rows:
        if r["state"] == "completed" and (r["dispatch_key"] not in accounts or not accounts[r["dispatch_key"]].measured):
            report.problems.append(f"experiment {r['id']}: completed without a measurement in the lab's journal")
        if r["state"] == "failed":
            report.failures[_cause(r["error"])] += 1
    for r in rows:
        if r["state"] != "unknown":
            continue
        res = subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", "resolve", str(campaign_path), str(r["id"]),
             "--failed", "sample discarded after the crash", "--by", "crash harness", "-r", str(results)],
            cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        if res.returncode != 0:
            report.problems.append(f"resolve {r['id']} exited {res.returncode}: {res.stdout}{res.stderr}")
        else:
            report.unknown_resolved += 1


def _cause(error: str | None) -> str:
    text = (error or "").split(";")[0]
    return text[:90]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--budget", type=int, default=60)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--max-delay-s", type=float, default=4.0)
    parser.add_argument("--point-share", type=float, default=0.5, help="share of kills at crash points")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = run_harness(Path(tmp), args.kills, args.budget, args.seed, args.max_delay_s, args.point_share)
    print(f"runs started: {report.runs}; kills: {report.total_kills}")
    for phase in (*PHASES, "start-up"):
        print(f"  killed while {phase:<16} {report.kills.get(phase, 0)}")
    for method, n in sorted(report.methods.items()):
        print(f"  by {method:<27} {n}")
    print(f"ledger at the end: {report.states} (budget {args.budget})")
    print(f"experiments the lab performed: {report.performed}; performed twice: {report.performed_twice}")
    print(f"dispatched again after a kill (nothing irreversible had happened): {report.redispatched}")
    print(f"finished from readings saved before a kill: {report.finished_from_saved}")
    print(f"unknown, resolved with `orchestrator resolve --failed`: {report.unknown_resolved}")
    for cause, n in report.failures.most_common():
        print(f"  failed {n:>3}: {cause}")
    print(f"wall time: {report.wall_s:.0f} s")
    for p in report.problems:
        print(f"PROBLEM: {p}")
    ok = not report.problems and report.total_kills - report.kills.get("start-up", 0) >= args.kills
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
