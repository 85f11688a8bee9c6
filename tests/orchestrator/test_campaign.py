"""Campaign files: good files load, bad ones give one line per problem with field path and line."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from orchestrator.campaign import Campaign, campaign_json_schema, load_campaign
from orchestrator.errors import CampaignFileError
from tests.conftest import REPO


def test_demo_campaign_loads():
    c = load_campaign(REPO / "campaigns" / "perovskite_film.yaml")
    assert c.name == "perovskite_film"
    assert [p.type for p in c.parameters].count("categorical") == 1
    assert {o.outcome for o in c.objectives} <= {o.name for o in c.outcomes}
    assert c.initial_experiments == 9


def test_round_trip_json(campaign_dict):
    c = Campaign.model_validate(campaign_dict)
    assert Campaign.model_validate_json(c.model_dump_json()) == c


def test_default_initial_design_is_four_or_five_points(campaign_dict):
    campaign_dict["budget"] = {"max_experiments": 50}
    assert Campaign.model_validate(campaign_dict).initial_experiments == 4  # 3 parameters
    campaign_dict["parameters"].append({"name": "extra", "type": "continuous", "low": 0, "high": 1})
    assert Campaign.model_validate(campaign_dict).initial_experiments == 5
    for k in range(4):
        campaign_dict["parameters"].append({"name": f"more{k}", "type": "continuous", "low": 0, "high": 1})
    assert Campaign.model_validate(campaign_dict).initial_experiments == 5  # 8 parameters
    campaign_dict["budget"] = {"max_experiments": 3}
    assert Campaign.model_validate(campaign_dict).initial_experiments == 3


def test_default_initial_design_is_whole_batches(campaign_dict):
    for name in ("e1", "e2", "e3"):  # 6 parameters: 5 design points at batch size 1
        campaign_dict["parameters"].append({"name": name, "type": "continuous", "low": 0, "high": 1})
    sizes = {}
    for q in (1, 2, 3, 4, 8):
        campaign_dict["budget"] = {"max_experiments": 50, "batch_size": q}
        sizes[q] = Campaign.model_validate(campaign_dict).initial_experiments
    assert sizes == {1: 5, 2: 4, 3: 3, 4: 4, 8: 8}
    campaign_dict["budget"] = {"max_experiments": 50, "batch_size": 4, "initial_experiments": 7}
    assert Campaign.model_validate(campaign_dict).initial_experiments == 7  # as written, never rounded


def test_space_fingerprint_ignores_budget_but_not_bounds(campaign_dict):
    a = Campaign.model_validate(campaign_dict)
    campaign_dict["budget"]["max_experiments"] = 99
    b = Campaign.model_validate(campaign_dict)
    campaign_dict["parameters"][0]["high"] = 130.0
    c = Campaign.model_validate(campaign_dict)
    assert a.space_fingerprint() == b.space_fingerprint() != c.space_fingerprint()


def _problems(write_campaign, content) -> list[str]:
    with pytest.raises(CampaignFileError) as info:
        load_campaign(write_campaign(content))
    return info.value.problems


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda d: d["parameters"][0].update(low=200.0), "parameters[0]: low (200.0) must be below high (120.0)"),
        (lambda d: d["parameters"][0].update(colour="red"), "parameters[0].colour: unknown key"),
        (lambda d: d["parameters"][1].update(type="float"), "unknown parameter type 'float'"),
        (lambda d: d["parameters"][2].update(choices=["a", "a"]), "choices must be unique"),
        (lambda d: d["objectives"][0].update(outcome="nope"), "objectives[0].outcome: 'nope' is not an outcome"),
        (lambda d: d["objectives"][0].update(goal="target"), "needs both 'target' and 'tolerance'"),
        (lambda d: d["budget"].update(batch_size=0), "budget.batch_size: Input should be greater than or equal to 1"),
        (lambda d: d["budget"].update(initial_experiments=20), "budget.initial_experiments: 20 exceeds max_experiments"),
        (lambda d: d["parameters"].append(dict(d["parameters"][0])), "parameters[3].name: 'temp_c' is already used"),
        (lambda d: d.pop("simulator"), "no backend"),
        (lambda d: d.update(parameters=[]), "parameters: List should have at least 1 item"),
        (lambda d: d["parameters"][0].update(high=1e300), "not a usable bound"),
        (lambda d: d["simulator"].update(dataset="suzuki"), "give exactly one of 'model'"),
        (lambda d: d["simulator"].update(model="bad module:x y"), "is not of the form 'package.module:function'"),
    ],
)
def test_bad_fields_are_named(campaign_dict, write_campaign, mutate, expected):
    mutate(campaign_dict)
    problems = _problems(write_campaign, campaign_dict)
    assert any(expected in p for p in problems), problems
    assert all(p.startswith("line ") for p in problems), problems


def test_problem_names_the_yaml_line(write_campaign):
    text = (REPO / "campaigns" / "perovskite_film.yaml").read_text().replace("max_experiments: 30", "max_experiments: -1")
    line = next(i for i, l in enumerate(text.splitlines(), 1) if "max_experiments" in l)
    problems = _problems(write_campaign, text)
    assert problems == [f"line {line}: budget.max_experiments: Input should be greater than or equal to 1"]


def test_several_problems_are_all_reported(campaign_dict, write_campaign):
    campaign_dict["parameters"][0]["low"] = 500.0
    campaign_dict["budget"]["colour"] = "red"
    campaign_dict["seed"] = "abc"
    assert len(_problems(write_campaign, campaign_dict)) == 3


@pytest.mark.parametrize(
    "text, expected",
    [
        ("name: [unclosed\n", "YAML syntax"),
        ("name: !!python/object/apply:os.system ['echo pwned']\n", "no !! tags"),
        ("name: a\nname: b\n", "line 2: name: key appears twice"),
        ("", "the file is empty"),
        ("- just\n- a list\n", "is a list"),
    ],
)
def test_unreadable_yaml(write_campaign, text, expected):
    problems = _problems(write_campaign, text)
    assert any(expected in p for p in problems), problems


def test_missing_file(tmp_path):
    with pytest.raises(CampaignFileError, match="file not found"):
        load_campaign(tmp_path / "nope.yaml")


def test_model_rejects_unknown_top_level_key(campaign_dict):
    campaign_dict["budgett"] = {}
    with pytest.raises(ValidationError):
        Campaign.model_validate(campaign_dict)


def test_json_schema_describes_parameters():
    schema = campaign_json_schema()
    text = json.dumps(schema)
    assert {"name", "parameters", "outcomes", "objectives", "budget"} <= set(schema["required"])
    assert "categorical" in text and "log_scale" in text
