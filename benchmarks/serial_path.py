"""Round trip per command over a pseudo-terminal, and the loop's overhead per experiment on the serial path.

Part 1, round trip per command: each of the six drivers (``ika_namur``, ``new_era``, ``scpi_smu``,
``line_spectrometer``, ``grbl``, ``line``) is connected through a :class:`Transport` to its firmware
simulator served by a :class:`PtyDevice` (a real pty; the firmware runs in a thread of this process, so the
figures include the GIL hand-offs between the two sides, which a real device would not add). Each then repeats
one cheap idempotent query ``--repeats`` times after a warm-up, each call timed with ``time.perf_counter``:

- ika_namur: ``read_temperature()`` with the watchdog off (``IN_PV_2``; with it on, each action re-arms it first);
- new_era: ``transport.query(b"0DIS\\r", parse=parse_dispensed)`` (the status poll of a running pump);
- scpi_smu, line_spectrometer: ``identify()`` (``*IDN?``);  grbl: ``position()`` (``?``);
- line: ``call("speed")`` (``GET`` on the simulated Arduino rig);
- baseline ``echo``: raw ``Transport.query(b"PING\\n", parse=bytes)`` against a firmware that echoes the line;
  ``echo+jsonl``: the same with a :class:`Transcript` appending every frame to a JSONL file.

"cmds/call" is the number of frames the firmware received per call (checks that the call is one command);
median, p95 and max are per call, in microseconds. The transports use each driver's factory line settings with
8N1 forced, as the simulated bench does (a pty refuses 7E1).

Part 2, loop overhead per experiment: ``campaigns/perovskite_film_hardware.yaml`` (5 pumps on one port, GRBL
stage, IKA hotplate, spectrometer) runs through ``open_backend(..., simulate=True, transcript_path=...)`` and a
``CampaignRunner`` on a SQLite ledger file in the system's temporary folder. The proposer is taken out: the
campaign copy has ``initial_experiments == max_experiments`` (Sobol only, no GP), batch size 1. The first
experiment is a warm-up (imports, first writes) and is left out of the figures. Per experiment:

- propose ms: ``observations`` + ``refit`` (None) + ``propose(1)`` (a Sobol point and its ledger commit);
- wall ms: ``runner.run_experiment(id)``: ledger reads and the running/completed commits (WAL,
  ``synchronous=FULL``), procedure rendering, limit checks, the executor, every serial round trip, raw-file
  writes, analysis; "backend ms" is the ``InstrumentBackend.run_experiment`` part of it, "ledger ms" the rest;
- commands: frames written (``tx`` transcript entries, including replyless sends such as ``START_1``);
  "polls" are the ones simulated durations cause: stage ``?``, pump ``<addr>DIS``, hotplate ``OUT_WD1@``
  (watchdog re-arm and keepalive) and ``IN_PV`` (temperature polls);
- I/O est. = sum over commands of the part-1 median per call of that command's driver (``sum(cmds x RTT)``);
  overhead est. = wall - I/O est.: everything except serial round trips. The estimate charges every command one
  short round trip, so it misses what long replies cost (the spectrum: ~2 KB after ``MEAS?``);
- I/O in transcript: the sum, over commands, of the time from the ``tx`` entry to the last ``rx`` entry before
  the next command (a spectrum's data frame included), as the transcript's clock saw it (so it includes the
  file append of the ``tx`` entry); overhead = wall - that; "slowest command" is the longest such span;
- transcript est. = commands x (``echo+jsonl`` - ``echo`` median): what the JSONL transcript file adds;
- virtual min: simulated lab time (the :class:`VirtualClock`) the experiment took. Simulated instrument time is
  virtual: a 60-minute anneal or a pump run takes no wall time. What a simulated duration costs in wall time is
  the polls and keepalives the drivers send while the virtual clock jumps ahead (the hotplate watchdog is
  re-armed every 10 virtual s of an anneal), so that cost scales with the simulated time.

Targets in the issue: under 1 ms per command and under 50 ms of overhead per experiment. The figures are
reported as measured; nothing is tuned to meet them. Run ``python benchmarks/serial_path.py --help``; raw
numbers go to ``benchmarks/out/serial_path.json``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from instruments.new_era import ETX, STX, format_command, parse_dispensed  # noqa: E402
from instruments.registry import driver_specs  # noqa: E402
from instruments.transport import SerialSettings, Transcript, Transport  # noqa: E402
from orchestrator.backends import open_backend  # noqa: E402
from orchestrator.campaign import load_campaign  # noqa: E402
from orchestrator.ledger import Ledger  # noqa: E402
from orchestrator.loop import CampaignRunner  # noqa: E402
from simulators.lab import SimLab  # noqa: E402
from simulators.serial_device import Firmware, PtyDevice  # noqa: E402

CAMPAIGN = ROOT / "campaigns" / "perovskite_film_hardware.yaml"
NUM = r"[-+]?\d+(?:\.\d+)?"
LINE_OPTIONS = {"ready_banner": r"READY rig v\d+", "ready_timeout_s": 2.0,
                "commands": {"speed": {"send": "GET", "reply": rf"VAL (?P<value>{NUM})", "idempotent": True}}}
# kind: (options, limits, what is timed, the call given the connected driver)
CASES: dict[str, tuple[dict[str, Any], dict[str, Any], str, Callable[[Any], Callable[[], Any]]]] = {
    "ika_namur": ({"watchdog_s": 0}, {"max_temp_c": 250, "max_stir_rpm": 0}, "read_temperature() [IN_PV_2]",
                  lambda d: d.read_temperature),
    "new_era": ({"address": 0, "syringe_diameter_mm": 4.78}, {"syringe_volume_ul": 1000, "max_rate_ul_min": 1000},
                "transport.query(0DIS, parse_dispensed)",
                lambda d: partial(d.transport.query, format_command(0, "DIS"), end=ETX, start=STX,
                                  parse=partial(parse_dispensed, address=0), idempotent=True)),
    "scpi_smu": ({}, {"max_voltage_v": 2.0}, "identify() [*IDN?]", lambda d: d.identify),
    "line_spectrometer": ({}, {"min_integration_ms": 10, "max_integration_ms": 2000}, "identify() [*IDN?]",
                          lambda d: d.identify),
    "grbl": ({}, {"x_mm": [0, 400], "y_mm": [0, 300], "z_mm": [0, 50]}, "position() [?]", lambda d: d.position),
    "line": (LINE_OPTIONS, {}, "call('speed') [GET]", lambda d: partial(d.call, "speed")),
}


def log(msg: str) -> None:
    """Progress on stderr; the tables go to stdout."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def truth(conditions: Any, rng: Any) -> dict[str, float]:
    """A fixed film: what part 1's measuring instruments see (the queries timed there measure nothing)."""
    return {"band_gap_ev": 1.6, "pl_intensity": 50.0, "fwhm_nm": 30.0}


class EchoFirmware(Firmware):
    """The baseline device: answers every line with the line itself."""

    rx_end = b"\n"

    def handle(self, frame: bytes) -> bytes:
        return frame


def time_calls(call: Callable[[], Any], firmware: Firmware, repeats: int, warmup: int) -> dict[str, Any]:
    """Times ``repeats`` calls after ``warmup`` untimed ones.

    Returns:
        median/p95/max per call (µs), ``cmds_per_call`` (frames the firmware received per call) and ``n``.
    """
    for _ in range(warmup):
        call()
    before = len(firmware.received)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    us = np.asarray(times) * 1e6
    return {"median_us": float(np.median(us)), "p95_us": float(np.percentile(us, 95)), "max_us": float(us.max()),
            "cmds_per_call": (len(firmware.received) - before) / repeats, "n": repeats}


def part1(repeats: int, warmup: int, tmp: Path) -> dict[str, dict[str, Any]]:
    """Round trip per call of each driver's cheap query and of the raw echo baselines (see the module docstring).

    Args:
        repeats: timed calls per row; warmup: untimed calls before them; tmp: folder for pty links and transcript.

    Returns:
        one row per driver kind, then ``echo`` and ``echo+jsonl``.
    """
    rows: dict[str, dict[str, Any]] = {}
    specs = driver_specs()
    for kind, (options, limits, what, make_call) in CASES.items():
        spec = specs[kind]
        opts, lims = spec.driver.Options.model_validate(options), spec.driver.Limits.model_validate(limits)
        lab = SimLab(truth=truth, sample_model=lambda events: {})
        module, _, func = spec.firmware.partition(":")
        firmware = getattr(importlib.import_module(module), func)(kind, opts, lims, lab)
        settings = replace(spec.serial, bytesize=8, parity="N", stopbits=1)
        with PtyDevice(firmware, link=tmp / "dev" / kind, boot_s=0.01) as dev:
            driver = spec.driver(Transport(dev.port, settings, name=kind), name=kind, limits=lims, options=opts,
                                 clock=lab.clock)
            driver.connect()
            try:
                rows[kind] = {"call": what, **time_calls(make_call(driver), firmware, repeats, warmup)}
            finally:
                driver.close()
        log(f"part 1: {kind} median {rows[kind]['median_us']:.0f} us")
    for label, transcript in (("echo", None), ("echo+jsonl", Transcript(tmp / "echo.jsonl"))):
        firmware = EchoFirmware()
        with PtyDevice(firmware, link=tmp / "dev" / label) as dev, \
                Transport(dev.port, SerialSettings(), name=label, transcript=transcript) as transport:
            call = partial(transport.query, b"PING\n", end=b"\n", parse=bytes, idempotent=True)
            what = "Transport.query(PING)" + (" + JSONL transcript" if transcript else "")
            rows[label] = {"call": what, **time_calls(call, firmware, repeats, warmup)}
    return rows


# --- part 2 ------------------------------------------------------------------------------------------------------
_POLL = {"grbl": re.compile(rb"\?"), "new_era": re.compile(rb"\d{1,2}DIS\r"),
         "ika_namur": re.compile(rb"(OUT_WD1@|IN_PV_)\S*\r\n")}


class TimedBackend:
    """Wraps an ``InstrumentBackend`` so that its share of ``run_experiment`` is timed."""

    rerun_safe = True

    def __init__(self, backend: Any):
        self.backend, self.last_s = backend, 0.0

    def run_experiment(self, exp_id: int, conditions: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self.backend.run_experiment(exp_id, conditions)
        finally:
            self.last_s = time.perf_counter() - t0


def traffic(entries: list[dict[str, Any]], kind_of: dict[str, str], rtt_s: dict[str, float]) -> dict[str, Any]:
    """Counts and times one experiment's commands from its transcript entries.

    Args:
        entries: the transcript entries the experiment added.
        kind_of: transport name (the first instrument on the port) → driver kind.
        rtt_s: part 1's median per call by driver kind, seconds.

    Returns:
        commands, polls, by_kind, io_est_s, io_transcript_s and slowest (seconds, command).
    """
    out: dict[str, Any] = {"commands": 0, "polls": 0, "io_est_s": 0.0, "by_kind": {}}
    spans: list[tuple[float, str]] = []  # (tx -> last rx before the next tx, command) per command with a reply
    tx: dict[str, Any] | None = None
    for e in [*entries, {"dir": "tx", "end": True}]:
        if e["dir"] == "tx":
            if tx is not None and "rx_t" in tx:
                spans.append((tx["rx_t"] - tx["t_s"], f"{tx['kind']} {bytes.fromhex(tx['hex'])[:12]!r}"))
            if "end" in e:
                break
            tx = {**e, "kind": kind_of[e["port"]]}
            payload = bytes.fromhex(e["hex"])
            out["commands"] += 1
            out["by_kind"][tx["kind"]] = out["by_kind"].get(tx["kind"], 0) + 1
            out["polls"] += bool(tx["kind"] in _POLL and _POLL[tx["kind"]].fullmatch(payload))
            out["io_est_s"] += rtt_s[tx["kind"]]
        elif e["dir"] == "rx" and tx is not None:
            tx["rx_t"] = e["t_s"]
    out["io_transcript_s"] = sum(d for d, _ in spans)
    out["slowest"] = max(spans, default=(0.0, ""))
    return out


def part2(experiments: int, rtt_s: dict[str, float], transcript_cost_s: float, tmp: Path) -> list[dict[str, Any]]:
    """Runs the hardware campaign (Sobol only, batch 1) on the simulated bench.

    Args:
        experiments: timed experiments (one warm-up experiment runs before them).
        rtt_s: part 1's median per call by driver kind, seconds.
        transcript_cost_s: what the JSONL transcript adds per command (echo+jsonl - echo), seconds.
        tmp: folder for the ledger, raw readings, pty links and transcript.

    Returns:
        one record per experiment, the warm-up first (``warmup: True``).
    """
    campaign = load_campaign(CAMPAIGN)
    n = experiments + 1  # the first is a warm-up
    budget = campaign.budget.model_copy(update={"max_experiments": n, "batch_size": 1, "initial_experiments": n})
    campaign = campaign.model_copy(update={"budget": budget})
    kind_of = {name: inst.driver for name, inst in (campaign.instruments or {}).items()}
    records = []
    with Ledger.for_campaign(campaign, tmp) as ledger, \
            open_backend(campaign, tmp, simulate=True, transcript_path=tmp / "transcript.jsonl") as backend:
        timed = TimedBackend(backend)
        runner = CampaignRunner(campaign, ledger, timed)
        transcript = next(iter(backend.drivers.values())).transport.transcript
        clock = backend.executor.clock
        for i in range(n):
            t0 = time.perf_counter()
            obs = runner.observations()
            exp = runner.propose(obs, runner.refit(obs), 1)[0]
            t1 = time.perf_counter()
            k0, v0 = len(transcript.entries), clock.now_s()
            done = runner.run_experiment(exp.id)
            wall = time.perf_counter() - t1
            t = traffic(transcript.entries[k0:], kind_of, rtt_s)
            rec = {"id": exp.id, "warmup": i == 0, "state": done.state, "error": done.error,
                   "propose_ms": (t1 - t0) * 1e3, "wall_ms": wall * 1e3, "backend_ms": timed.last_s * 1e3,
                   "ledger_ms": (wall - timed.last_s) * 1e3, "commands": t["commands"], "polls": t["polls"],
                   "by_kind": t["by_kind"], "io_est_ms": t["io_est_s"] * 1e3,
                   "overhead_est_ms": (wall - t["io_est_s"]) * 1e3, "io_transcript_ms": t["io_transcript_s"] * 1e3,
                   "overhead_ms": (wall - t["io_transcript_s"]) * 1e3,
                   "transcript_est_ms": t["commands"] * transcript_cost_s * 1e3,
                   "slowest_cmd_ms": t["slowest"][0] * 1e3, "slowest_cmd": t["slowest"][1],
                   "virtual_min": (clock.now_s() - v0) / 60.0, "conditions": exp.conditions}
            rec["wall_ms_per_virtual_min"] = rec["wall_ms"] / rec["virtual_min"] if rec["virtual_min"] else None
            records.append(rec)
            log(f"part 2: experiment {exp.id} {done.state}: {rec['wall_ms']:.1f} ms, {t['commands']} commands "
                f"({t['polls']} polls), {rec['virtual_min']:.1f} virtual min")
    return records


# --- tables ------------------------------------------------------------------------------------------------------
def table1(rows: dict[str, dict[str, Any]]) -> str:
    """Part 1 as text: one line per driver and baseline."""
    lines = ["Round trip per call over a pty (one cheap query; target < 1000 us per command)",
             f"{'driver':18} {'call':40} {'cmds/call':>9} {'median us':>10} {'p95 us':>8} {'max us':>8} {'n':>5}"]
    for kind, r in rows.items():
        lines.append(f"{kind:18} {r['call']:40} {r['cmds_per_call']:9.2f} {r['median_us']:10.0f} "
                     f"{r['p95_us']:8.0f} {r['max_us']:8.0f} {r['n']:>5}")
    return "\n".join(lines)


TABLE2 = [("propose_ms", "propose (Sobol + ledger commit), ms"), ("wall_ms", "run_experiment wall, ms"),
          ("backend_ms", "  backend (procedure..analysis), ms"), ("ledger_ms", "  ledger reads + 2 commits, ms"),
          ("commands", "commands sent"), ("polls", "  of which polls/keepalives"),
          ("io_est_ms", "serial I/O est. = sum(cmds x RTT), ms"),
          ("overhead_est_ms", "overhead est. = wall - I/O est., ms"),
          ("io_transcript_ms", "serial I/O in transcript (tx->rx), ms"),
          ("overhead_ms", "overhead = wall - transcript I/O, ms"),
          ("slowest_cmd_ms", "  slowest command (tx->rx), ms"), ("transcript_est_ms", "  JSONL transcript est., ms"),
          ("virtual_min", "virtual lab time, min"), ("wall_ms_per_virtual_min", "wall ms per virtual lab minute")]


def table2(records: list[dict[str, Any]]) -> str:
    """Part 2 as text: median, p95, min and max over the timed experiments (the warm-up left out)."""
    rs = [r for r in records if not r["warmup"]]
    states = {s: sum(r["state"] == s for r in rs) for s in ("completed", "failed")}
    lines = [f"Loop overhead per experiment, serial path ({len(rs)} Sobol experiments after 1 warm-up, batch 1, "
             f"{states['completed']} completed / {states['failed']} failed; target overhead < 50 ms)",
             f"{'per experiment':40} {'median':>9} {'p95':>9} {'min':>9} {'max':>9}"]
    for key, label in TABLE2:
        vals = [r[key] for r in rs if r[key] is not None]
        if vals:
            lines.append(f"{label:40} {statistics.median(vals):9.1f} {float(np.percentile(vals, 95)):9.1f} "
                         f"{min(vals):9.1f} {max(vals):9.1f}")
    kinds = sorted({k for r in rs for k in r["by_kind"]})
    med = {k: statistics.median(r["by_kind"].get(k, 0) for r in rs) for k in kinds}
    lines.append("median commands by driver: " + ", ".join(f"{k} {v:g}" for k, v in med.items()))
    slow = sorted({r["slowest_cmd"] for r in rs})
    lines.append("slowest command per experiment: " + ", ".join(slow))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Definitions of every figure: see the module docstring.")
    ap.add_argument("--repeats", type=int, default=500, help="timed calls per driver in part 1 (default 500)")
    ap.add_argument("--experiments", type=int, default=20, help="timed experiments in part 2 (default 20)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 50 repeats, 3 experiments")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "serial_path.json", help="JSON file")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats, args.experiments = 50, 3
    if args.repeats < 1 or args.experiments < 1:
        ap.error("need --repeats >= 1 and --experiments >= 1")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="serial_path-") as tmp_name:
        tmp = Path(tmp_name)
        rows = part1(args.repeats, min(50, max(5, args.repeats // 10)), tmp / "part1")
        print(table1(rows), flush=True)
        rtt_s = {k: r["median_us"] / 1e6 for k, r in rows.items()}
        transcript_cost_s = max(0.0, rtt_s["echo+jsonl"] - rtt_s["echo"])
        records = part2(args.experiments, rtt_s, transcript_cost_s, tmp / "part2")
        print("\n" + table2(records), flush=True)
    report = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "round_trip": rows, "experiments": records, "wall_s": time.perf_counter() - t0}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str))
    print(f"\ntotal wall time {report['wall_s']:.0f} s; raw numbers in {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
