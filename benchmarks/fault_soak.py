"""Fault soak: the instrument campaign on simulated instruments with a share of the replies spoiled.

``campaigns/perovskite_film_hardware.yaml`` runs as ``orchestrator run --simulate --no-prefect`` would: through
``open_backend(..., simulate=True, fault_rate=...)``, a ``CampaignRunner`` on a SQLite ledger in a temporary
results folder and ``run_loop``. Each seed is a fresh run with the campaign's ``seed`` set to it (which also
seeds the bench's measurement noise and its fault plans). Every port's :class:`~simulators.faults.FaultPlan`
spoils each reply with probability ``--fault-rate``, drawing the kind from the bench's mix
(:data:`simulators.faults.SOAK_KINDS`): line faults (``no_reply``, ``partial``, ``corrupt``, ``late``, ``noise``),
a measurement that is NaN or out of range (``bad_value``), the device's own error state (``device_error``)
and a port that vanishes and comes back (``disconnect``).

Faults are on from the first byte: connecting is soaked too. Connect queries are idempotent and retried (a
pump's with ``CONNECT_RETRIES`` further tries; the stage's status with ``status_tries``), and a pump alarm from
before the connection (``A?S``, ``A?R``) is cleared by reading it (see ``instruments.new_era``). A run that
cannot connect is reported and counts as a failed soak.

One change to the campaign besides seed and budget: GRBL stages get ``rehome_after_alarm: true``. The soak's
hard-limit alarms are the fault plan's ``device_error``, not a crash, and nobody is at the simulated bench to
look and home it; on a real bench the driver's default (refuse moves until someone has looked) stands. A reset
(a ``disconnect`` reopens the port, which resets the Arduino) is re-homed by the driver's default
``rehome_after_reset``.

Printed per run and in total:

- experiments completed / failed of the budget, and any left ``proposed`` or ``running`` (must be none);
- failure reasons grouped by cause: the ledger's reason with numbers and quoted bytes blanked, shortened;
- replies decided by the fault plans and how many each fault kind spoiled (per run and in total);
- retries (``instruments.transport`` "retrying" log records: an idempotent command sent again; and the stage
  driver's own "asking again" of a status query, which it retries itself to let a late reply pass first),
  disconnects the simulated ports made and reconnects the transports made (``reopens``), and lost ``RUN`` replies the pump driver resolved by asking the
  pump (``instruments.new_era`` warnings) instead of resending;
- duplicate pump ``RUN`` commands within one experiment, from the transcript (must be none);
- wall time.

Exit status 0 only if every run used its whole budget (every experiment completed or failed, none left
proposed or running) and no pump ``RUN`` was sent twice in one experiment.

    .venv/bin/python benchmarks/fault_soak.py                       # 3 seeds, budget 12, 10 % faulty replies
    .venv/bin/python benchmarks/fault_soak.py --seeds 1 --budget 4  # smoke run
    .venv/bin/python benchmarks/fault_soak.py --fault-rate 0        # the same runs without faults, to compare
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import simulators.bench as bench_module  # noqa: E402
from instruments.transport import Transcript  # noqa: E402
from orchestrator.backends import open_backend  # noqa: E402
from orchestrator.campaign import load_campaign  # noqa: E402
from orchestrator.errors import UserInputError  # noqa: E402
from orchestrator.ledger import Ledger  # noqa: E402
from orchestrator.loop import CampaignRunner, run_loop  # noqa: E402
from simulators.bench import pump_runs_repeated  # noqa: E402

CAMPAIGN = ROOT / "campaigns" / "perovskite_film_hardware.yaml"


def shorten(reason: str | None, width: int = 110) -> str:
    """A failure reason with the run-specific details blanked, so equal causes group together."""
    text = (reason or "<no reason>").splitlines()[0]
    text = re.sub(r"b'(?:[^'\\]|\\.)*'|b\"(?:[^\"\\]|\\.)*\"", "b'…'", text)
    text = re.sub(r"\bexperiment \d+\b", "experiment N", text)
    text = re.sub(r"(?<![A-Za-z_])[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?", "#", text)
    return text if len(text) <= width else text[: width - 1] + "…"


class _Count(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.retries = 0
        self.run_lost = 0

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if (record.name == "instruments.transport" and "retrying" in msg) or (
            record.name == "instruments.gcode" and "asking again" in msg
        ):
            self.retries += 1
        elif record.name == "instruments.new_era" and "reply to RUN lost" in msg:
            self.run_lost += 1


def soak_once(seed: int, fault_rate: float, budget: int | None, workdir: Path) -> dict[str, Any]:
    """One campaign run on the simulated bench; returns the figures."""
    data = yaml.safe_load(CAMPAIGN.read_text())
    data["seed"] = seed
    for inst in data["instruments"].values():
        if inst.get("driver") == "grbl":  # see the module docstring
            inst.setdefault("options", {})["rehome_after_alarm"] = True
    if budget is not None:
        b = data["budget"]
        b["max_experiments"] = budget
        b["initial_experiments"] = min(b.get("initial_experiments", budget), budget)
        b["batch_size"] = min(b.get("batch_size", 1), budget)
    path = workdir / f"campaign_{seed}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    campaign = load_campaign(path)
    results = workdir / f"results_{seed}"
    transcript_path = workdir / f"transcript_{seed}.jsonl"

    benches: list[Any] = []
    original = bench_module.SimulatedBench

    class Recorded(original):  # type: ignore[misc, valid-type]
        def start(self):  # type: ignore[no-untyped-def]
            benches.append(self)
            return super().start()

    counter = _Count()
    loggers = [logging.getLogger(n) for n in ("instruments.transport", "instruments.new_era", "instruments.gcode")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(counter)
        lg.setLevel(logging.INFO)
    bench_module.SimulatedBench = Recorded
    t0 = time.perf_counter()
    reopens = 0
    try:
        with (
            Ledger.for_campaign(campaign, results) as ledger,
            open_backend(
                campaign, results, simulate=True, transcript_path=transcript_path, fault_rate=fault_rate
            ) as backend,
        ):
            run_loop(CampaignRunner(campaign, ledger, backend))
            transports = {id(d.transport): d.transport for d in backend.drivers.values()}
            reopens = sum(t.reopens for t in transports.values())
            exps = ledger.experiments()
            counts = ledger.counts()
    finally:
        bench_module.SimulatedBench = original
        for lg, level in zip(loggers, levels):
            lg.removeHandler(counter)
            lg.setLevel(level)
    wall = time.perf_counter() - t0
    faults: Counter[str] = Counter()
    replies = disconnects = 0
    for bench in benches:
        for device in bench.devices.values():
            faults.update(device.faults.counts())
            replies += device.faults.replies
            disconnects += device.disconnects
    return {
        "seed": seed,
        "budget": campaign.budget.max_experiments,
        "counts": counts,
        "reasons": Counter(shorten(e.error) for e in exps if e.state == "failed"),
        "empty_reasons": sum(1 for e in exps if e.state == "failed" and not (e.error or "").strip()),
        "replies": replies,
        "faults": faults,
        "retries": counter.retries,
        "run_lost": counter.run_lost,
        "reopens": reopens,
        "disconnects": disconnects,
        "repeated_runs": pump_runs_repeated(Transcript.load(transcript_path)),
        "wall_s": wall,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fault-rate", type=float, default=0.10, help="chance that a reply is spoiled (default 0.10)")
    parser.add_argument("--seeds", type=int, default=3, help="runs, with campaign seeds 1..N (default 3)")
    parser.add_argument("--first-seed", type=int, default=1, help="start the seeds here instead of 1")
    parser.add_argument("--budget", type=int, default=None, help="max_experiments override (default: the campaign's)")
    parser.add_argument("--keep", type=Path, default=None, help="keep ledgers and transcripts in this folder")
    args = parser.parse_args(argv)
    if not 0.0 <= args.fault_rate <= 1.0:
        parser.error("--fault-rate must be within [0, 1]")

    runs = []
    not_started: list[int] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fault_soak_") as tmp:
        workdir = Path(tmp) if args.keep is None else args.keep
        workdir.mkdir(parents=True, exist_ok=True)
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            try:
                r = soak_once(seed, args.fault_rate, args.budget, workdir)
            except UserInputError as exc:
                # Connect queries get more tries than the loop's, but a run of spoiled replies longer than that
                # (or an alarm a person must clear) ends the run before any experiment. Say so, go on.
                print(f"seed {seed}: did not start: {exc}", flush=True)
                not_started.append(seed)
                continue
            runs.append(r)
            c = r["counts"]
            spoiled = sum(r["faults"].values())
            print(
                f"seed {seed}: {c['completed']} completed, {c['failed']} failed of {r['budget']}"
                f" (proposed {c['proposed']}, running {c['running']}); replies {r['replies']}, spoiled {spoiled}"
                f" ({100 * spoiled / max(1, r['replies']):.1f} %); retries {r['retries']}, disconnects"
                f" {r['disconnects']}, reopens {r['reopens']}, RUN replies lost {r['run_lost']}; {r['wall_s']:.1f} s",
                flush=True,
            )
            print("  faults: " + (", ".join(f"{k} {v}" for k, v in r["faults"].most_common()) or "none"), flush=True)
            for reason, n in r["reasons"].most_common():
                print(f"  failed {n:3d}  {reason}", flush=True)
    total_wall = time.perf_counter() - t0

    def total(key: str) -> int:
        return sum(r["counts"][key] for r in runs)

    budget = sum(r["budget"] for r in runs)
    reasons: Counter[str] = sum((r["reasons"] for r in runs), Counter())
    faults: Counter[str] = sum((r["faults"] for r in runs), Counter())
    replies = sum(r["replies"] for r in runs)
    repeated = [f"seed {r['seed']} {x}" for r in runs for x in r["repeated_runs"]]
    empty = sum(r["empty_reasons"] for r in runs)

    print(f"\nfault rate {args.fault_rate:.2f}, {len(runs)} run(s), wall {total_wall:.1f} s")
    print(
        f"experiments: {total('completed')} completed, {total('failed')} failed of {budget}"
        f" (left proposed {total('proposed')}, running {total('running')})"
    )
    print(f"failure reasons ({total('failed')}; {empty} without a reason):")
    for reason, n in reasons.most_common():
        print(f"  {n:4d}  {reason}")
    spoiled = sum(faults.values())
    print(f"replies: {replies}, spoiled {spoiled} ({100 * spoiled / max(1, replies):.1f} %): " + (
        ", ".join(f"{k} {v}" for k, v in faults.most_common()) or "none"
    ))
    print(
        f"transport: {sum(r['retries'] for r in runs)} retries of idempotent commands, "
        f"{sum(r['disconnects'] for r in runs)} disconnects, {sum(r['reopens'] for r in runs)} reopens; pump RUN replies lost and resolved by asking: "
        f"{sum(r['run_lost'] for r in runs)}"
    )
    print(f"pump RUN sent twice in one experiment: {len(repeated)}")
    for line in repeated:
        print(f"  {line}")

    ok = all(
        r["counts"]["completed"] + r["counts"]["failed"] == r["budget"]
        and r["counts"]["proposed"] == 0
        and r["counts"]["running"] == 0
        for r in runs
    )
    ok = ok and not repeated and empty == 0 and not not_started
    if not_started:
        print(f"runs that could not connect: seeds {not_started}")
    print("OK: every run used its budget" if ok else "FAILED: a run did not use its budget, or a RUN was repeated")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
