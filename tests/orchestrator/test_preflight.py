"""Pre-flight: the campaign run many times against its simulator, summarized with confidence intervals."""

from __future__ import annotations

import math

from typer.testing import CliRunner

from orchestrator.campaign import Campaign
from orchestrator.cli import app
from orchestrator.preflight import bootstrap_median_ci, run_preflight
from orchestrator.simulation import build_simulator

FAST = {"num_restarts": 2, "raw_samples": 64, "mc_samples": 64}


def test_runs_differ_by_seed_and_curves_are_best_so_far(campaign_dict):
    campaign_dict["budget"] = {"max_experiments": 6, "batch_size": 2, "initial_experiments": 4}
    campaign_dict["optimizer"] = FAST
    campaign = Campaign.model_validate(campaign_dict)
    result = run_preflight(campaign, 3, build_simulator)
    assert len(result.curves) == 3 and all(len(c) == 6 for c in result.curves)
    for curve in result.curves:
        finite = [v for v in curve if math.isfinite(v)]
        assert finite == sorted(finite), "a best-so-far curve never goes down"
    assert len({tuple(c) for c in result.curves}) == 3, "each run has its own seed"
    best = max(c[-1] for c in result.curves)
    assert result.target <= best and not result.target_given
    assert any(t is not None for t in result.to_target), "the best run reaches 95 % of the best"
    easy = run_preflight(campaign, 3, build_simulator, target=-1e9)
    assert easy.to_target == [next(k + 1 for k, v in enumerate(c) if math.isfinite(v)) for c in easy.curves]
    assert run_preflight(campaign, 2, build_simulator, target=1e9).to_target == [None, None]


def test_bootstrap_interval_brackets_the_median():
    import numpy as np

    values = np.arange(1.0, 21.0)
    lo, hi = bootstrap_median_ci(values)
    assert lo <= float(np.median(values)) <= hi and hi - lo < 10


def test_preflight_command_prints_the_summary(write_campaign, campaign_dict):
    campaign_dict["budget"] = {"max_experiments": 5, "initial_experiments": 4}
    campaign_dict["optimizer"] = FAST
    result = CliRunner().invoke(app, ["preflight", str(write_campaign(campaign_dict)), "--runs", "2", "--target", "30"])
    assert result.exit_code == 0, result.output
    assert "best score at the budget, median" in result.output
    assert "target score" in result.output and "30 (given)" in result.output
    assert "runs reaching the target" in result.output
