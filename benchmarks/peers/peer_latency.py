"""Proposal latency at many observations (``benchmarks/peers.py --latency``): each tool is handed ``n`` finished
experiments it did not propose (a scrambled Sobol design over the problem's space, measured with the problem's
noise; failed ones as failures), then asked for ONE point, and that ask is timed.

This is what a long campaign costs per proposal once it has ``n`` results, without running ``n`` proposals first.
Each (tool, problem, n, repeat) is a fresh tool in its own job; repeat ``r`` uses design seed ``r`` for every tool,
so all tools see the same observations.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from scipy.stats import qmc

from peer_driver import limit_threads
from peer_problems import Problem, clean_conditions, evaluate, get_problem
from peer_tools import make_tool


def design(problem: Problem, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` scrambled-Sobol conditions in the problem's units (fractions of a simplex problem divided by their sum)."""
    U = qmc.Sobol(len(problem.parameters), scramble=True, seed=seed).random(n)
    rows = []
    for u in U:
        row: dict[str, Any] = {}
        for p, x in zip(problem.parameters, u):
            if p["type"] == "categorical":
                row[p["name"]] = p["choices"][min(int(x * len(p["choices"])), len(p["choices"]) - 1)]
            else:
                row[p["name"]] = p["low"] + float(x) * (p["high"] - p["low"])
        if problem.simplex:
            total = sum(row[p["name"]] for p in problem.parameters)
            row = {k: v / total for k, v in row.items()}
        rows.append(clean_conditions(problem, row))
    return rows


_WARM: set[tuple[str, str]] = set()


def latency_job(job: tuple[str, str, int, int]) -> dict[str, Any]:
    """One (tool, problem, n, repeat): preload ``n`` results, then time one ask of one point.

    The first job of a tool and problem in a process first runs an untimed one at n = 12, so that no timed ask
    pays for imports and first-call set-up.
    """
    limit_threads()
    tool_name, problem_name, n, rep = job
    if (tool_name, problem_name) not in _WARM:
        _WARM.add((tool_name, problem_name))
        latency_job((tool_name, problem_name, 12, rep + 1000))
    problem = get_problem(problem_name)
    tool = make_tool(tool_name, problem, rep, 1)
    tell_s, failed = [], 0
    for k, cond in enumerate(design(problem, n, rep)):
        measured, _, reason = evaluate(problem, cond, np.random.default_rng([rep, 100_000 + k]), False)
        failed += measured is None
        t0 = time.perf_counter()
        tool.preload(cond, measured, reason)
        tell_s.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    got = tool.ask(1)
    ask_s = time.perf_counter() - t0
    tool.close()
    return {"tool": tool_name, "problem": problem_name, "n": n, "rep": rep, "ask_s": ask_s, "n_got": len(got),
            "model": bool(tool.last_model_based), "failed": failed, "tell_s_median": float(np.median(tell_s)),
            **{k: v for k, v in getattr(tool, "last_info", {}).items() if v is not None}}


def latency_table(rows: list[dict[str, Any]], tools: list[str]) -> str:
    """Per problem and n: each tool's median and worst ask (seconds) and median seconds per preloaded result."""
    lines = ["== proposal latency: one ask of 1 point after n preloaded results (1 torch thread) ==",
             f"{'problem':12} {'n':>5} {'tool':6} {'ask median s':>12} {'ask max s':>10} {'reps':>4} {'s/obs':>8} "
             f"{'model':>5}"]
    keys = sorted({(r["problem"], r["n"]) for r in rows})
    for problem, n in keys:
        for tool in tools:
            sel = [r for r in rows if (r["problem"], r["n"], r["tool"]) == (problem, n, tool)]
            if not sel:
                continue
            asks = [r["ask_s"] for r in sel]
            model = "yes" if all(r["model"] for r in sel) else "NO"
            lines.append(f"{problem:12} {n:>5} {tool:6} {np.median(asks):12.2f} {max(asks):10.2f} {len(sel):>4} "
                         f"{np.median([r['tell_s_median'] for r in sel]):8.5f} {model:>5}")
    return "\n".join(lines)
