"""Real search spaces: compositions on a simplex, linear constraints, discrete values; every proposal legal."""

from __future__ import annotations

import copy

import pytest
import torch

from orchestrator.campaign import Campaign, load_campaign
from orchestrator.constraints import parse_constraint
from orchestrator.errors import CampaignFileError
from orchestrator.objectives import ScalarObjective
from orchestrator.proposer import Observations, propose
from orchestrator.space import DTYPE, SearchSpace

SPACE = {
    "name": "alloy",
    "parameters": [
        {"name": "cs", "type": "continuous", "low": 0.0, "high": 0.3},
        {"name": "fa", "type": "continuous", "low": 0.2, "high": 1.0},
        {"name": "ma", "type": "continuous", "low": 0.0, "high": 0.5},
        {"name": "br", "type": "continuous", "low": 0.0, "high": 0.6},
        {"name": "anneal_temp_c", "type": "discrete", "low": 100, "high": 150, "step": 5},
        {"name": "solvent", "type": "categorical", "choices": ["dmf", "dmso"]},
    ],
    "compositions": [{"name": "a_site", "components": ["cs", "fa", "ma"]}],
    "constraints": ["0.5*cs + br <= 0.45"],
    "outcomes": [{"name": "pl"}],
    "objectives": [{"outcome": "pl", "goal": "maximize"}],
    "budget": {"max_experiments": 20, "batch_size": 2, "initial_experiments": 6},
    "simulator": {"model": "perovskite_film"},
}


def truth(c):
    return -((c["cs"] - 0.15) ** 2) - (c["br"] - 0.3) ** 2 - ((c["anneal_temp_c"] - 135) / 100) ** 2 + (c["solvent"] == "dmso") * 0.05


@pytest.fixture
def campaign():
    return Campaign.model_validate(copy.deepcopy(SPACE))


def check_legal(space: SearchSpace, conditions: dict):
    a = conditions["cs"] + conditions["fa"] + conditions["ma"]
    assert abs(a - 1.0) <= 1e-9, f"off the simplex by {a - 1}"
    assert 0.5 * conditions["cs"] + conditions["br"] <= 0.45 + 1e-7
    for p in space.parameters:
        v = conditions[p.name]
        if p.type == "categorical":
            assert v in p.choices
        elif p.type == "discrete":
            assert v in p.values
        else:
            assert p.low <= v <= p.high


def test_initial_design_is_feasible_and_resumable(campaign):
    space = SearchSpace.from_campaign(campaign)
    X = space.initial_design(seed=3, start=0, count=12)
    for c in space.decode(X):
        check_legal(space, c)
    assert torch.allclose(space.initial_design(seed=3, start=4, count=8), X[4:])
    assert len({c["anneal_temp_c"] for c in space.decode(X)}) > 3


def test_model_based_proposals_stay_on_the_simplex_and_within_constraints(campaign):
    space = SearchSpace.from_campaign(campaign)
    conds = space.decode(space.initial_design(seed=1, start=0, count=8))
    X = space.encode(conds)
    Y = torch.tensor([[truth(c)] for c in conds], dtype=DTYPE)
    obs = Observations(X, Y, X[:0], X[:0])
    for step in range(1):
        p = propose(space, obs, ScalarObjective.from_campaign(campaign), q=2, seed=step, n_initial=6)
        assert p.generator.startswith("gp:")
        new = space.decode(p.X)
        for c in new:
            check_legal(space, c)
        X2 = space.encode(new)
        obs = Observations(torch.cat([obs.X, X2]), torch.cat([obs.Y, torch.tensor([[truth(c)] for c in new], dtype=DTYPE)]), X[:0], X[:0])


def test_linear_constraint_parsing():
    params = Campaign.model_validate(copy.deepcopy(SPACE)).parameters
    c = parse_constraint("0.2*cs + br <= 0.6", params)
    assert c.coefficients == pytest.approx({"cs": 0.2, "br": 1.0}) and c.op == "<=" and c.rhs == pytest.approx(0.6)
    c = parse_constraint("2 * (cs - br) >= -0.1 + ma", params)
    assert c.coefficients == pytest.approx({"cs": 2.0, "br": -2.0, "ma": -1.0}) and c.rhs == pytest.approx(-0.1)
    for bad, msg in [
        ("cs * br <= 0.1", "not linear"),
        ("cs + zz <= 1", "'zz', which is not a parameter"),
        ("cs <= br <= 1", "exactly one"),
        ("cs + anneal_temp_c <= 1", "continuous parameter"),
        ("__import__('os') <= 1", "not allowed"),
    ]:
        with pytest.raises(ValueError, match=msg):
            parse_constraint(bad, params)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["constraints"].append("cs + br >= 5"), "no point within the parameters' bounds satisfies"),
        (lambda d: d["compositions"][0]["components"].append("nope"), "'nope' is not a parameter"),
        (lambda d: d["compositions"].append({"name": "b", "components": ["cs", "br"]}), "already part of composition a_site"),
        (lambda d: d["compositions"][0]["components"].append("anneal_temp_c"), "must be continuous"),
        (lambda d: d["constraints"].append("cs ** 2 <= 0.1"), "not linear"),
        (lambda d: d["parameters"][4].update(step=7), "whole number"),
        (lambda d: d["parameters"][5].update(descriptors={"dmf": {"bp": 153}}), "missing: dmso"),
    ],
)
def test_bad_spaces_are_refused_at_load_naming_the_field(write_campaign, change, message):
    data = copy.deepcopy(SPACE)
    change(data)
    with pytest.raises(CampaignFileError) as info:
        load_campaign(write_campaign(data))
    assert any(message in p for p in info.value.problems), info.value.problems


def test_discrete_values_round_trip():
    space = SearchSpace.from_campaign(Campaign.model_validate(copy.deepcopy(SPACE)))
    conds = [{"cs": 0.1, "fa": 0.6, "ma": 0.3, "br": 0.2, "anneal_temp_c": 135.0, "solvent": "dmso"}]
    assert space.decode(space.encode(conds)) == conds
    from orchestrator.errors import UserInputError

    with pytest.raises(UserInputError, match="not one of its values"):
        space.encode([{**conds[0], "anneal_temp_c": 137.0}])


def test_categorical_descriptors_let_the_model_generalize_to_an_untried_choice():
    from orchestrator.surrogates import fit_surrogate

    polarity = {"hexane": 0.0, "toluene": 0.1, "ethanol": 0.65, "water": 1.0}
    base = {
        "name": "solvents",
        "parameters": [
            {"name": "t", "type": "continuous", "low": 0.0, "high": 1.0},
            {"name": "solvent", "type": "categorical", "choices": list(polarity)},
        ],
        "outcomes": [{"name": "y"}],
        "objectives": [{"outcome": "y", "goal": "maximize"}],
        "budget": {"max_experiments": 10},
        "simulator": {"model": "perovskite_film"},
    }
    described = copy.deepcopy(base)
    described["parameters"][1]["descriptors"] = {k: {"polarity": v} for k, v in polarity.items()}
    tried = ["hexane", "ethanol", "water"]  # toluene (polarity 0.1, like hexane) is never tried
    conds = [{"t": t, "solvent": s} for s in tried for t in (0.1, 0.4, 0.7, 1.0)]
    y = torch.tensor([[5.0 * (1 - polarity[c["solvent"]]) + c["t"]] for c in conds], dtype=DTYPE)
    query = [{"t": 0.5, "solvent": "toluene"}]
    predictions = {}
    for label, data in (("plain", base), ("described", described)):
        space = SearchSpace.from_campaign(Campaign.model_validate(data))
        X = space.encode(conds)
        model = fit_surrogate(space, Observations(X, y, X[:0], X[:0])).model
        predictions[label] = float(model.posterior(space.encode(query)).mean.squeeze())
    truth_value = 5.0 * (1 - 0.1) + 0.5
    assert abs(predictions["described"] - truth_value) < 1.0, predictions
    assert abs(predictions["described"] - truth_value) < abs(predictions["plain"] - truth_value) / 2, predictions


def test_categoricals_reach_the_kernel_as_one_hot_or_descriptor_columns_never_as_indices():
    from orchestrator.surrogates import fit_surrogate, model_inputs

    data = copy.deepcopy(SPACE)
    data["parameters"].append({"name": "antisolvent", "type": "categorical", "choices": ["cb", "tol", "none"]})
    data["parameters"][5]["descriptors"] = {"dmf": {"bp_c": 153, "dielectric": 36.7}, "dmso": {"bp_c": 189, "dielectric": 46.7}}
    space = SearchSpace.from_campaign(Campaign.model_validate(data))
    conds = space.decode(space.initial_design(seed=1, start=0, count=9))
    X = space.encode(conds)
    transform, smooth = model_inputs(space)
    features = transform(X)
    d = space.dim  # 7: five ordinal columns, then solvent (index 5) and antisolvent (index 6)
    assert features.shape == (9, d + 2 + 3)
    assert smooth == [0, 1, 2, 3, 4] + list(range(d, d + 5))  # neither index column
    for row, c in zip(features, conds):
        dielectric = {"dmf": 0.0, "dmso": 1.0}[c["solvent"]]  # each descriptor scaled to [0, 1]
        assert row[d + 1].item() == dielectric
        assert row[d + 2 :].tolist() == [float(c["antisolvent"] == k) for k in ("cb", "tol", "none")]
    y = torch.tensor([[truth(c)] for c in conds], dtype=DTYPE)
    model = fit_surrogate(space, Observations(X, y, X[:0], X[:0])).model.models[0]
    assert model.covar_module.active_dims.tolist() == smooth


def test_a_space_with_descriptors_proposes_legal_choices():
    data = copy.deepcopy(SPACE)
    data["parameters"][5]["descriptors"] = {"dmf": {"bp_c": 153, "dielectric": 36.7}, "dmso": {"bp_c": 189, "dielectric": 46.7}}
    campaign = Campaign.model_validate(data)
    space = SearchSpace.from_campaign(campaign)
    conds = space.decode(space.initial_design(seed=2, start=0, count=8))
    X = space.encode(conds)
    Y = torch.tensor([[truth(c)] for c in conds], dtype=DTYPE)
    p = propose(space, Observations(X, Y, X[:0], X[:0]), ScalarObjective.from_campaign(campaign), q=1, seed=0, n_initial=6)
    assert p.generator.startswith("gp:")
    check_legal(space, space.decode(p.X)[0])
