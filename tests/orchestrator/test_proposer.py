"""The proposer: proposals within bounds, valid categoricals, deterministic under a seed, learns."""

from __future__ import annotations

import pytest
import torch

from orchestrator.campaign import Campaign
from orchestrator.objectives import ScalarObjective
from orchestrator.proposer import Observations, ProposerError, propose, sobol_points
from orchestrator.space import DTYPE, SearchSpace

EMPTY = torch.empty(0, 3, dtype=DTYPE)


@pytest.fixture
def campaign(campaign_dict) -> Campaign:
    return Campaign.model_validate(campaign_dict)


@pytest.fixture
def space(campaign) -> SearchSpace:
    return SearchSpace(tuple(campaign.parameters))


def _truth(X: torch.Tensor) -> torch.Tensor:
    """Encoded toy response, ``n x 3`` → ``n x 1``: best at temp 0.65, layers 3, solvent 1."""
    gain = torch.tensor([1.0, 1.3, 0.7], dtype=DTYPE)[X[:, 2].long()]
    return (gain * torch.exp(-(((X[:, 0] - 0.65) / 0.25) ** 2)) * (1 - 0.1 * (X[:, 1] - 3) ** 2)).unsqueeze(-1)


def _obs(space, n: int, seed: int = 0, failed: int = 0, pending: int = 0) -> Observations:
    X = sobol_points(space, seed, 0, n + failed + pending)
    return Observations(X[:n], _truth(X[:n]), X[n : n + failed], X[n + failed :])


def test_sobol_design_is_a_prefix_stream(space):
    """Point i of the design depends only on the seed and i, so a resumed campaign continues it."""
    whole = sobol_points(space, 5, 0, 8)
    assert torch.equal(sobol_points(space, 5, 3, 5), whole[3:])
    assert not torch.equal(sobol_points(space, 6, 0, 8), whole)


def test_initial_phase_uses_sobol(space, campaign):
    p = propose(space, _obs(space, 2), ScalarObjective.from_campaign(campaign), q=2, seed=1, n_initial=4)
    assert p.generator == "sobol"
    assert torch.equal(p.X, sobol_points(space, 1, 2, 2))


def test_gp_proposals_are_valid_and_deterministic(space, campaign):
    obs = _obs(space, 10, failed=2, pending=1)
    obj = ScalarObjective.from_campaign(campaign)
    a = propose(space, obs, obj, q=3, seed=11, n_initial=4)
    b = propose(space, obs, obj, q=3, seed=11, n_initial=4)
    assert a.generator == "gp:qLogNEI"
    assert torch.equal(a.X, b.X)
    lo, hi = space.bounds()
    assert bool(((a.X >= lo) & (a.X <= hi)).all())
    assert torch.equal(a.X[:, 1:], a.X[:, 1:].round()), "integer and categorical columns hold whole values"
    conds = space.decode(a.X)
    assert all(c["solvent"] in ("dmf", "dmso", "gbl") and c["layers"] in (1, 2, 3, 4) for c in conds)


def test_gp_beats_the_design_on_a_toy_problem(space, campaign):
    """After a 12-point design, 6 sequential proposals find better points than the design did."""
    obj = ScalarObjective.from_campaign(campaign)
    obs = _obs(space, 12, seed=2)
    start_best = float(obs.Y.max())
    for i in range(6):
        x = propose(space, obs, obj, q=1, seed=4, n_initial=12).X
        obs = Observations(torch.cat([obs.X, x]), torch.cat([obs.Y, _truth(x)]), obs.X_failed, obs.X_pending)
    assert float(obs.Y[12:].max()) > start_best
    assert float(obs.Y.max()) > 0.95 * 1.3


def test_minimize_and_target_goals(campaign_dict):
    campaign_dict["outcomes"] = [{"name": "a"}, {"name": "b"}]
    campaign_dict["objectives"] = [
        {"outcome": "a", "goal": "minimize", "weight": 2.0},
        {"outcome": "b", "goal": "target", "target": 1.0, "tolerance": 0.5},
    ]
    c = Campaign.model_validate(campaign_dict)
    Y = torch.tensor([[1.0, 1.0], [0.0, 2.0], [3.0, 1.5]], dtype=DTYPE)
    obj = ScalarObjective.from_campaign(c, Y)
    std_a = float(Y[:, 0].std())
    expected = [-2 * 1.0 / std_a - 0.0, -0.0 - 2.0, -2 * 3.0 / std_a - 1.0]
    assert obj(Y).tolist() == pytest.approx(expected)


def test_all_categorical_space_never_repeats_a_point(campaign_dict):
    campaign_dict["parameters"] = [
        {"name": "a", "type": "categorical", "choices": ["x", "y", "z"]},
        {"name": "b", "type": "categorical", "choices": ["u", "v"]},
    ]
    c = Campaign.model_validate(campaign_dict)
    space = SearchSpace(tuple(c.parameters))
    X = space.all_points()[:4]
    obs = Observations(X, torch.tensor([[0.1], [0.5], [0.2], [0.9]], dtype=DTYPE), X[:0], X[:0])
    p = propose(space, obs, ScalarObjective.from_campaign(c), q=2, seed=0, n_initial=4)
    tried = {tuple(r) for r in X.tolist()}
    assert not tried & {tuple(r) for r in p.X.tolist()}
    with pytest.raises(ProposerError, match="untried points remain"):
        propose(space, obs, ScalarObjective.from_campaign(c), q=3, seed=0, n_initial=4)


def test_continuous_search_runs_each_restart_as_its_own_lbfgs_problem(campaign_dict, monkeypatch):
    """Unconstrained continuous spaces take botorch's batched L-BFGS-B (see ``acquisition_search_options``):
    an option botorch does not know there would silently send it back to one joint problem."""
    import botorch.generation.gen as gen

    calls = []
    real = gen.fmin_l_bfgs_b_batched

    def counting(*args, **kwargs):
        calls.append(kwargs["x0"].shape)  # restarts x (q * d)
        return real(*args, **kwargs)

    monkeypatch.setattr(gen, "fmin_l_bfgs_b_batched", counting)
    campaign_dict["parameters"] = [
        {"name": n, "type": "continuous", "low": 0.0, "high": 1.0} for n in ("a", "b", "c")
    ]
    c = Campaign.model_validate(campaign_dict)
    space = SearchSpace(tuple(c.parameters))
    X = sobol_points(space, 3, 0, 8)
    Y = -((X - 0.3) ** 2).sum(dim=-1, keepdim=True)
    obs = Observations(X, Y, X[:0], X[:0])
    p = propose(space, obs, ScalarObjective.from_campaign(c), q=1, seed=0, n_initial=4)
    assert p.generator == "gp:qLogNEI"
    assert calls == [torch.Size([c.optimizer.num_restarts, 3])]
