"""Sample efficiency and proposal latency of this project's Bayesian optimization against a Sobol design.

Sample efficiency: the real closed loop (``CampaignRunner`` + ``run_loop`` on an in-memory ledger, batch size 1,
no Prefect) runs each problem for ``--budget`` experiments and ``--seeds`` seeds, twice per seed:

- ``bo``: the campaign defaults (Sobol design of 5 points, 4 with three parameters or fewer, then GP + qLogNEI);
- ``sobol``: the same campaign with ``initial_experiments = max_experiments``, so the proposer only draws
  its scrambled Sobol design. Both methods of one seed share the campaign seed, hence the same first points
  and the same measurement-noise draws per experiment id.

Problems: ``perovskite`` (built-in thin-film model, all 6 PARAMETERS incl. the categorical antisolvent, maximize
pl_intensity, measurement noise on) and GP emulators (fitted once, seed 0, so every seed sees the same
landscape) of the recorded datasets suzuki, crossed_barrel, agnp (maximize) and snar (minimize impurity).

Scoring: every experiment is scored by the NOISE-FREE truth ``sim.truth(conditions)`` so lucky noise cannot
inflate the best; failed experiments score nothing but still use up budget. "Optimum" is the achievable
noise-free optimum: ``best_pl_intensity()`` for perovskite, ``best_value(sim)`` (in the dataset's goal
direction) for the datasets. "Worst" is a reference for the bad end of the scale: 0 for perovskite (PL is
never negative, failed films give none) and the worst recorded row (in the goal direction) for a dataset.

    progress(v) = (v - worst) / (optimum - worst)        # same formula for minimize: both differences flip sign

so progress is 0 at the worst reference and 1 at the optimum whatever the direction or sign of the values.
"Reached 95 %" means progress >= 0.95, i.e. within 5 % of the worst-to-optimum range of the optimum (for
perovskite: PL >= 0.95 * optimum). exp@95 is the number of experiments (failed ones included) after which the
best-so-far first reached it; a run that never does counts as "> budget".

Timing: one ``propose`` call (fresh GP fit + acquisition optimization, default OptimizerSettings) on n
observations, split into fit and acquisition seconds from ``Proposal.info``: Hartmann-6 (continuous, small
noise) at 20..500 points, and the mixed perovskite space (5 continuous + 1 categorical, failed films included
as failures) at 20..100 points with q = 1, 3 and 4 (4: the batch size of `peers.py --settings batch`).

Run ``python benchmarks/bo_vs_sobol.py --help``; raw per-seed numbers go to ``benchmarks/out/bo_vs_sobol.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.campaign import Campaign, Objective, OptimizerSettings  # noqa: E402
from orchestrator.errors import ExperimentFailed  # noqa: E402
from orchestrator.ledger import Ledger  # noqa: E402
from orchestrator.loop import CampaignRunner, run_loop  # noqa: E402
from orchestrator.objectives import ScalarObjective  # noqa: E402
from orchestrator.proposer import Observations, propose, sobol_points  # noqa: E402
from orchestrator.space import DTYPE, SearchSpace  # noqa: E402

PROBLEMS = ("perovskite", "suzuki", "crossed_barrel", "agnp", "snar")
METHODS = ("sobol", "bo")
THRESHOLD = 0.95
HARTMANN_NS, MIXED_NS = (20, 50, 100, 200, 500), (20, 50, 100)
MIXED_QS = (1, 3, 4)
_SIMS: dict[str, Any] = {}  # per process: a dataset emulator is fitted once, not once per seed


def limit_threads() -> None:
    """One BLAS/torch thread: measured on this 2-core machine, a perovskite proposal took ~2 s on one thread
    and ~20 s on two (threads spin-wait against each other and against the second worker)."""
    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # pragma: no cover
        pass


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- problems -------------------------------------------------------------------------------------------------
def simulator(problem: str):
    if problem not in _SIMS:
        if problem == "perovskite":
            from simulators.perovskite_film import PerovskiteFilm

            _SIMS[problem] = PerovskiteFilm(noise_scale=1.0)
        else:
            from simulators.datasets import dataset_simulator

            _SIMS[problem] = dataset_simulator(problem, mode="emulator", seed=0)
    return _SIMS[problem]


def problem_info(problem: str) -> dict[str, Any]:
    """Parameters, outcome, goal, optimum and worst reference of a problem (see the module docstring)."""
    sim = simulator(problem)
    if problem == "perovskite":
        from simulators.perovskite_film import PARAMETERS, best_pl_intensity

        return {"parameters": [dict(p) for p in PARAMETERS], "outcome": "pl_intensity", "goal": "maximize",
                "optimum": best_pl_intensity()[0], "worst": 0.0, "worst_is": "0 (PL >= 0)"}
    from simulators.datasets import best_value

    d = sim.dataset
    worst = float(d.y.min() if d.goal == "maximize" else d.y.max())
    return {"parameters": [dict(p) for p in d.parameters], "outcome": d.outcome, "goal": d.goal,
            "optimum": best_value(sim), "worst": worst, "worst_is": "worst recorded row"}


def campaign(problem: str, info: dict[str, Any], method: str, seed: int, budget: int) -> Campaign:
    return Campaign.model_validate({
        "name": f"{problem}-{method}-{seed}",
        "parameters": info["parameters"],
        "outcomes": [{"name": info["outcome"]}],
        "objectives": [{"outcome": info["outcome"], "goal": info["goal"]}],
        "budget": {"max_experiments": budget, "batch_size": 1,
                   "initial_experiments": budget if method == "sobol" else None},
        "seed": seed,
        "simulator": {"model": "perovskite_film"} if problem == "perovskite" else {"dataset": problem},
    })


def run_one(task: tuple[str, dict[str, Any], str, int, int]) -> dict[str, Any]:
    """One campaign through the real loop; returns the noise-free truth of every experiment (None = failed)."""
    problem, info, method, seed, budget = task
    sim = simulator(problem)
    c = campaign(problem, info, method, seed, budget)
    ledger = Ledger(":memory:")
    ledger.bind(c)
    t0 = time.perf_counter()
    run_loop(CampaignRunner(c, ledger, sim))
    wall = time.perf_counter() - t0
    exps = sorted(ledger.experiments(), key=lambda e: e.id)
    truths = [sim.truth(e.conditions)[info["outcome"]] if e.state == "completed" else None for e in exps]
    infos = [e.proposal_info for e in exps if e.generator.startswith("gp")]
    ledger.close()
    return {"problem": problem, "method": method, "seed": seed, "wall_s": wall, "truth": truths,
            "measured": [e.outcomes[info["outcome"]] if e.outcomes else None for e in exps],
            "generators": [e.generator for e in exps],
            "fit_s": [i.get("fit_s") for i in infos], "acq_s": [i.get("acq_s") for i in infos]}


# --- scoring -------------------------------------------------------------------------------------------------------
def score(run: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    sign = 1.0 if info["goal"] == "maximize" else -1.0
    best, trace = None, []
    for v in run["truth"]:
        if v is not None and (best is None or sign * v > sign * best):
            best = v
        trace.append(best)
    span = info["optimum"] - info["worst"]
    progress = [0.0 if b is None else (b - info["worst"]) / span for b in trace]
    reach = next((i + 1 for i, p in enumerate(progress) if p >= THRESHOLD), None)
    return {"best": best, "progress": progress[-1], "exp_to_95": reach, "best_trace": trace}


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q25, q50, q75 = np.percentile(np.asarray(values, dtype=float), [25, 50, 75])
    return float(q25), float(q50), float(q75)


def summarize(runs: list[dict[str, Any]], info: dict[str, Any], budget: int) -> dict[str, Any]:
    scores = [r["score"] for r in runs]
    bests = [s["best"] if s["best"] is not None else info["worst"] for s in scores]
    reaches = [s["exp_to_95"] if s["exp_to_95"] is not None else float("inf") for s in scores]
    med_reach = float(np.median(reaches)) if reaches else float("inf")  # inf (never) sorts last
    return {"best_q": quartiles(bests), "progress_median": statistics.median(s["progress"] for s in scores),
            "reach_median": med_reach, "n_reached": sum(np.isfinite(reaches)), "n": len(runs),
            "wall_s_median": statistics.median(r["wall_s"] for r in runs)}


def paired_wins(bo: list[dict[str, Any]], sobol: list[dict[str, Any]], goal: str) -> tuple[int, int, int]:
    sign = 1.0 if goal == "maximize" else -1.0
    by_seed = {r["seed"]: r["score"]["best"] for r in sobol}
    wins = ties = losses = 0
    for r in bo:
        a, b = r["score"]["best"], by_seed.get(r["seed"])
        if a is None or b is None:
            continue
        d = sign * (a - b)
        wins, ties, losses = wins + (d > 1e-9), ties + (abs(d) <= 1e-9), losses + (d < -1e-9)
    return wins, ties, losses


def efficiency_table(results: dict[str, Any], budget: int) -> str:
    lines = [f"Sample efficiency: best NOISE-FREE value after {budget} experiments (median [IQR 25-75%]), "
             "seeds per cell as shown",
             "exp@95 = median experiments until progress >= 0.95, progress = (best - worst) / (optimum - worst); "
             f"'>{budget}' = median run never got there; reached = seeds that got there",
             f"{'problem':15} {'goal':8} {'optimum':>9} {'worst':>8} {'method':6} {'best median [IQR]':>30} "
             f"{'progress':>8} {'exp@95':>7} {'reached':>7} {'s/run':>6}"]
    for problem, entry in results.items():
        info = entry["info"]
        for method in METHODS:
            s = entry["summary"].get(method)
            if s is None:
                continue
            q25, q50, q75 = s["best_q"]
            reach = f">{budget}" if not np.isfinite(s["reach_median"]) else f"{s['reach_median']:.0f}"
            lines.append(f"{problem:15} {info['goal'][:3]:8} {info['optimum']:9.4g} {info['worst']:8.4g} {method:6} "
                         f"{q50:>11.4g} [{q25:.4g}, {q75:.4g}]".ljust(82)
                         + f" {s['progress_median']:8.3f} {reach:>7} {s['n_reached']:>3}/{s['n']:<3} "
                         f"{s['wall_s_median']:6.1f}")
        if "wins" in entry:
            w, t, lo = entry["wins"]
            lines.append(f"{'':15} paired by seed: BO better in {w}, tie {t}, Sobol better in {lo}")
    return "\n".join(lines)


def run_efficiency(problems: list[str], seeds: int, budget: int, workers: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for p in problems:
        results[p] = {"info": problem_info(p), "runs": {m: [] for m in METHODS}}
        log(f"{p}: optimum {results[p]['info']['optimum']:.4g} ({results[p]['info']['goal']}), "
            f"worst {results[p]['info']['worst']:.4g}")
    # Longest tasks first (BO on the mixed perovskite space) so the two workers finish together.
    cost = {"perovskite": 3, "crossed_barrel": 2}
    tasks = sorted(((p, results[p]["info"], m, s, budget) for p in problems for m in METHODS for s in range(seeds)),
                   key=lambda t: (t[2] != "bo", -cost.get(t[0], 1), t[0], t[3]))
    t0 = time.perf_counter()
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=limit_threads) if workers > 1 else _Inline() as pool:
        for k, run in enumerate(pool.imap_unordered(run_one, tasks), 1):
            info = results[run["problem"]]["info"]
            run["score"] = score(run, info)
            results[run["problem"]]["runs"][run["method"]].append(run)
            b = run["score"]["best"]
            log(f"[{k}/{len(tasks)}] {run['problem']} {run['method']} seed {run['seed']}: best "
                f"{'none' if b is None else f'{b:.4g}'}, exp@95 {run['score']['exp_to_95']}, "
                f"{run['wall_s']:.1f} s (elapsed {time.perf_counter() - t0:.0f} s)")
    for entry in results.values():
        for m in METHODS:
            entry["runs"][m].sort(key=lambda r: r["seed"])
        entry["summary"] = {m: summarize(entry["runs"][m], entry["info"], budget) for m in METHODS}
        entry["wins"] = paired_wins(entry["runs"]["bo"], entry["runs"]["sobol"], entry["info"]["goal"])
    return results


class _Inline:
    """A one-process stand-in for ``Pool`` (``--workers 1``)."""

    def __enter__(self):
        limit_threads()
        return self

    def __exit__(self, *exc):
        return False

    def imap_unordered(self, fn, tasks):
        return map(fn, tasks)


# --- timing --------------------------------------------------------------------------------------------------------
def _maximize(outcome: str) -> ScalarObjective:
    return ScalarObjective((Objective(outcome=outcome, goal="maximize"),), (0,), (1.0,))


def hartmann_obs(n: int, rep: int) -> tuple[SearchSpace, Observations]:
    from botorch.test_functions import Hartmann

    from orchestrator.campaign import ContinuousParameter

    space = SearchSpace(tuple(ContinuousParameter(name=f"x{i}", low=0.0, high=1.0) for i in range(6)))
    X = sobol_points(space, seed=1000 + rep, start=0, count=n)
    with torch.random.fork_rng():
        torch.manual_seed(rep)
        Y = Hartmann(dim=6, noise_std=0.05, negate=True)(X).unsqueeze(-1).to(DTYPE)
    empty = torch.empty(0, 6, dtype=DTYPE)
    return space, Observations(X, Y, empty, empty)


def perovskite_obs(n: int, rep: int) -> tuple[SearchSpace, Observations]:
    from simulators.perovskite_film import PARAMETERS, PerovskiteFilm

    space = SearchSpace(tuple(campaign("perovskite", {"parameters": list(PARAMETERS), "outcome": "pl_intensity",
                                                      "goal": "maximize"}, "bo", 0, 40).parameters))
    sim, rng = PerovskiteFilm(), np.random.default_rng(rep)
    X = sobol_points(space, seed=1000 + rep, start=0, count=n)
    ok, failed, y = [], [], []
    for x, cond in zip(X, space.decode(X)):
        try:
            y.append(sim(cond, rng)["pl_intensity"])
            ok.append(x)
        except ExperimentFailed:
            failed.append(x)
    stack = lambda rows: torch.stack(rows) if rows else torch.empty(0, space.dim, dtype=DTYPE)  # noqa: E731
    Y = torch.tensor(y, dtype=DTYPE).unsqueeze(-1)
    return space, Observations(stack(ok), Y, stack(failed), torch.empty(0, space.dim, dtype=DTYPE))


def time_case(label: str, make, ns, q: int, reps: int) -> list[dict[str, Any]]:
    rows = []
    for n in ns:
        for rep in range(reps):
            space, obs = make(n, rep)
            t0 = time.perf_counter()
            p = propose(space, obs, _maximize("y"), q=q, seed=rep, n_initial=2 * space.dim, settings=OptimizerSettings())
            total = time.perf_counter() - t0
            rows.append({"case": label, "n": n, "q": q, "rep": rep, "total_s": total, "fit_s": p.info["fit_s"],
                         "acq_s": p.info["acq_s"], "n_train": p.info["n_train"], "n_failed": int(obs.X_failed.shape[0])})
            log(f"timing {label} n={n} q={q} rep {rep}: {total:.2f} s (fit {p.info['fit_s']:.2f}, "
                f"acq {p.info['acq_s']:.2f})")
    return rows


def run_timing(reps: int, quick: bool) -> list[dict[str, Any]]:
    limit_threads()
    h_ns, m_ns = (HARTMANN_NS[:2], MIXED_NS[:1]) if quick else (HARTMANN_NS, MIXED_NS)
    rows = time_case("hartmann6", hartmann_obs, h_ns, 1, reps)
    for q in MIXED_QS:
        rows += time_case("perovskite_mixed", perovskite_obs, m_ns, q, reps)
    return rows


def timing_table(rows: list[dict[str, Any]]) -> str:
    lines = ["Proposal latency (one propose() with a fresh fit; medians over repeats; 1 torch thread)",
             f"{'space':18} {'q':>2} {'n obs':>6} {'(ok/fail)':>10} {'total s':>8} {'fit s':>7} {'acq s':>7} {'reps':>5}"]
    keys = sorted({(r["case"], r["q"], r["n"]) for r in rows}, key=lambda k: (k[0] != "hartmann6", k[1], k[2]))
    for case, q, n in keys:
        sel = [r for r in rows if (r["case"], r["q"], r["n"]) == (case, q, n)]
        med = lambda k: statistics.median(r[k] for r in sel)  # noqa: E731
        okfail = f"{med('n_train'):.0f}/{med('n_failed'):.0f}"
        lines.append(f"{case:18} {q:>2} {n:>6} {okfail:>10} {med('total_s'):8.2f} {med('fit_s'):7.2f} "
                     f"{med('acq_s'):7.2f} {len(sel):>5}")
    return "\n".join(lines)


# --- entry point ---------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Definitions: see the module docstring (progress, exp@95, optimum, worst).")
    ap.add_argument("--problems", nargs="+", choices=PROBLEMS, default=list(PROBLEMS), help="subset of problems")
    ap.add_argument("--seeds", type=int, default=10, help="seeds per problem and method (default 10)")
    ap.add_argument("--budget", type=int, default=40, help="experiments per campaign (default 40)")
    ap.add_argument("--workers", type=int, default=2, help="processes across seeds, 1 torch thread each (default 2)")
    ap.add_argument("--timing-reps", type=int, default=3, help="repeats per timing point (default 3)")
    ap.add_argument("--skip-timing", action="store_true", help="only the sample-efficiency part")
    ap.add_argument("--timing-only", action="store_true", help="only the latency part")
    ap.add_argument("--quick", action="store_true", help="smoke test: 2 seeds, budget 16, fewer timing points")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "bo_vs_sobol.json", help="JSON file")
    args = ap.parse_args(argv)
    if args.skip_timing and args.timing_only:
        ap.error("--skip-timing and --timing-only exclude each other")
    if args.quick:
        args.seeds, args.budget, args.timing_reps = 2, 16, 1
    if args.seeds < 1 or args.budget < 2:
        ap.error("need --seeds >= 1 and --budget >= 2")
    limit_threads()
    t0 = time.perf_counter()
    report: dict[str, Any] = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                              "threshold": THRESHOLD}
    if not args.timing_only:
        results = run_efficiency(args.problems, args.seeds, args.budget, args.workers)
        report["efficiency"] = results
        print(efficiency_table(results, args.budget), flush=True)
    if not args.skip_timing:
        rows = run_timing(args.timing_reps, args.quick)
        report["timing"] = rows
        print("\n" + timing_table(rows), flush=True)
    report["wall_s"] = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=float))
    print(f"\ntotal wall time {report['wall_s']:.0f} s; raw numbers in {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
