"""This project's Bayesian-optimization proposer against Ax and BayBE: same problems, budgets, seeds and noise.

Tools (each with its defaults; adapters in ``benchmarks/peers/peer_tools.py``):

- ``ours``: the orchestrator's ``CampaignRunner`` on an in-memory ``Ledger`` (campaign defaults: Sobol design of
  5 points, 4 with three parameters or fewer, then GP + qLogNEI; failed experiments train a success model).
- ``ax``: Ax 1.3 ``Client`` with the default generation strategy (center point + Sobol, 5 trials in all, then
  the modular BoTorch GP); failed experiments are ``mark_trial_failed``.
- ``baybe``: BayBE 0.15 ``Campaign`` with the default ``TwoPhaseMetaRecommender`` (1 random point, then
  ``BotorchRecommender``); failed experiments are not added (a numerical target accepts no missing value).

Problems (``benchmarks/peers/peer_problems.py``; "truth" is the noise-free response):

- ``hartmann6``: minimize Hartmann-6 on [0, 1]^6 (botorch ``Hartmann``), noise sd 0.05; optimum -3.3224,
  worst 0 (H < 0 everywhere and tends to 0 away from its bumps).
- ``branin``: minimize Branin on [-5, 10] x [0, 15], noise sd 0.1; optimum 0.3979, worst = its maximum
  (~308), so 95 % progress is already "Branin <= ~15.8": exp@95 is coarse here, read the best value.
- ``perovskite``: maximize ``pl_intensity`` of ``simulators.perovskite_film`` (5 continuous + 1 categorical,
  5 % log-normal noise, films fail in parts of the space); optimum ``best_pl_intensity()``, worst 0.
- ``suzuki``: maximize yield of the GP emulator of the recorded Suzuki dataset (4 continuous, fitted once
  with seed 0, emulator noise); optimum ``simulators.datasets.best_value``, worst = worst recorded row.
- ``photo_pce10``: minimize degradation of the photo_pce10 emulator, 4 fractions on a simplex (sum = 1).
  Ax: a core ``ParameterConstraint(equality="mat_1 + ... + mat_4 == 1")`` set through ``Client.set_experiment``
  (``configure_experiment`` parses inequalities only). BayBE: ``SubspaceContinuous`` with a
  ``ContinuousLinearConstraint(operator="=")``. Ours: a ``compositions:`` entry when the campaign schema and
  proposer support it (checked at run time); until then the four fractions are free in [0, 1] and the
  driver scales each proposal onto the simplex (x / sum x) before measuring; such rows say "pending simplex
  support". A proposal off the simplex by more than 1e-4 counts as a failed experiment.
- ``perovskites``: the 192 recorded HSE06 band gaps (3 categoricals, exact lookup, no noise); bring the gap to
  1.4 eV, as ``campaigns/perovskite_bandgap_lookup.yaml`` does. Score = ``|gap - 1.4|`` (minimized); optimum
  and worst = smallest and largest of the 192. Ours: ``goal: target`` (models the gap); BayBE:
  ``NumericalTarget.match_absolute`` (models the gap); Ax: its objective must be linear in metrics, so it is
  told and models ``|gap - 1.4|`` directly.

Settings: ``sequential`` (q = 1), ``batch`` (q = ``--q``, default 4, same total budget) and ``async`` (4
simulated workers of different speeds, one proposal per free worker with the running ones pending); the exact
schedules are in ``benchmarks/peers/peer_driver.py``. Experiment k of seed s draws its noise from
``default_rng([s, k])`` for every tool.

Figures (per setting, problem and tool, over seeds):

- ``best``: the best SCORE (noise-free truth of the conditions tried, never the noisy measurement) after the
  budget: median [25th, 75th percentile]. Failed experiments score nothing but use up budget.
- ``progress``: ``(best - worst) / (optimum - worst)``, 0 at the worst reference and 1 at the optimum for both
  directions (the formula of ``benchmarks/bo_vs_sobol.py``); the median is shown.
- ``exp@95``: experiments (failed ones included, in the order results came in) until progress first reached
  ``--threshold`` (0.95); median over seeds, a run that never reaches it counts as infinitely many, so
  ``>N`` means the median run did not get there; ``reached`` = seeds that did.
- ``fail``: median number of experiments per run that failed (film did not form, off the simplex).
- ``s/prop``: median wall seconds of one model-based "give me the next point(s)" call (ours:
  ``observations`` + ``refit`` + ``propose`` from the ledger; Ax: ``get_next_trials``, including the GP fit
  it does there; BayBE: ``recommend``, including its fit), over all such calls of all seeds. Calls of the
  initial design (Sobol / center / random) are left out; their count differs by tool (``#prop`` gives the
  model-based ones). In ``batch`` one call proposes q points.
- ``s/obs``: median wall seconds to hand over one result (ours: one ledger commit; Ax: ``complete_trial`` /
  ``mark_trial_failed``; BayBE: ``add_measurements`` of one row). ``s/run``: median wall seconds of a run.

All timings are on one torch thread per process (``torch.set_num_threads(1)``). Raw per-experiment numbers
go to ``--out`` (default ``benchmarks/out/peers.json``). Run ``python benchmarks/peers.py --help``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks" / "peers")]

from peer_driver import limit_threads, run_job, score_run  # noqa: E402
from peer_latency import latency_job, latency_table  # noqa: E402
from peer_problems import PROBLEMS, get_problem  # noqa: E402
from peer_tools import TOOLS, available  # noqa: E402

SETTINGS = ("sequential", "batch", "async")
QUICK_PROBLEMS = ("branin", "perovskites")
COST = {"ax": 3, "baybe": 2, "ours": 1}  # slowest first, so parallel workers finish together


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q25, q50, q75 = np.percentile(np.asarray(values, dtype=float), [25, 50, 75])
    return float(q25), float(q50), float(q75)


def _median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.median(vals)) if vals else None


def summarize(runs: list[dict[str, Any]], info: dict[str, Any]) -> dict[str, Any]:
    """Per-cell figures (see the module docstring) from the scored runs of one setting, problem and tool."""
    scores = [r["score"] for r in runs]
    bests = [s["best"] if s["best"] is not None else info["worst"] for s in scores]
    reaches = [s["exp_to_threshold"] if s["exp_to_threshold"] is not None else float("inf") for s in scores]
    model_asks = [a["s"] for r in runs for a in r["asks"] if a["model"]]
    notes = sorted({r["note"] for r in runs if r.get("note")})
    if any(r.get("short_asks") for r in runs):
        notes.append(f"{sum(r['short_asks'] for r in runs)} asks returned fewer points than asked")
    if any(r.get("clipped") for r in runs):
        notes.append(f"{sum(r['clipped'] for r in runs)} proposals clipped into bounds")
    return {"best_q": quartiles(bests), "progress_median": float(np.median([s["progress"] for s in scores])),
            "reach_median": float(np.median(reaches)), "n_reached": int(np.isfinite(reaches).sum()),
            "n": len(runs), "failed_median": float(np.median([s["failed"] for s in scores])),
            "ask_s_model": _median(model_asks), "n_model_asks": len(model_asks),
            "tell_s": _median([t for r in runs for t in r["tell_s"]]),
            "wall_s_median": float(np.median([r["wall_s"] for r in runs])), "notes": notes}


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(setting: str, results: dict[str, Any], budget_of: dict[str, int], q: int, threshold: float,
          ours_initial: int | None = None) -> str:
    """One table per setting: rows problem x tool."""
    head = {"sequential": "sequential (q = 1)", "batch": f"batch (q = {q})",
            "async": "asynchronous (4 workers, one proposal per free worker)"}[setting]
    lines = [f"== {head} ==  best = NOISE-FREE score after the budget, median [IQR]; "
             f"exp@{threshold * 100:.0f} = median experiments until progress >= {threshold}",
             f"{'problem':12} {'goal':4} {'budget':>6} {'optimum':>9} {'worst':>8} {'tool':6} "
             f"{'best median [IQR]':>31} {'progr':>6} {'exp@' + format(threshold * 100, '.0f'):>6} {'reached':>7} "
             f"{'fail':>5} {'s/prop':>7} {'#prop':>6} {'s/obs':>7} {'s/run':>6}"]
    notes = []
    for problem, entry in results.items():
        info, budget = entry["info"], budget_of[problem]
        for tool in TOOLS:
            s = entry["summary"].get(setting, {}).get(tool)
            if s is None:
                continue
            q25, q50, q75 = s["best_q"]
            reach = f">{budget}" if not np.isfinite(s["reach_median"]) else f"{s['reach_median']:.0f}"
            best = f"{q50:.4g} [{q25:.4g}, {q75:.4g}]"
            lines.append(f"{problem:12} {info['score_goal'][:3]:4} {budget:>6} {info['optimum']:9.4g} "
                         f"{info['worst']:8.4g} {tool:6} {best:>31} {s['progress_median']:6.3f} {reach:>6} "
                         f"{s['n_reached']:>3}/{s['n']:<3} {s['failed_median']:5.1f} {_fmt(s['ask_s_model'], '7.2f')} "
                         f"{s['n_model_asks']:>6} {_fmt(s['tell_s'], '7.4f')} {s['wall_s_median']:6.1f}")
            notes += [f"  {problem}/{tool}: {n}" for n in s["notes"]]
    if ours_initial is not None:
        notes.append(f"  ours: initial design of {ours_initial} experiments (--ours-initial), not the campaign default")
    return "\n".join(lines + across_problems(setting, results) + (["notes:"] + notes if notes else []))


def across_problems(setting: str, results: dict[str, Any]) -> list[str]:
    """Per tool, the median over problems of the per-problem median exp@ and s/prop (problems every tool ran).

    A problem whose median run never reached the threshold counts as infinitely many experiments, so the
    median over problems is "never" once half the problems are.
    """
    cells = {p: e["summary"].get(setting, {}) for p, e in results.items()}
    tools = [t for t in TOOLS if any(t in c for c in cells.values())]
    shared = [p for p, c in cells.items() if all(t in c for t in tools)]
    if len(tools) < 2 or not shared:
        return []
    out = [f"across {len(shared)} problems (median of the per-problem medians):"]
    for t in tools:
        reach = float(np.median([cells[p][t]["reach_median"] for p in shared]))
        asks = [cells[p][t]["ask_s_model"] for p in shared if cells[p][t]["ask_s_model"] is not None]
        out.append(f"  {t:6} exp@ {'never' if not np.isfinite(reach) else f'{reach:.1f}':>6}   "
                   f"s/prop {_fmt(_median(asks), '.2f'):>5}   problems where it reaches the threshold first or tied: "
                   f"{sum(cells[p][t]['reach_median'] <= min(cells[p][u]['reach_median'] for u in tools) for p in shared)}")
    return out


class _Inline:
    """A one-process stand-in for ``Pool`` (``--workers 1``, the default: the machine is shared)."""

    def __enter__(self):
        limit_threads()
        return self

    def __exit__(self, *exc):
        return False

    def imap_unordered(self, fn, tasks):
        return map(fn, tasks)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Definitions of every figure: see the module docstring.")
    ap.add_argument("--problems", nargs="+", choices=PROBLEMS, default=list(PROBLEMS))
    ap.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    ap.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    ap.add_argument("--seeds", type=int, default=10, help="seeds per cell (default 10)")
    ap.add_argument("--first-seed", type=int, default=0, help="seeds run are FIRST .. FIRST + SEEDS - 1 (default 0)")
    ap.add_argument("--budget", type=int, default=None, help="experiments per run (default: per problem, 30)")
    ap.add_argument("--q", type=int, default=4, help="batch size of the batch setting (default 4)")
    ap.add_argument("--async-workers", type=int, default=4, help="simulated workers of the async setting")
    ap.add_argument("--ours-initial", type=int, default=None,
                    help="design size of ours (default: the campaign default, 5 points, 4 with three parameters or fewer)")
    ap.add_argument("--threshold", type=float, default=0.95, help="progress threshold of exp@ (default 0.95)")
    ap.add_argument("--workers", type=int, default=1, help="processes over jobs, 1 torch thread each (default 1)")
    ap.add_argument("--quick", action="store_true", help=f"smoke run: 2 seeds, budget 12, {' '.join(QUICK_PROBLEMS)}")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "peers.json", help="JSON file")
    ap.add_argument("--include", type=Path, nargs="+", default=[], metavar="JSON",
                    help="earlier --out files: their runs of tools NOT in --tools join the tables (same problems, "
                         "settings, seeds, budget, q and async workers only), so a change to ours is compared "
                         "with peers that were run once")
    ap.add_argument("--latency", type=int, nargs="+", default=None, metavar="N",
                    help="instead of the comparison: time one proposal after N preloaded results per tool "
                         "(default problems hartmann6 perovskite; see benchmarks/peers/peer_latency.py)")
    ap.add_argument("--latency-reps", type=int, default=3, help="repeats per latency point (default 3)")
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing: the tables of the --include files' runs (at this --threshold)")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.budget = 2, 12
        if args.problems == list(PROBLEMS):
            args.problems = list(QUICK_PROBLEMS)
    if args.seeds < 1 or args.first_seed < 0 or (args.budget is not None and args.budget < 2) or args.q < 1:
        ap.error("need --seeds >= 1, --first-seed >= 0, --budget >= 2 and --q >= 1")
    if args.report_only and not args.include:
        ap.error("--report-only needs --include")
    tools = []
    for tool in [] if args.report_only else args.tools:
        why = available(tool)
        if why:
            print(why, flush=True)
        else:
            tools.append(tool)
    limit_threads()
    if args.latency:
        problems = args.problems if args.problems != list(PROBLEMS) else ["hartmann6", "perovskite"]
        return run_latency(tools, problems, args)
    t0 = time.perf_counter()
    results: dict[str, Any] = {}
    budget_of: dict[str, int] = {}
    for p in args.problems:
        info = get_problem(p).info()
        budget_of[p] = args.budget or info["budget"]
        results[p] = {"info": info, "runs": []}
        log(f"{p}: {info['score_goal']} score, optimum {info['optimum']:.4g}, worst {info['worst']:.4g} "
            f"({info['worst_is']}); noise {info['noise']}")
    included = _included_runs(args.include, tools, args, budget_of)
    for run in included:
        results[run["problem"]]["runs"].append(run)
    if included:
        log(f"{len(included)} runs of {sorted({r['tool'] for r in included})} taken from {[str(f) for f in args.include]}")
    jobs = sorted(((t, p, s, seed, budget_of[p], args.q, args.async_workers, args.ours_initial)
                   for p in args.problems for s in args.settings for t in tools
                   for seed in _seeds(args)),
                  key=lambda j: (-COST[j[0]], j[1], j[2], j[3]))
    ctx = mp.get_context("spawn")
    with ctx.Pool(args.workers, initializer=limit_threads) if args.workers > 1 else _Inline() as pool:
        for k, run in enumerate(pool.imap_unordered(run_job, jobs), 1):
            info = results[run["problem"]]["info"]
            run["score"] = score_run(run, info, args.threshold)
            results[run["problem"]]["runs"].append(run)
            b = run["score"]["best"]
            log(f"[{k}/{len(jobs)}] {run['problem']} {run['setting']} {run['tool']} seed {run['seed']}: best "
                f"{'none' if b is None else f'{b:.4g}'}, exp@ {run['score']['exp_to_threshold']}, "
                f"{run['wall_s']:.1f} s (elapsed {time.perf_counter() - t0:.0f} s)")
    summarized = tools + sorted({r["tool"] for r in included} - set(tools))
    for entry in results.values():
        entry["runs"].sort(key=lambda r: (r["setting"], r["tool"], r["seed"]))
        entry["summary"] = {s: {t: summarize(rs, entry["info"]) for t in summarized
                                if (rs := [r for r in entry["runs"] if r["setting"] == s and r["tool"] == t])}
                            for s in args.settings}
    for s in args.settings:
        print("\n" + table(s, results, budget_of, args.q, args.threshold, args.ours_initial), flush=True)
    report = {"config": vars(args),
              "tools_run": tools, "tools_included": sorted({r["tool"] for r in included}), "versions": _versions(tools), "results": results,
              "wall_s": time.perf_counter() - t0}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=_json_default))
    print(f"\ntotal wall time {report['wall_s']:.0f} s; raw numbers in {args.out}", flush=True)
    return 0


def run_latency(tools: list[str], problems: list[str], args: argparse.Namespace) -> int:
    """The ``--latency`` mode: one timed ask per (tool, problem, n, repeat); table to stdout, rows to ``--out``."""
    t0 = time.perf_counter()
    jobs = sorted(((t, p, n, r) for t in tools for p in problems for n in args.latency
                   for r in range(args.latency_reps)), key=lambda j: (-j[2], -COST[j[0]], j[1], j[3]))
    rows = []
    ctx = mp.get_context("spawn")
    with ctx.Pool(args.workers, initializer=limit_threads) if args.workers > 1 else _Inline() as pool:
        for k, row in enumerate(pool.imap_unordered(latency_job, jobs), 1):
            rows.append(row)
            log(f"[{k}/{len(jobs)}] latency {row['problem']} {row['tool']} n={row['n']} rep {row['rep']}: "
                f"{row['ask_s']:.2f} s (model {row['model']}, elapsed {time.perf_counter() - t0:.0f} s)")
    print("\n" + latency_table(rows, tools), flush=True)
    out = args.out if args.out.name != "peers.json" else args.out.with_name("peers_latency.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": vars(args),
                               "versions": _versions(tools), "rows": rows,
                               "wall_s": time.perf_counter() - t0}, indent=1, default=_json_default))
    print(f"\ntotal wall time {time.perf_counter() - t0:.0f} s; raw numbers in {out}", flush=True)
    return 0


def _seeds(args: argparse.Namespace) -> range:
    """The seeds this invocation covers: ``--first-seed .. --first-seed + --seeds - 1``."""
    return range(args.first_seed, args.first_seed + args.seeds)


def _included_runs(files: list[Path], tools: list[str], args: argparse.Namespace, budget_of: dict[str, int]
                   ) -> list[dict[str, Any]]:
    """Runs of earlier ``--out`` files for the tools not run now, matching this invocation's problems, settings,
    seeds (``_seeds``), budgets, batch size and async workers; rescored at this ``--threshold``.

    A seed found in several files is taken from the first that has it. The runs keep their own timings.
    """
    taken: dict[tuple, dict[str, Any]] = {}
    for f in files:
        report = json.loads(f.read_text())
        cfg = report["config"]
        if cfg.get("async_workers") != args.async_workers:
            continue
        for problem, entry in report["results"].items():
            if problem not in budget_of:
                continue
            for run in entry["runs"]:
                key = (run["tool"], problem, run["setting"], run["seed"])
                if (run["tool"] in tools or run["setting"] not in args.settings or run["seed"] not in _seeds(args)
                        or run["budget"] != budget_of[problem] or key in taken
                        or (run["setting"] == "batch" and run["q"] != args.q)):
                    continue
                taken[key] = run | {"score": score_run(run, get_problem(problem).info(), args.threshold),
                                    "included_from": str(f)}
    return list(taken.values())


def _json_default(value: Any) -> Any:
    """Paths as text, numpy scalars as floats."""
    return str(value) if isinstance(value, Path) else float(value)


def _versions(tools: list[str]) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ["torch", "botorch", "gpytorch"] + [{"ax": "ax-platform", "baybe": "baybe"}[t] for t in tools
                                                   if t != "ours"]:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "?"
    return out


if __name__ == "__main__":
    sys.exit(main())
