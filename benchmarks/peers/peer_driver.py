"""One run: a tool, a problem, a seed, a setting and a budget → every experiment's score and every call's time.

Schedules (``budget`` experiments in all, in every setting):

- ``sequential``: ask for 1, measure, tell; repeat.
- ``batch``: ask for ``min(q, left)`` at once, measure them all, tell each; repeat. A tool that hands back
  fewer than asked (Ax at its Sobol → MBM transition, after topping up) runs the smaller batch.
- ``async``: ``workers`` simulated instruments. Experiment ``k`` (k = 1, 2, … in dispatch order) takes
  ``uniform(0.5, 2.0) * (1, 1.5, 2, 3)[worker]`` simulated hours, drawn from ``default_rng([seed, k, 1])``, so
  every tool sees the same slow and fast workers and the same draws. At t = 0 each worker in turn asks for ONE
  point (the ones dispatched before it pending); then, whenever an experiment finishes, its result is told and
  every idle worker asks for ONE point, with all running experiments pending (ours: the ledger's ``running``
  rows are ``Observations.X_pending``; Ax: its RUNNING trials; BayBE: ``pending_experiments=`` a data frame of
  them). A tool that returns nothing leaves the worker idle until the next completion.

Experiment ``k``'s measurement noise comes from ``default_rng([seed, k])``, the same for every tool (the
orchestrator's own loop seeds experiment ``id`` the same way). Experiments are scored in the order their
results became known (completion order; dispatch order within a batch).
"""

from __future__ import annotations

import heapq
import time
from typing import Any

import numpy as np

from peer_problems import clean_conditions, evaluate, get_problem
from peer_tools import make_tool

WORKER_SPEED = (1.0, 1.5, 2.0, 3.0)


def limit_threads() -> None:
    """One torch/BLAS thread per process (threads spin-wait against each other on a 2-core machine)."""
    import torch

    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # pragma: no cover
        pass


class _Run:
    """Bookkeeping shared by the three schedules."""

    def __init__(self, tool_name: str, problem_name: str, seed: int, q: int, ours_initial: int | None):
        self.problem = get_problem(problem_name)
        self.seed = seed
        self.tool = make_tool(tool_name, self.problem, seed, q, ours_initial)
        self.k = 0  # experiments dispatched
        self.asks: list[dict[str, Any]] = []
        self.tell_s: list[float] = []
        self.results: list[dict[str, Any]] = []  # in completion order
        self.clipped = 0

    def ask(self, n: int) -> list[tuple[Any, dict[str, Any], dict[str, Any]]]:
        """Times one ask; returns (handle, conditions, pending record) per proposal, results already drawn."""
        t0 = time.perf_counter()
        got = self.tool.ask(n)[:n]
        dt = time.perf_counter() - t0
        self.asks.append({"s": dt, "n": len(got), "model": bool(self.tool.last_model_based)}
                         | getattr(self.tool, "last_info", {}))
        out = []
        for handle, cond in got:
            self.k += 1
            clean = clean_conditions(self.problem, cond)
            self.clipped += any(clean[p] != cond[p] for p in clean if isinstance(clean[p], float))
            measured, score, reason = evaluate(self.problem, clean, np.random.default_rng([self.seed, self.k]),
                                               self.tool.normalize_simplex)
            out.append((handle, clean, {"k": self.k, "conditions": clean, "measured": measured, "score": score,
                                        "reason": reason}))
        return out

    def tell(self, handle: Any, record: dict[str, Any], finished_h: float | None = None) -> None:
        t0 = time.perf_counter()
        self.tool.tell(handle, record["measured"], record["reason"])
        self.tell_s.append(time.perf_counter() - t0)
        self.results.append(record | {"finished_h": finished_h})


def run_job(job: tuple[str, str, str, int, int, int, int, int | None]) -> dict[str, Any]:
    """Runs one (tool, problem, setting, seed, budget, q, workers, ours_initial) job; returns raw data."""
    limit_threads()
    tool_name, problem_name, setting, seed, budget, q, workers, ours_initial = job
    run = _Run(tool_name, problem_name, seed, 1 if setting == "sequential" else q, ours_initial)
    t0 = time.perf_counter()
    if setting in ("sequential", "batch"):
        step = 1 if setting == "sequential" else q
        while run.k < budget:
            batch = run.ask(min(step, budget - run.k))
            if not batch:
                raise RuntimeError(f"{tool_name} proposed nothing with nothing pending")
            for handle, _, record in batch:
                run.tell(handle, record)
    else:
        _run_async(run, budget, workers)
    wall = time.perf_counter() - t0
    run.tool.close()
    return {"tool": tool_name, "problem": problem_name, "setting": setting, "seed": seed, "budget": budget,
            "q": q if setting == "batch" else 1, "wall_s": wall, "asks": run.asks, "tell_s": run.tell_s,
            "results": run.results, "clipped": run.clipped, "note": getattr(run.tool, "note", None),
            "short_asks": getattr(run.tool, "short_asks", 0)}


def _run_async(run: _Run, budget: int, workers: int) -> None:
    speed = [WORKER_SPEED[w % len(WORKER_SPEED)] for w in range(workers)]
    running: list[tuple[float, int, int, Any, dict[str, Any]]] = []  # (finish, k, worker, handle, record)
    idle, now = list(range(workers)), 0.0
    while True:
        while idle and run.k < budget:
            got = run.ask(1)
            if not got:
                break
            handle, _, record = got[0]
            w = idle.pop(0)
            hours = float(np.random.default_rng([run.seed, record["k"], 1]).uniform(0.5, 2.0)) * speed[w]
            heapq.heappush(running, (now + hours, record["k"], w, handle, record))
        if not running:
            if run.k < budget:
                raise RuntimeError("the tool proposed nothing while no experiment was running")
            return
        now, _, w, handle, record = heapq.heappop(running)
        run.tell(handle, record, finished_h=now)
        idle.append(w)
        idle.sort()


def score_run(run: dict[str, Any], info: dict[str, Any], threshold: float) -> dict[str, Any]:
    """Best score, progress and experiments-to-threshold of one run (definitions: ``benchmarks/peers.py``)."""
    sign = 1.0 if info["score_goal"] == "maximize" else -1.0
    best, trace = None, []
    for r in run["results"]:
        v = r["score"]
        if v is not None and (best is None or sign * v > sign * best):
            best = v
        trace.append(best)
    span = info["optimum"] - info["worst"]
    progress = [0.0 if b is None else (b - info["worst"]) / span for b in trace]
    reach = next((i + 1 for i, p in enumerate(progress) if p >= threshold), None)
    model_asks = [a["s"] for a in run["asks"] if a["model"]]
    return {"best": best, "progress": progress[-1] if progress else 0.0, "exp_to_threshold": reach,
            "failed": sum(r["score"] is None for r in run["results"]),
            "ask_s_model": float(np.median(model_asks)) if model_asks else None, "n_model_asks": len(model_asks),
            "ask_s_all": float(np.median([a["s"] for a in run["asks"]])) if run["asks"] else None,
            "tell_s": float(np.median(run["tell_s"])) if run["tell_s"] else None}
