"""One adapter per optimizer, all with the same two calls, so the driver treats the tools alike.

``ask(n)`` returns up to ``n`` new proposals ``[(handle, conditions)]`` with every earlier unanswered proposal
still pending (the driver times this call: it is the tool's "give me the next point(s)", including the
ingestion of whatever ``tell`` handed over since the last ask). ``tell(handle, value, reason)`` hands over one
measured value, or ``value=None`` and the reason for a failed experiment (timed separately, per observation).
``last_model_based`` says whether the latest ask used a fitted model (not the initial space-filling design).

- ``ours``: the orchestrator itself: ``Campaign.model_validate`` → ``CampaignRunner`` on ``Ledger(":memory:")``.
  ask = ``runner.observations()`` (reads the ledger: completed, failed, and proposed/running as pending) →
  ``runner.refit`` → ``runner.propose`` (records them ``proposed``) → ``ledger.mark_running``. tell =
  ``ledger.mark_completed`` / ``ledger.mark_failed`` (failed experiments train the proposer's success model).
- ``ax``: ``ax.Client`` with the default generation strategy (center point, Sobol up to 5 trials, then "MBM":
  modular BoTorch GP + log-EI family). ask = ``get_next_trials(max_trials=n)``, repeated within the same ask
  while it returns fewer than asked (it stops short at its Sobol → MBM transition); RUNNING trials are Ax's
  pending points. tell = ``complete_trial(raw_data=...)`` / ``mark_trial_failed``.
- ``baybe``: ``baybe.Campaign(searchspace, objective)`` with its default ``TwoPhaseMetaRecommender`` (one random
  point, then ``BotorchRecommender``). ask = ``recommend(batch_size=n, pending_experiments=<unanswered
  proposals>)``. tell = ``add_measurements`` of one row. A ``NumericalTarget`` objective rejects missing
  values, so a failed experiment is not added at all; recommendation caching is switched off so that a
  skipped failure does not hand back the cached (failed) point again.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from typing import Any

from peer_problems import Problem

TOOLS = ("ours", "ax", "baybe")


def available(tool: str) -> str | None:
    """``None`` if the tool can run here, else why not (a line for the console)."""
    if tool == "ours":
        return None
    module = {"ax": "ax", "baybe": "baybe"}[tool]
    try:
        __import__(module)
    except ImportError as exc:
        return f"{tool}: not installed ({exc}); `pip install -e .[bench]` adds it; skipped"
    return None


def make_tool(tool: str, problem: Problem, seed: int, q: int, ours_initial: int | None = None):
    """The adapter for ``tool`` on ``problem`` (``q`` is only recorded in the orchestrator's campaign;
    ``ours_initial`` overrides the orchestrator's design size, ``None`` keeps its default)."""
    if tool == "ours":
        return Ours(problem, seed, q, ours_initial)
    return {"ax": AxTool, "baybe": BayBETool}[tool](problem, seed, q)


def _quiet() -> None:
    """Silences the peers' per-trial INFO lines and numerical warnings (Ax: the level goes on its handler)."""
    try:
        import ax  # noqa: F401 - attaches Ax's stream handler to the "ax" logger
    except ImportError:
        pass
    for handler in logging.getLogger("ax").handlers:
        handler.setLevel(logging.ERROR)
    logging.getLogger("baybe").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


# --- ours ----------------------------------------------------------------------------------------------------------
def _composition_campaign(problem: Problem, simplex: bool, seed: int, q: int, initial: int | None = None):
    from orchestrator.campaign import Campaign

    spec: dict[str, Any] = {
        "name": f"peers-{problem.name}-{seed}",
        "parameters": problem.parameters,
        "outcomes": [{"name": problem.outcome}],
        "objectives": [{"outcome": problem.outcome, "goal": problem.goal}
                       | ({"target": problem.target, "tolerance": 0.1} if problem.goal == "target" else {})],
        "budget": {"max_experiments": 100_000, "batch_size": q, "initial_experiments": initial},
        "seed": seed,
        # The runner is handed no simulator (the driver measures); this section only satisfies the schema.
        "simulator": {"dataset": problem.name} if problem.name in ("suzuki", "photo_pce10", "perovskites")
        else {"model": "perovskite_film" if problem.name == "perovskite" else "peer_problems:unused"},
    }
    if simplex:
        names = [p["name"] for p in problem.parameters if p["type"] == "continuous"]
        spec["compositions"] = [{"name": "fractions", "components": names, "total": 1.0}]
    return Campaign.model_validate(spec)


def ours_simplex_support(problem: Problem) -> str | None:
    """``None`` if the campaign schema *and* the proposer put proposals on the simplex, else why not.

    Checked by validating a campaign with ``compositions`` and drawing its first two design points.
    """
    from orchestrator.ledger import Ledger
    from orchestrator.loop import CampaignRunner

    try:
        campaign = _composition_campaign(problem, True, 0, 1)
        runner = CampaignRunner(campaign, Ledger(":memory:"), None)
        exps = runner.propose(runner.observations(), None, 2)
    except Exception as exc:  # noqa: BLE001 - any failure means "not there yet"
        return f"pending simplex support ({type(exc).__name__}: {str(exc)[:80]})"
    names = [p["name"] for p in problem.parameters if p["type"] == "continuous"]
    sums = [sum(e.conditions[n] for n in names) for e in exps]
    if any(abs(s - 1.0) > 1e-6 for s in sums):
        return f"pending simplex support (compositions accepted, but proposals sum to {sums})"
    return None


class Ours:
    """The orchestrator's proposer through ``CampaignRunner`` and an in-memory ledger."""

    def __init__(self, problem: Problem, seed: int, q: int, initial: int | None = None):
        from orchestrator.ledger import Ledger
        from orchestrator.loop import CampaignRunner

        self.note = ours_simplex_support(problem) if problem.simplex else None
        # Without simplex support the four fractions are free in [0, 1]; the driver normalizes them by their sum.
        self.normalize_simplex = problem.simplex and self.note is not None
        campaign = _composition_campaign(problem, problem.simplex and self.note is None, seed, q, initial)
        self.ledger = Ledger(":memory:")
        self.ledger.bind(campaign)
        self.runner = CampaignRunner(campaign, self.ledger, None)
        self.outcome = problem.outcome
        self.last_model_based = False
        self.last_info: dict[str, Any] = {}

    def ask(self, n: int) -> list[tuple[Any, dict[str, Any]]]:
        obs = self.runner.observations()
        exps = self.runner.propose(obs, self.runner.refit(obs), n)
        for e in exps:
            self.ledger.mark_running(e.id)
        self.last_model_based = exps[0].generator.startswith("gp")
        self.last_info = {k: exps[0].proposal_info.get(k) for k in ("fit_s", "acq_s")}
        return [(e.id, dict(e.conditions)) for e in exps]

    def tell(self, handle: Any, value: float | None, reason: str) -> None:
        if value is None:
            self.ledger.mark_failed(handle, reason)
        else:
            self.ledger.mark_completed(handle, {self.outcome: value})

    def preload(self, conditions: Mapping[str, Any], value: float | None, reason: str) -> None:
        """One finished experiment the tool did not propose (``orchestrator add``'s ledger call)."""
        if value is None:
            self.ledger.add_manual(conditions, failed=reason)
        else:
            self.ledger.add_manual(conditions, {self.outcome: value})

    def close(self) -> None:
        self.ledger.close()


# --- Ax ------------------------------------------------------------------------------------------------------------
class AxTool:
    """Ax's ``Client`` with its default generation strategy."""

    normalize_simplex = False

    def __init__(self, problem: Problem, seed: int, q: int):
        _quiet()
        from ax import ChoiceParameterConfig, Client, RangeParameterConfig

        self.client = Client(random_seed=seed)
        self.target = problem.target
        if problem.simplex:
            self.client.set_experiment(_ax_simplex_experiment(problem))
        else:
            self.client.configure_experiment(parameters=[
                RangeParameterConfig(name=p["name"], bounds=(p["low"], p["high"]), parameter_type="float")
                if p["type"] == "continuous" else
                ChoiceParameterConfig(name=p["name"], values=list(p["choices"]), parameter_type="str", is_ordered=False)
                for p in problem.parameters])
        # One metric named "y" (outcome names such as "yield" are Python keywords to Ax's expression parser). Ax's
        # objective is linear in metrics, so a target problem reports |outcome - target| and minimizes it.
        self.client.configure_optimization(objective="-y" if problem.score_goal == "minimize" else "y")
        self.last_model_based = False
        self.short_asks = 0
        self.note = "goal as |y - target| (objective must be linear in metrics)" if problem.goal == "target" else None

    def ask(self, n: int) -> list[tuple[Any, dict[str, Any]]]:
        got: dict[int, Mapping[str, Any]] = {}
        while len(got) < n:
            trials = self.client.get_next_trials(max_trials=n - len(got))
            if not trials:
                break
            got.update(trials)
        if len(got) < n:
            self.short_asks += 1
        exp = self.client._experiment  # read-only: which generation node made each trial
        self.last_model_based = any(exp.trials[i].generator_runs[0]._generation_node_name == "MBM" for i in got)
        return [(i, dict(p)) for i, p in got.items()]

    def tell(self, handle: Any, value: float | None, reason: str) -> None:
        if value is None:
            self.client.mark_trial_failed(handle, failed_reason=reason)
        else:
            y = abs(value - self.target) if self.target is not None else value
            self.client.complete_trial(handle, raw_data={"y": y})

    def preload(self, conditions: Mapping[str, Any], value: float | None, reason: str) -> None:
        """One finished experiment Ax did not propose: ``attach_trial``, then its result. The first one replaces
        the default generation strategy by the same one without its center point, which Ax would otherwise
        still propose first; the attached trials then count towards its initialization budget."""
        if not getattr(self, "_preloaded", False):
            self.client.configure_generation_strategy(initialize_with_center=False)
            self._preloaded = True
        self.tell(self.client.attach_trial(parameters=dict(conditions)), value, reason)

    def close(self) -> None:
        pass


def _ax_simplex_experiment(problem: Problem):
    """An Ax ``Experiment`` whose fractions sum to 1 by an *equality* parameter constraint.

    ``Client.configure_experiment(parameter_constraints=[...])`` parses inequalities only; Ax's core
    ``ParameterConstraint(equality=...)`` is honoured by its Sobol (hit-and-run) and BoTorch generators, and
    ``Client.set_experiment`` accepts an experiment built from it.
    """
    from ax.core import Experiment, ParameterType, RangeParameter, SearchSpace
    from ax.core.parameter_constraint import ParameterConstraint

    names = [p["name"] for p in problem.parameters]
    params = [RangeParameter(p["name"], ParameterType.FLOAT, p["low"], p["high"]) for p in problem.parameters]
    eq = ParameterConstraint(equality=" + ".join(names) + " == 1")
    return Experiment(search_space=SearchSpace(parameters=params, parameter_constraints=[eq]), name=problem.name)


# --- BayBE ---------------------------------------------------------------------------------------------------------
class BayBETool:
    """BayBE's ``Campaign`` with its default recommender."""

    normalize_simplex = False

    def __init__(self, problem: Problem, seed: int, q: int):
        _quiet()
        import pandas as pd
        from baybe import Campaign, active_settings
        from baybe.constraints import ContinuousLinearConstraint
        from baybe.parameters import CategoricalParameter, NumericalContinuousParameter
        from baybe.searchspace import SearchSpace, SubspaceContinuous
        from baybe.targets import NumericalTarget

        self.pd = pd
        active_settings.random_seed = seed
        active_settings.cache_campaign_recommendations = False
        params = [NumericalContinuousParameter(p["name"], (p["low"], p["high"])) if p["type"] == "continuous"
                  else CategoricalParameter(p["name"], tuple(p["choices"])) for p in problem.parameters]
        if problem.simplex:
            names = [p["name"] for p in problem.parameters]
            sum_to_one = ContinuousLinearConstraint(parameters=names, operator="=", coefficients=[1.0] * len(names),
                                                    rhs=1.0)
            space = SearchSpace(continuous=SubspaceContinuous(parameters=params, constraints_lin_eq=[sum_to_one]))
        else:
            space = SearchSpace.from_product(params)
        if problem.goal == "target":
            target = NumericalTarget.match_absolute(problem.outcome, problem.target)
        else:
            target = NumericalTarget(problem.outcome, minimize=problem.goal == "minimize")
        self.campaign = Campaign(space, target)
        self.outcome = problem.outcome
        self.pending: dict[int, dict[str, Any]] = {}
        self.counter = 0
        self.last_model_based = False
        self.skipped_failures = 0
        self.note = "failed experiments not added (no missing values)" if problem.name == "perovskite" else None

    def ask(self, n: int) -> list[tuple[Any, dict[str, Any]]]:
        pending = self.pd.DataFrame(list(self.pending.values())) if self.pending else None
        self.last_model_based = len(self.campaign.measurements) >= 1  # TwoPhaseMetaRecommender(switch_after=1)
        rec = self.campaign.recommend(batch_size=n, pending_experiments=pending)
        out = []
        for row in rec.to_dict("records"):
            self.counter += 1
            self.pending[self.counter] = row
            out.append((self.counter, dict(row)))
        return out

    def tell(self, handle: Any, value: float | None, reason: str) -> None:
        row = self.pending.pop(handle)
        if value is None:
            self.skipped_failures += 1
            return
        self.campaign.add_measurements(self.pd.DataFrame([row | {self.outcome: value}]))

    def preload(self, conditions: Mapping[str, Any], value: float | None, reason: str) -> None:
        """One finished experiment BayBE did not recommend (a failed one is not added, as in ``tell``)."""
        self.counter += 1
        self.pending[self.counter] = dict(conditions)
        self.tell(self.counter, value, reason)

    def close(self) -> None:
        pass
