"""Encoding conditions for the models and decoding proposals back."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.campaign import Campaign
from orchestrator.errors import UserInputError
from orchestrator.space import SearchSpace
from tests.conftest import BASE_CAMPAIGN


def _space() -> SearchSpace:
    d = copy.deepcopy(BASE_CAMPAIGN)
    d["parameters"].append({"name": "time_min", "type": "continuous", "low": 1.0, "high": 100.0, "log_scale": True})
    return SearchSpace(tuple(Campaign.model_validate(d).parameters))


@pytest.fixture
def space() -> SearchSpace:
    return _space()


def test_bounds_and_kinds(space):
    assert space.bounds().tolist() == [[0.0, 1.0, 0.0, 0.0], [1.0, 4.0, 2.0, 1.0]]
    assert (space.cont_dims, space.int_dims, space.cat_dims) == ([0, 3], [1], [2])


def test_log_scale_puts_geometric_midpoint_in_the_middle(space):
    X = space.encode([{"temp_c": 70.0, "layers": 2, "solvent": "gbl", "time_min": 10.0}])
    assert X[0].tolist() == pytest.approx([0.5, 2.0, 2.0, 0.5])


@settings(max_examples=60, deadline=None)
@given(
    t=st.floats(20.0, 120.0),
    n=st.integers(1, 4),
    s=st.sampled_from(["dmf", "dmso", "gbl"]),
    m=st.floats(1.0, 100.0),
)
def test_round_trip(t, n, s, m):
    space = _space()
    cond = {"temp_c": t, "layers": n, "solvent": s, "time_min": m}
    back = space.decode(space.encode([cond]))[0]
    assert back["layers"] == n and back["solvent"] == s
    assert back["temp_c"] == pytest.approx(t, rel=1e-8, abs=1e-8)
    assert back["time_min"] == pytest.approx(m, rel=1e-8)


def test_decode_snaps_and_clamps(space):
    X = torch.tensor([[1.7, 3.6, 1.4, -0.2]], dtype=torch.double)
    assert space.decode(X) == [{"temp_c": 120.0, "layers": 4, "solvent": "dmso", "time_min": 1.0}]


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"temp_c": 500.0}, "outside"),
        ({"layers": 2.5}, "not a whole number"),
        ({"solvent": "water"}, "not one of"),
        ({"temp_c": float("nan")}, "not a finite number"),
        ({"temp_c": "hot"}, "not a finite number"),
    ],
)
def test_encode_rejects_bad_values(space, bad, message):
    cond = {"temp_c": 50.0, "layers": 2, "solvent": "dmf", "time_min": 5.0, **bad}
    with pytest.raises(UserInputError, match=message):
        space.encode([cond])


def test_unit_cube_maps_evenly_onto_levels(space):
    U = torch.linspace(0, 1 - 1e-9, 12, dtype=torch.double).unsqueeze(-1).repeat(1, 4)
    X = space.from_unit_cube(U)
    assert sorted(set(X[:, 1].tolist())) == [1.0, 2.0, 3.0, 4.0]
    assert [X[:, 2].tolist().count(v) for v in (0.0, 1.0, 2.0)] == [4, 4, 4]
