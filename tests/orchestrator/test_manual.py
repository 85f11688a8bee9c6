"""Results measured by hand (`orchestrator add`): stored as finished experiments in real SQLite ledgers, used by
the next proposal, counted in the budget; bad input exits 2 with a message and writes nothing."""

from __future__ import annotations

import copy

import pytest
from typer.testing import CliRunner

from orchestrator.campaign import Campaign
from orchestrator.cli import app
from orchestrator.errors import LedgerError, UserInputError
from orchestrator.ledger import Ledger
from orchestrator.loop import CampaignRunner, run_loop
from orchestrator.manual import parse_conditions
from tests.conftest import BASE_CAMPAIGN
from tests.toy_simulators import toy_yield

GOOD = ["--conditions", "temp_c=80,layers=3", "--conditions", "solvent=dmso"]


def _add(path, results, *args):
    return CliRunner().invoke(app, ["add", str(path), *args, "-r", str(results)])


def test_a_manual_result_is_stored_completed_with_the_parameters_types(tmp_path, write_campaign, campaign_dict):
    path = write_campaign(campaign_dict)
    assert not (tmp_path / "r" / "toy" / "ledger.sqlite").exists()
    res = _add(path, tmp_path / "r", *GOOD, "--outcomes", "yield_pct=41.5", "--by", "ana", "--note", "glovebox 2")
    assert res.exit_code == 0, res.output
    assert "experiment 1: completed (yield_pct=41.5), added by hand by ana; 1 of 8 experiments used" in res.output
    campaign = Campaign.model_validate(campaign_dict)
    with Ledger.for_campaign(campaign, tmp_path / "r") as ledger:  # the ledger was created by `add`
        (exp,) = ledger.experiments()
        events = ledger.events(exp.id)
    assert exp.state == "completed" and exp.generator == "manual" and exp.batch == 1
    assert exp.conditions == {"temp_c": 80.0, "layers": 3, "solvent": "dmso"}
    assert type(exp.conditions["temp_c"]) is float and type(exp.conditions["layers"]) is int
    assert exp.outcomes == {"yield_pct": 41.5} and exp.error is None
    assert exp.proposal_info == {"added_by": "ana", "note": "glovebox 2"}
    assert exp.dispatch_key.startswith("toy-00001-") and exp.attempts == 0
    assert exp.started_at and exp.finished_at
    assert [(e["from_state"], e["to_state"]) for e in events] == [(None, "proposed"), ("proposed", "completed")]
    assert events[0]["detail"] == "added by hand by ana (glovebox 2)"
    assert events[1]["detail"] == 'added by hand by ana: {"yield_pct": 41.5}'


def test_observations_include_manual_results_and_failures(tmp_path, write_campaign, campaign_dict):
    path = write_campaign(campaign_dict)
    assert _add(path, tmp_path / "r", *GOOD, "--outcomes", "yield_pct=41.5").exit_code == 0
    res = _add(path, tmp_path / "r", "--conditions", "temp_c=21.5,layers=1,solvent=gbl", "--failed", "film did not form")
    assert res.exit_code == 0, res.output
    assert "experiment 2: failed (failed: film did not form), added by hand by " in res.output
    campaign = Campaign.model_validate(campaign_dict)
    with Ledger.for_campaign(campaign, tmp_path / "r") as ledger:
        failed = ledger.get(2)
        obs = CampaignRunner(campaign, ledger, toy_yield).observations()
    assert failed.state == "failed" and failed.error == "film did not form" and failed.outcomes is None
    assert failed.batch == 2 and failed.generator == "manual"
    # Encoded: temp_c on [0, 1] over [20, 120], layers as itself, solvent as its choice index.
    assert obs.X.tolist() == [[0.6, 3.0, 1.0]] and obs.Y.tolist() == [[41.5]]
    assert obs.X_failed.tolist() == [[0.015, 1.0, 2.0]] and obs.X_pending.shape[0] == 0


def test_manual_results_bring_the_model_phase_forward(tmp_path, write_campaign, campaign_dict):
    campaign_dict["budget"] = {"max_experiments": 6, "batch_size": 1, "initial_experiments": 2}
    path = write_campaign(campaign_dict)
    campaign = Campaign.model_validate(campaign_dict)
    with Ledger(":memory:") as empty:  # the same campaign without manual results: still the Sobol design
        empty.bind(campaign)
        runner = CampaignRunner(campaign, empty, toy_yield)
        obs = runner.observations()
        assert runner.propose(obs, runner.refit(obs), 1)[0].generator == "sobol"
    assert _add(path, tmp_path / "r", *GOOD, "--outcomes", "yield_pct=41.5").exit_code == 0
    assert _add(path, tmp_path / "r", "--conditions", "temp_c=40,layers=1,solvent=dmf", "--outcomes", "yield_pct=9").exit_code == 0
    with Ledger.for_campaign(campaign, tmp_path / "r") as ledger:
        runner = CampaignRunner(campaign, ledger, toy_yield)
        obs = runner.observations()
        assert obs.X.shape[0] == 2 and runner.in_model_phase(obs)
        (proposed,) = runner.propose(obs, runner.refit(obs), 1)
    assert proposed.generator.startswith("gp:") and proposed.proposal_info["n_train"] == 2
    assert proposed.batch == 3


def test_a_manual_experiment_uses_one_of_the_budget(tmp_path, write_campaign, campaign_dict):
    campaign_dict["budget"] = {"max_experiments": 4, "batch_size": 2, "initial_experiments": 4}
    path = write_campaign(campaign_dict)
    assert _add(path, tmp_path / "r", *GOOD, "--outcomes", "yield_pct=41.5").exit_code == 0
    campaign = Campaign.model_validate(campaign_dict)
    with Ledger.for_campaign(campaign, tmp_path / "r") as ledger:
        runner = CampaignRunner(campaign, ledger, toy_yield)
        assert runner.remaining_budget() == 3
        run_loop(runner)
        exps = ledger.experiments()
    assert len(exps) == 4 and [e.generator for e in exps].count("manual") == 1
    assert all(e.state in ("completed", "failed") for e in exps)
    # The budget is used; a result measured by hand is still recorded (it is data), and `add` says so.
    res = _add(path, tmp_path / "r", "--conditions", "temp_c=90,layers=2,solvent=dmf", "--outcomes", "yield_pct=30")
    assert res.exit_code == 0, res.output
    assert "5 of 4 experiments used" in res.output and "raise budget.max_experiments" in res.output
    with Ledger.for_campaign(campaign, tmp_path / "r") as ledger:
        assert CampaignRunner(campaign, ledger, toy_yield).remaining_budget() == 0


def test_add_manual_in_the_ledger_refuses_neither_or_both_and_non_finite(tmp_path):
    with Ledger(tmp_path / "l.sqlite") as ledger:
        with pytest.raises(LedgerError, match="either its outcomes or a failure reason"):
            ledger.add_manual({"x": 1.0}, None, "ana")
        with pytest.raises(LedgerError, match="either its outcomes or a failure reason"):
            ledger.add_manual({"x": 1.0}, {"y": 1.0}, "ana", failed="x")
        with pytest.raises(LedgerError, match="finite"):
            ledger.add_manual({"x": 1.0}, {"y": float("nan")}, "ana")
        assert ledger.experiments() == [] and ledger.events() == []
        exp = ledger.add_manual({"x": 1.0}, failed="cracked")
        assert exp.state == "failed" and exp.proposal_info == {"added_by": None, "note": None}
        assert ledger.events(exp.id)[-1]["detail"] == "added by hand: failed: cracked"


CONSTRAINED = copy.deepcopy(BASE_CAMPAIGN) | {
    "name": "mix",
    "parameters": BASE_CAMPAIGN["parameters"]
    + [
        {"name": "x", "type": "continuous", "low": 0.0, "high": 1.0},
        {"name": "y", "type": "continuous", "low": 0.0, "high": 1.0},
        {"name": "speed", "type": "discrete", "values": [1000, 2000, 3000]},
    ],
    "compositions": [{"name": "blend", "components": ["x", "y"]}],
    "constraints": ["temp_c - 100*x >= 10"],
}
OK_MIX = "temp_c=80,layers=2,solvent=dmf,x=0.25,y=0.75,speed=2000"


def test_constrained_and_discrete_conditions_are_checked():
    campaign = Campaign.model_validate(CONSTRAINED)
    got = parse_conditions([OK_MIX], campaign)
    assert got == {"temp_c": 80.0, "layers": 2, "solvent": "dmf", "x": 0.25, "y": 0.75, "speed": 2000.0}
    assert list(got) == [p.name for p in campaign.parameters]
    for conditions, message in [
        (OK_MIX.replace("y=0.75", "y=0.7"), "constraint 'composition blend: x + y == 1' (x=0.25, y=0.7 give 0.95"),
        (OK_MIX.replace("temp_c=80", "temp_c=30"), "constraint 'temp_c - 100*x >= 10'"),
        (OK_MIX.replace("speed=2000", "speed=2500"), "speed takes only its listed values: 1000, 2000, 3000"),
    ]:
        with pytest.raises(UserInputError) as info:
            parse_conditions([conditions], campaign)
        assert message in str(info.value)


def test_a_choice_may_contain_a_comma(campaign_dict):
    campaign_dict["parameters"][2]["choices"] = ["dmf", "dmf,dmso 1:1", "gbl"]
    campaign = Campaign.model_validate(campaign_dict)
    got = parse_conditions(["solvent=dmf,dmso 1:1,temp_c=50,layers=2"], campaign)
    assert got == {"temp_c": 50.0, "layers": 2, "solvent": "dmf,dmso 1:1"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--conditions", "temp_c=80,layers=3,solvent=dmso,speed=3", "--outcomes", "yield_pct=1"],
         "'speed' is not a parameter; parameters: temp_c, layers, solvent"),
        (["--conditions", "temp_c=80,layers=3", "--outcomes", "yield_pct=1"], "give every parameter; missing solvent"),
        (["--conditions", "temp_c=80,temp_c=81,layers=3,solvent=dmf", "--outcomes", "yield_pct=1"],
         "'temp_c' is given twice"),
        (["--conditions", "temp_c=130,layers=3,solvent=dmf", "--outcomes", "yield_pct=1"],
         "temp_c must lie within [20, 120]; 130 is outside"),
        (["--conditions", "temp_c=80,layers=5,solvent=dmf", "--outcomes", "yield_pct=1"], "layers must lie within [1, 4]"),
        (["--conditions", "temp_c=80,layers=2.5,solvent=dmf", "--outcomes", "yield_pct=1"], "2.5 is not a whole number"),
        (["--conditions", "temp_c=hot,layers=3,solvent=dmf", "--outcomes", "yield_pct=1"], "'hot' is not a number"),
        (["--conditions", "temp_c=nan,layers=3,solvent=dmf", "--outcomes", "yield_pct=1"], "temp_c must be a finite number"),
        (["--conditions", "temp_c=inf,layers=3,solvent=dmf", "--outcomes", "yield_pct=1"], "temp_c must be a finite number"),
        (["--conditions", "temp_c=80,layers=3,solvent=water", "--outcomes", "yield_pct=1"],
         "solvent must be one of its choices: dmf, dmso, gbl"),
        (["--conditions", "temp_c=80,layers,solvent=dmf", "--outcomes", "yield_pct=1"], "write PARAMETER=VALUE"),
        ([*GOOD, "--outcomes", "yeild_pct=3"], "'yeild_pct' is not an outcome; outcomes: yield_pct"),
        ([*GOOD, "--outcomes", "yield_pct=abc"], "--outcomes 'yield_pct=abc': 'abc' is not a number"),
        ([*GOOD, "--outcomes", "yield_pct=-inf"], "yield_pct must be a finite number"),
        ([*GOOD, "--outcomes", "yield_pct=NaN"], "yield_pct must be a finite number"),
        ([*GOOD, "--outcomes", "yield_pct=1", "--failed", "x"], "give either --outcomes OUTCOME=VALUE ... or --failed"),
        (GOOD, "give either --outcomes OUTCOME=VALUE ... or --failed"),
        ([*GOOD, "--failed", "  "], "--failed needs a reason"),
        (["--outcomes", "yield_pct=1"], "Missing option '--conditions'"),
    ],
)
def test_bad_input_exits_2_with_its_message_and_writes_nothing(tmp_path, write_campaign, campaign_dict, args, message):
    path = write_campaign(campaign_dict)
    results = tmp_path / "r"
    assert _add(path, results, *GOOD, "--outcomes", "yield_pct=41.5").exit_code == 0
    with Ledger(results / "toy" / "ledger.sqlite") as ledger:
        before = (ledger.experiments(), ledger.events())
    res = _add(path, results, *args)
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split()) and "Traceback" not in res.output
    with Ledger(results / "toy" / "ledger.sqlite") as ledger:
        assert (ledger.experiments(), ledger.events()) == before, "nothing written"


@pytest.mark.parametrize(
    ("conditions", "message"),
    [
        (OK_MIX.replace("y=0.75", "y=0.5"), "the conditions break the constraint 'composition blend: x + y == 1'"),
        (OK_MIX.replace("temp_c=80", "temp_c=30"), "the conditions break the constraint 'temp_c - 100*x >= 10'"),
        (OK_MIX.replace("speed=2000", "speed=2500"), "speed takes only its listed values"),
    ],
)
def test_a_violated_constraint_exits_2_and_creates_no_ledger(tmp_path, write_campaign, conditions, message):
    path = write_campaign(CONSTRAINED)
    res = _add(path, tmp_path / "r", "--conditions", conditions, "--outcomes", "yield_pct=1")
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split()) and "Traceback" not in res.output
    assert not (tmp_path / "r" / "mix").exists(), "nothing written, not even an empty ledger"
    ok = _add(path, tmp_path / "r", "--conditions", OK_MIX, "--outcomes", "yield_pct=1")
    assert ok.exit_code == 0, ok.output
