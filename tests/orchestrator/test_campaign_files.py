"""Every example campaign validates, builds its simulator, and a short run of each works."""

from __future__ import annotations

import pytest

from orchestrator.backends import open_backend
from orchestrator.campaign import load_campaign
from orchestrator.ledger import Ledger
from orchestrator.loop import CampaignRunner, run_loop
from orchestrator.simulation import build_simulator
from simulators.datasets import load_dataset
from tests.conftest import REPO

FILES = sorted((REPO / "campaigns").glob("*.yaml"))


def test_there_are_example_campaigns():
    assert {
        "perovskite_film.yaml",
        "perovskite_film_hardware.yaml",
        "suzuki_coupling.yaml",
        "perovskite_bandgap_lookup.yaml",
        "opv_blend_simplex.yaml",
    } <= {f.name for f in FILES}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_example_campaign_runs_a_few_experiments(path, tmp_path):
    campaign = load_campaign(path)
    # One model-based proposal after the design is enough to exercise the path; batches of 1 keep it quick.
    budget = campaign.budget.model_copy(update={"max_experiments": campaign.initial_experiments + 1, "batch_size": 1})
    # A campaign over several stations runs here on one simulated bench (test_stations.py runs it on stations).
    campaign = campaign.model_copy(update={"budget": budget, "stations": None})
    # Campaigns on instruments run through the serial path against their byte-level simulators.
    with Ledger.for_campaign(campaign, tmp_path) as ledger, open_backend(campaign, tmp_path, simulate=True) as backend:
        run_loop(CampaignRunner(campaign, ledger, backend))
        exps = ledger.experiments()
    assert len(exps) == campaign.budget.max_experiments
    assert exps[-1].generator.startswith("gp:")
    assert any(e.state == "completed" for e in exps)
    for e in exps:
        if e.state == "completed":
            assert set(e.outcomes) == {o.name for o in campaign.outcomes}
        for comp in campaign.compositions:
            assert abs(sum(e.conditions[n] for n in comp.components) - comp.total) <= 1e-9


def test_lookup_campaign_never_repeats_a_combination(tmp_path):
    campaign = load_campaign(REPO / "campaigns" / "perovskite_bandgap_lookup.yaml")
    with Ledger.for_campaign(campaign, tmp_path) as ledger:
        run_loop(CampaignRunner(campaign, ledger, build_simulator(campaign)))
        combos = [tuple(e.conditions.values()) for e in ledger.experiments()]
        bo_best = min(abs(e.outcomes["hse_gap"] - 1.4) for e in ledger.experiments(["completed"]))
    assert len(combos) == len(set(combos)) == 20
    recorded = load_dataset("perovskites").y
    assert bo_best == pytest.approx(min(abs(recorded - 1.4))), "the closest of the 192 gaps is found within 20 tries"
