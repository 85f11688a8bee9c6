"""The closed loop as plain functions: read the ledger → refit → propose → run experiments → record.

``flows.py`` wraps these steps in Prefect tasks; benchmarks and tests call them directly. Each step
commits to the ledger before the next begins, so ``run_loop`` on a half-finished ledger resumes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from orchestrator.campaign import Campaign
from orchestrator.crashpoints import crash_point
from orchestrator.dispatch import Decision
from orchestrator.errors import ExperimentFailed, ExperimentUnknown
from orchestrator.ledger import Experiment, Ledger
from orchestrator.objectives import ScalarObjective
from orchestrator.proposer import Observations, Proposal, fit_for_objective, propose
from orchestrator.simulation import SimulatorFn
from orchestrator.space import DTYPE, SearchSpace
from orchestrator.surrogates import Surrogate
from orchestrator.threads import single_threaded
from orchestrator.transfer import PriorModel, fit_prior, load_priors

logger = logging.getLogger(__name__)

EventListener = Callable[[str, Experiment, "CampaignRunner"], None]
MapFn = Callable[[Callable[[int], Experiment], Sequence[int]], list[Experiment]]


@dataclass(frozen=True)
class Best:
    """The best completed experiment so far and its objective score."""

    experiment: Experiment
    score: float


class CampaignRunner:
    """One campaign's steps, bound to its ledger and simulated lab."""

    def __init__(
        self, campaign: Campaign, ledger: Ledger, simulator: SimulatorFn, on_event: EventListener | None = None
    ):
        self.campaign = campaign
        self.ledger = ledger
        self.simulator = simulator
        self.on_event = on_event
        self.space = SearchSpace.from_campaign(campaign)
        self.outcome_names = [o.name for o in campaign.outcomes]
        # Prior files are read now, so a bad file stops the run before any experiment; fitted at first refit.
        self.prior_data = load_priors(campaign)
        self._prior_models: dict[int, PriorModel] | None = None

    def prior_models(self) -> dict[int, PriorModel]:
        """The campaign's priors fitted to their calculated data, by outcome column (fitted once per run)."""
        if self._prior_models is None:
            with single_threaded(), torch.random.fork_rng():
                torch.manual_seed(self.campaign.seed)
                self._prior_models = {
                    self.outcome_names.index(d.outcome): fit_prior(self.space, d) for d in self.prior_data
                }
        return self._prior_models

    # --- reading the ledger -------------------------------------------------------------------
    def observations(self) -> Observations:
        """The ledger's experiments as tensors (completed, failed, and pending = proposed, running or unknown:
        an experiment whose fate is unknown still holds its place, so the proposer does not repeat it)."""
        by_state: dict[str, list[Experiment]] = {"completed": [], "failed": [], "pending": []}
        for e in self.ledger.experiments():
            by_state["pending" if e.state in ("proposed", "running", "unknown") else e.state].append(e)
        done = by_state["completed"]
        Y = torch.tensor([[e.outcomes[n] for n in self.outcome_names] for e in done], dtype=DTYPE)
        return Observations(
            X=self.space.encode([e.conditions for e in done]),
            Y=Y.reshape(len(done), len(self.outcome_names)),
            X_failed=self.space.encode([e.conditions for e in by_state["failed"]]),
            X_pending=self.space.encode([e.conditions for e in by_state["pending"]]),
        )

    @property
    def concurrency(self) -> int:
        """How many experiments of a batch run at once: the batch, unless the backend runs one at a time
        (one bench of instruments runs experiments in id order, so a seeded simulated run repeats exactly)."""
        return min(self.campaign.budget.batch_size, getattr(self.simulator, "max_concurrent", None) or 64)

    def remaining_budget(self) -> int:
        return max(0, self.campaign.budget.max_experiments - sum(self.ledger.counts().values()))

    def unfinished(self) -> list[int]:
        """Experiments proposed or running but not finished, e.g. left by a crash."""
        return [e.id for e in self.ledger.experiments(["proposed", "running"])]

    def in_model_phase(self, obs: Observations) -> bool:
        return obs.n_seen >= self.campaign.initial_experiments and obs.X.shape[0] >= 2

    def objective(self, Y: torch.Tensor | None = None) -> ScalarObjective:
        return ScalarObjective.from_campaign(self.campaign, Y)

    def best(self) -> Best | None:
        done = self.ledger.experiments(["completed"])
        if not done:
            return None
        Y = self._outcomes(done)
        objective = self.objective(Y)
        scores = objective(Y)
        # The best is the best that meets the outcome constraints, when any does.
        ok = objective.feasible(Y)
        ranked = torch.where(ok, scores, torch.full_like(scores, -torch.inf)) if ok.any() else scores
        i = int(torch.argmax(ranked))
        return Best(done[i], float(scores[i]))

    def pareto_front(self) -> list[Experiment]:
        """Completed experiments that meet the outcome constraints and no other beats on every objective."""
        done = self.ledger.experiments(["completed"])
        if not done:
            return []
        Y = self._outcomes(done)
        mask = self.objective(Y).pareto_mask(Y)
        return [e for e, keep in zip(done, mask.tolist()) if keep]

    def _outcomes(self, exps: list[Experiment]) -> torch.Tensor:
        return torch.tensor([[e.outcomes[n] for n in self.outcome_names] for e in exps], dtype=DTYPE)

    # --- the steps ------------------------------------------------------------------------------
    def refit(self, obs: Observations) -> Surrogate | None:
        """Fits the surrogates, or returns ``None`` while the Sobol design is still running."""
        if not self.in_model_phase(obs):
            return None
        with torch.random.fork_rng():
            torch.manual_seed(self.campaign.seed + obs.n_seen)
            return fit_for_objective(self.space, obs, self.objective(obs.Y), self.prior_models())

    def propose(self, obs: Observations, surrogate: Surrogate | None, count: int) -> list[Experiment]:
        """Proposes ``count`` experiments and records them as ``proposed``."""
        proposal: Proposal = propose(
            self.space,
            obs,
            self.objective(obs.Y),
            q=count,
            seed=self.campaign.seed,
            n_initial=self.campaign.initial_experiments,
            settings=self.campaign.optimizer,
            surrogate=surrogate,
        )
        experiments = self.ledger.add_proposed(self.space.decode(proposal.X), proposal.generator, proposal.info)
        crash_point("proposed")
        for e in experiments:
            self._emit("proposed", e)
        return experiments

    def run_experiment(self, exp_id: int) -> Experiment:
        """Runs one experiment on the backend (a simulator, or instruments) and records the result.

        It is recorded ``running`` (dispatched, with its idempotency key) before anything is sent. One found
        ``running`` when a run starts was interrupted by a crash; :meth:`resume` decides its fate, and it is
        sent again only where that is provably harmless.
        """
        exp = self.ledger.get(exp_id)
        if exp.state in ("completed", "failed", "unknown"):
            return exp
        if exp.state == "running":
            exp = self.resume(exp)
            if exp.state != "running":
                self._emit(exp.state, exp)
                return exp
        else:
            exp = self.ledger.mark_running(exp_id)
            crash_point("dispatched")
            self._emit("running", exp)
        rng = np.random.default_rng([self.campaign.seed, exp_id])
        on_instruments = getattr(self.simulator, "run_experiment", None)
        raw: dict[str, str] | None = None
        try:
            if on_instruments is not None:
                log = self._step_log(exp)
                if log is not None:
                    result, raw = on_instruments(exp_id, exp.conditions, dispatch=log, key=exp.dispatch_key)
                else:
                    result, raw = on_instruments(exp_id, exp.conditions)
            else:
                result = self.simulator(exp.conditions, rng)
            outcomes = self._checked(result)
            crash_point("readings_saved")
        except ExperimentFailed as exc:
            exp = self.ledger.mark_failed(exp_id, exc.reason, raw=exc.raw or raw)
        except ExperimentUnknown as exc:
            exp = self.ledger.mark_unknown(exp_id, exc.reason)
        except Exception as exc:  # noqa: BLE001 - a failing experiment must not stop the campaign
            logger.warning("experiment %s raised %s: %s", exp_id, type(exc).__name__, exc)
            exp = self.ledger.mark_failed(exp_id, f"{type(exc).__name__}: {exc}", raw=raw)
        else:
            exp = self.ledger.mark_completed(exp_id, outcomes, raw=raw)
        self._emit(exp.state, exp)
        return exp

    def _step_log(self, exp: Experiment) -> Any:
        make = getattr(self.simulator, "step_log", None)
        return make(self.ledger, exp.id, exp.attempts) if make is not None else None

    def resume(self, exp: Experiment) -> Experiment:
        """Settles an experiment a crash left ``running``: finished from its saved readings, dispatched again
        (same key) where nothing irreversible had happened, or ``unknown`` for a person to resolve.

        A pure simulator function has no side effects (the same conditions and seed give the same result),
        so running it again is always safe; a backend that can neither show its progress nor be asked
        leaves the experiment ``unknown``.
        """
        recover = getattr(self.simulator, "recover", None)
        if recover is not None:
            decision = recover(exp, self.ledger.steps(exp.id))
        elif getattr(self.simulator, "run_experiment", None) is None or getattr(self.simulator, "rerun_safe", False):
            decision = Decision("redispatch", "the simulator has no side effects; it is run again")
        else:
            decision = Decision(
                "unknown",
                "the run stopped while this experiment was on the instruments, which keep no record to ask; "
                "check the sample, then `orchestrator resolve ID --result outcome=value ...` or `--failed REASON`",
            )
        logger.warning("experiment %s was interrupted: %s (%s)", exp.id, decision.verdict, decision.reason)
        if decision.verdict == "redispatch":
            return self.ledger.redispatch(exp.id, decision.reason)
        if decision.verdict == "unknown":
            return self.ledger.mark_unknown(exp.id, f"interrupted: {decision.reason}")
        if decision.verdict == "continue":
            self.ledger.note(exp.id, f"resumed: {decision.reason}")
            return exp
        self.ledger.note(exp.id, f"resumed: {decision.reason}")
        try:
            result, raw = self.simulator.finish(decision.readings or {})
            return self.ledger.mark_completed(exp.id, self._checked(result), raw=raw)
        except ExperimentFailed as exc:
            return self.ledger.mark_failed(exp.id, exc.reason, raw=exc.raw or decision.readings)

    def _checked(self, outcomes: Any) -> dict[str, float]:
        if not isinstance(outcomes, Mapping):
            raise ExperimentFailed(f"simulator returned {type(outcomes).__name__}, not a mapping of outcomes")
        clean = {}
        for name in self.outcome_names:
            value = outcomes.get(name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
                raise ExperimentFailed(f"no numeric value for outcome '{name}' (got {value!r})")
            if not math.isfinite(float(value)):
                raise ExperimentFailed(f"outcome '{name}' is {value}")
            clean[name] = float(value)
        return clean

    def _emit(self, kind: str, exp: Experiment) -> None:
        if self.on_event is not None:
            self.on_event(kind, exp, self)


def threaded_map(max_workers: int) -> MapFn:
    """Runs a batch's experiments concurrently in threads (instruments work in parallel)."""

    def map_fn(fn: Callable[[int], Experiment], ids: Sequence[int]) -> list[Experiment]:
        if len(ids) <= 1 or max_workers <= 1:
            return [fn(i) for i in ids]
        with ThreadPoolExecutor(max_workers=min(max_workers, len(ids))) as pool:
            return list(pool.map(fn, ids))

    return map_fn


SubmitFn = Callable[[int], Any]  # experiment id → a future (concurrent or Prefect) of its Experiment


def run_loop(
    runner: CampaignRunner,
    *,
    map_experiments: MapFn | None = None,
    refit: Callable[[Observations], Surrogate | None] | None = None,
    propose_step: Callable[[Observations, Surrogate | None, int], list[Experiment]] | None = None,
    submit: SubmitFn | None = None,
    approve: Callable[[list[int]], list[int]] | None = None,
) -> None:
    """Runs the campaign until its budget is used, resuming whatever the ledger left unfinished.

    In batches by default: propose ``batch_size``, run them, wait for all, repeat. With
    ``budget.asynchronous`` each of the ``batch_size`` slots gets a new proposal as soon as its experiment
    finishes, the others still running counting as pending points (see :func:`run_async`).

    The step callables default to the runner's own methods; ``flows.py`` passes Prefect tasks instead.
    ``approve(ids) -> ids`` (``flows.py``, for ``approval: required``) is asked before experiments are sent
    and returns those a person approved; the others it has recorded as rejected.
    """
    refit = refit or runner.refit
    propose_step = propose_step or runner.propose
    approve = approve or (lambda ids: ids)
    if runner.campaign.budget.asynchronous and runner.concurrency > 1:
        run_async(runner, refit=refit, propose_step=propose_step, submit=submit, approve=approve)
        return
    map_experiments = map_experiments or threaded_map(runner.concurrency)
    while True:
        todo = runner.unfinished()
        if not todo:
            count = min(runner.campaign.budget.batch_size, runner.remaining_budget())
            if count == 0:
                return
            obs = runner.observations()
            surrogate = refit(obs)
            todo = [e.id for e in propose_step(obs, surrogate, count)]
        todo = approve(todo)
        map_experiments(runner.run_experiment, todo)


def run_async(
    runner: CampaignRunner,
    *,
    refit: Callable[[Observations], Surrogate | None],
    propose_step: Callable[[Observations, Surrogate | None, int], list[Experiment]],
    submit: SubmitFn | None = None,
    approve: Callable[[list[int]], list[int]] = lambda ids: ids,
) -> None:
    """Keeps every slot busy: whenever an experiment finishes, one new proposal takes its slot.

    Running experiments are in the ledger as ``running``, so :meth:`CampaignRunner.observations` hands them
    to the proposer as pending points (fantasies): the new proposal goes where the running ones do not.
    """
    slots = runner.concurrency
    pool = ThreadPoolExecutor(max_workers=slots) if submit is None else None
    start = submit or (lambda exp_id: pool.submit(runner.run_experiment, exp_id))  # type: ignore[union-attr]
    running: dict[Any, int] = {}
    try:
        for exp_id in approve(runner.unfinished()):
            running[start(exp_id)] = exp_id
        while True:
            while len(running) < slots and runner.remaining_budget() > 0:
                obs = runner.observations()
                (exp,) = propose_step(obs, refit(obs), 1)
                for exp_id in approve([exp.id]):
                    running[start(exp_id)] = exp_id
            if not running:
                return
            waitable = {getattr(f, "wrapped_future", f): f for f in running}
            done, _ = wait(list(waitable), return_when=FIRST_COMPLETED)
            for d in done:
                future = waitable[d]
                running.pop(future)
                future.result()
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
