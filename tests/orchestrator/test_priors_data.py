"""Prior data files: the `priors:` entry model, its checks against a campaign, and the loader's messages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from orchestrator.campaign import Outcome, load_campaign
from orchestrator.errors import UserInputError
from orchestrator.parameters import CategoricalParameter, ContinuousParameter, DiscreteParameter, IntegerParameter
from orchestrator.priors import (
    MAX_ROW_PROBLEMS,
    PriorFileError,
    PriorSource,
    campaign_prior_problems,
    check_prior_against,
    load_prior,
    prior_problems,
    unit_factor,
)
from tests.conftest import REPO

PARAMETERS = [
    ContinuousParameter(name="cs_frac", low=0.0, high=0.4),
    ContinuousParameter(name="br_frac", low=0.0, high=0.6),
    IntegerParameter(type="integer", name="layers", low=1, high=4),
    DiscreteParameter(type="discrete", name="temp_c", values=[100, 120, 140]),
    CategoricalParameter(type="categorical", name="cation", choices=["Ge", "Sn", "Pb"]),
]
OUTCOMES = [Outcome(name="band_gap_ev", unit="eV"), Outcome(name="pl_intensity")]


def frac(species: str, *of: str) -> dict:
    """One formula.fractions entry."""
    return {"species": species, "of": list(of)}


FILM_FRACTIONS = {"cs_frac": frac("Cs", "Cs", "FA"), "br_frac": frac("Br", "I", "Br")}


def source(**changes) -> PriorSource:
    entry = {
        "name": "pbe_gaps",
        "file": "gaps.csv",
        "outcome": "band_gap_ev",
        "property": "gap_ev",
        "columns": {"cs_frac": "cs", "cation": "metal"},
    }
    entry.update(changes)
    return PriorSource.model_validate(entry)


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def load(tmp_path: Path, src: PriorSource | None = None):
    return load_prior(src or source(), PARAMETERS, OUTCOMES, tmp_path)


def load_error(tmp_path: Path, src: PriorSource | None = None) -> PriorFileError:
    with pytest.raises(PriorFileError) as info:
        load(tmp_path, src)
    assert isinstance(info.value, UserInputError)
    return info.value


# --- the model -------------------------------------------------------------------------------------------------


def test_model_round_trips_and_is_strict():
    s = source(formula={"column": "f", "fractions": {"br_frac": {"species": "Br", "of": ["I", "Br"]}}}, unit="meV")
    assert PriorSource.model_validate_json(s.model_dump_json()) == s
    assert s.method == "auto" and s.mapped_parameters() == ["cs_frac", "cation", "br_frac"]
    with pytest.raises(ValidationError, match="extra"):
        source(colour="red")
    with pytest.raises(ValidationError):
        source(method="sometimes")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"file": "gaps.xlsx"}, "'gaps.xlsx' has an unknown format; use a .csv, .parquet or .json file"),
        ({"columns": {}}, "map at least one parameter to the file"),
        ({"name": "2bad"}, "String should match pattern"),
        (
            {"formula": {"column": "f", "fractions": {"cs_frac": {"species": "Cs", "of": ["Cs", "FA"]}}}},
            "'cs_frac' mapped twice, in columns and in formula.fractions; keep one",
        ),
        (
            {"formula": {"column": "f", "fractions": {"br_frac": {"species": "Cl", "of": ["I", "Br"]}}}},
            "species 'Cl' must be one of 'of' (I, Br)",
        ),
        (
            {"formula": {"column": "f", "fractions": {"br_frac": {"species": "Br", "of": ["Br", "Io"]}}}},
            "'Io' is neither an element symbol nor a cation abbreviation",
        ),
    ],
)
def test_model_rejects(changes, message):
    with pytest.raises(ValidationError) as info:
        source(**changes)
    assert message in str(info.value)


def test_extra_formula_species_are_known_species():
    s = source(formula={"column": "f", "species": ["BDA"], "fractions": {"br_frac": frac("BDA", "BDA", "MA")}})
    assert s.formula.species == ["BDA"]


# --- checks against the campaign -------------------------------------------------------------------------------


def test_check_against_campaign_names_each_field():
    s = source(
        outcome="gap",
        columns={"cs": "cs"},
        formula={"column": "f", "fractions": {"cation": frac("Sn", "Sn", "Pb"), "x": frac("I", "I", "Br")}},
    )
    lines = check_prior_against(s, PARAMETERS, OUTCOMES, index=2)
    assert lines[0] == "priors[2].outcome: 'gap' is not an outcome; choose one of: band_gap_ev, pl_intensity"
    assert lines[1].startswith("priors[2].columns.cs: 'cs' is not a parameter; parameters are cs_frac, br_frac, layers")
    assert "priors[2].formula.fractions.cation: 'cation' is categorical" in lines[2]
    assert lines[3].startswith("priors[2].formula.fractions.x: 'x' is not a parameter")
    assert len(lines) == 4
    assert check_prior_against(source(), PARAMETERS, OUTCOMES) == []


def test_units_must_match_or_convert():
    assert unit_factor("meV", "eV") == pytest.approx(1e-3)
    assert unit_factor("eV", "meV") == pytest.approx(1e3)
    assert unit_factor("nm", "eV") is None and unit_factor("a.u.", "a.u.") == 1.0
    assert prior_problems(source(unit="meV"), PARAMETERS, OUTCOMES) == []
    [(loc, msg)] = prior_problems(source(unit="nm"), PARAMETERS, OUTCOMES)
    assert loc == ("unit",)
    assert msg == "'nm' does not match the unit of outcome 'band_gap_ev' ('eV'); give the calculated values in eV or meV"
    [(loc, msg)] = prior_problems(source(unit="a.u.", outcome="pl_intensity"), PARAMETERS, OUTCOMES)
    assert "outcome 'pl_intensity' has no unit, so 'a.u.' cannot be checked" in msg


def test_campaign_prior_problems_want_unique_names_and_prefix_paths():
    problems = campaign_prior_problems([source(), source(columns={"nope": "x"})], PARAMETERS, OUTCOMES)
    assert problems[0] == (("priors", 1, "name"), "'pbe_gaps' is already used by priors[0]; names must be unique")
    assert problems[1][0] == ("priors", 1, "columns", "nope")


# --- loading good files ----------------------------------------------------------------------------------------

CSV = "cs,metal,gap_ev,note\n0.1,Pb,1.6,a\n0.4,Sn, 1.3 ,b\n0,Ge,1.9e0,c\n"
EXPECTED_ROWS = [
    {"cs_frac": 0.1, "cation": "Pb"},
    {"cs_frac": 0.4, "cation": "Sn"},
    {"cs_frac": 0.0, "cation": "Ge"},
]


def test_loads_csv(tmp_path):
    write_csv(tmp_path / "gaps.csv", CSV)
    data = load(tmp_path)
    assert data.parameters == ("cs_frac", "cation")  # campaign order
    assert data.rows == EXPECTED_ROWS
    np.testing.assert_allclose(data.y, [1.6, 1.3, 1.9])
    assert (data.name, data.outcome, data.method) == ("pbe_gaps", "band_gap_ev", "auto")
    assert data.file == tmp_path / "gaps.csv"
    assert not data.y.flags.writeable


@pytest.mark.parametrize("layout", ["records", "columns"])
def test_loads_json(tmp_path, layout):
    records = [
        {"cs": 0.1, "metal": "Pb", "gap_ev": 1.6},
        {"cs": 0.4, "metal": "Sn", "gap_ev": 1.3},
        {"cs": 0, "metal": "Ge", "gap_ev": 1.9},
    ]
    payload = records if layout == "records" else {k: [r[k] for r in records] for k in records[0]}
    (tmp_path / "gaps.json").write_text(json.dumps(payload))
    data = load(tmp_path, source(file="gaps.json"))
    assert data.rows == EXPECTED_ROWS
    np.testing.assert_allclose(data.y, [1.6, 1.3, 1.9])


def test_loads_parquet(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow", reason="Parquet needs pyarrow")
    frame = pd.DataFrame({"cs": [0.1, 0.4, 0.0], "metal": ["Pb", "Sn", "Ge"], "gap_ev": [1.6, 1.3, 1.9]})
    frame.to_parquet(tmp_path / "gaps.parquet")
    data = load(tmp_path, source(file="gaps.parquet"))
    assert data.rows == EXPECTED_ROWS
    np.testing.assert_allclose(data.y, [1.6, 1.3, 1.9])
    frame.loc[1, "gap_ev"] = None
    frame.to_parquet(tmp_path / "gaps.parquet")
    assert "row 2: gap_ev is empty" in str(load_error(tmp_path, source(file="gaps.parquet")))


def test_parquet_without_pyarrow_says_what_to_install(tmp_path, monkeypatch):
    pd = pytest.importorskip("pandas")

    def no_engine(*args, **kwargs):
        raise ImportError("Unable to find a usable engine")

    monkeypatch.setattr(pd, "read_parquet", no_engine)
    (tmp_path / "gaps.parquet").write_bytes(b"PAR1")
    assert "pip install pyarrow" in str(load_error(tmp_path, source(file="gaps.parquet")))


def test_converts_mev_and_accepts_integer_and_discrete_values_in_range(tmp_path):
    write_csv(tmp_path / "gaps.csv", "cs,n,t,gap_mev\n0.2,2.5,130,1600\n0.4000000000001,4,100,1550\n")
    s = source(property="gap_mev", unit="meV", columns={"cs_frac": "cs", "layers": "n", "temp_c": "t"})
    data = load(tmp_path, s)
    np.testing.assert_allclose(data.y, [1.6, 1.55])
    assert data.rows[0] == {"cs_frac": 0.2, "layers": 2.5, "temp_c": 130.0}  # no snapping to the grid
    assert data.rows[1]["cs_frac"] == 0.4  # round-off above the bound is clipped onto it


def test_formula_column_gives_fractions(tmp_path):
    write_csv(
        tmp_path / "gaps.csv",
        'formula,gap_ev\nCs0.2FA0.8Pb(I0.7Br0.3)3,1.1\n"(FA0.9Cs0.1) Pb (I0.95 Br0.05)3",1.0\n',
    )
    s = source(columns={}, formula={"column": "formula", "fractions": FILM_FRACTIONS})
    data = load(tmp_path, s)
    assert data.parameters == ("cs_frac", "br_frac")
    assert data.rows == [{"cs_frac": 0.2, "br_frac": 0.3}, {"cs_frac": 0.1, "br_frac": 0.05}]


def test_committed_dft_file_loads_the_same_by_columns_and_by_formula():
    campaign = load_campaign(REPO / "campaigns" / "perovskite_film.yaml")
    base = {"name": "pbe", "file": "data/perovskite_film_dft_helpful.csv", "outcome": "band_gap_ev"}
    base.update(property="gap_dft_ev", unit="eV")
    by_columns = PriorSource.model_validate({**base, "columns": {"cs_frac": "cs_frac", "br_frac": "br_frac"}})
    by_formula = PriorSource.model_validate({**base, "formula": {"column": "formula", "fractions": FILM_FRACTIONS}})
    a = load_prior(by_columns, campaign.parameters, campaign.outcomes, REPO / "campaigns")
    b = load_prior(by_formula, campaign.parameters, campaign.outcomes, REPO / "campaigns")
    assert len(a) == 60 and a.rows == b.rows and np.array_equal(a.y, b.y)


def test_committed_hse06_file_loads_against_the_lookup_campaign():
    campaign = load_campaign(REPO / "campaigns" / "perovskite_bandgap_lookup.yaml")
    s = PriorSource(
        name="hse06",
        file="data/perovskites_hse06.csv",
        outcome="hse_gap",
        property="hse_gap_ev",
        unit="eV",
        columns={"organic": "organic", "cation": "cation", "anion": "anion"},
    )
    data = load_prior(s, campaign.parameters, campaign.outcomes, REPO / "campaigns")
    assert len(data) == 192 and data.parameters == ("organic", "cation", "anion")
    assert data.rows[0] == {"organic": "ethylammonium", "cation": "Ge", "anion": "F"} and data.y[0] == 5.3704


# --- errors: each names the file and the row --------------------------------------------------------------------


def test_missing_file(tmp_path):
    err = load_error(tmp_path)
    assert str(err).startswith(f"{tmp_path / 'gaps.csv'} (prior 'pbe_gaps'): not found")
    assert "relative to the campaign file's folder" in str(err)


def test_config_problems_are_raised_before_reading(tmp_path):
    err = load_error(tmp_path, source(outcome="nope"))
    assert "outcome: 'nope' is not an outcome" in str(err)


@pytest.mark.parametrize(
    "name, content, fragment",
    [
        ("gaps.csv", "", "the file is empty"),
        ("gaps.csv", "cs,metal,gap_ev\n", "no data rows"),
        ("gaps.csv", "cs,metal,gap_ev\n0.1,Pb\n", "row 1: has 2 cells, the header has 3"),
        ("gaps.csv", "cs,cs,gap_ev\n0.1,Pb,1\n", "column(s) 'cs' appear more than once"),
        ("gaps.csv", b"\xff\xfe\x00bad", "cannot read the file"),
        ("gaps.json", "{not json", "not valid JSON: Expecting property name enclosed in double quotes at line 1 column"),
        ("gaps.json", '{"cs": 1}', "unexpected JSON layout"),
        ("gaps.json", '[{"cs": 1}, 3]', "row 2 is not an object"),
        ("gaps.json", '{"cs": [1, 2], "gap_ev": [1]}', "columns have different lengths (cs: 2, gap_ev: 1)"),
        ("gaps.json", "[]", "no data rows"),
        ("gaps.parquet", b"not parquet at all", "not a readable Parquet file"),
    ],
)
def test_unreadable_or_empty_files(tmp_path, name, content, fragment):
    path = tmp_path / name
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    err = load_error(tmp_path, source(file=name))
    assert str(err).startswith(str(path))
    assert fragment in str(err)


def test_missing_columns_list_what_the_file_has(tmp_path):
    write_csv(tmp_path / "gaps.csv", "cs_frac,metal,gap\n0.1,Pb,1.6\n")
    err = load_error(tmp_path)
    assert str(err).endswith(
        "missing column(s) 'gap_ev' (did you mean 'gap'?), 'cs' (did you mean 'cs_frac'?); "
        "the file has: cs_frac, metal, gap"
    )


def test_row_problems_are_collected_with_row_numbers(tmp_path):
    write_csv(
        tmp_path / "gaps.csv",
        "cs,metal,gap_ev\n"
        "0.1,Pb,1.6\n"  # row 1 fine
        "0.1,Pb,abc\n"  # row 2
        "0.1,Pb,nan\n"  # row 3
        "0.1,Pb,inf\n"  # row 4
        "0.5,Pb,1.6\n"  # row 5
        ",Pb,1.6\n"  # row 6
        "0.1,Xe,1.6\n",  # row 7
    )
    err = load_error(tmp_path)
    assert err.problems == [
        "row 2: gap_ev = 'abc' is not a number",
        "row 3: gap_ev is NaN (an empty cell?)",
        "row 4: gap_ev = 'inf' is not finite",
        "row 5: cs = 0.5 is outside the range of 'cs_frac' [0, 0.4]; remove the row or widen the parameter's bounds",
        "row 6: cs is empty",
        "row 7: metal 'Xe' is not a choice of 'cation' (Ge, Sn, Pb)",
    ]
    message = str(err)
    assert message.startswith(f"{tmp_path / 'gaps.csv'} (prior 'pbe_gaps'): 6 problems\n  - row 2:")
    assert message.endswith("Fix or remove these rows (row 1 is the first row after the header).")


def test_json_values_of_the_wrong_type(tmp_path):
    records = [
        {"cs": True, "metal": "Pb", "gap_ev": 1.0},
        {"cs": 0.1, "metal": 7, "gap_ev": None},
        {"cs": 0.1, "gap_ev": "1.2"},
    ]
    (tmp_path / "gaps.json").write_text(json.dumps(records))
    assert load_error(tmp_path, source(file="gaps.json")).problems == [
        "row 1: cs = True is not a number",
        "row 2: gap_ev is empty",
        "row 2: metal 7 is not a choice of 'cation' (Ge, Sn, Pb)",
        "row 3: metal is empty",
    ]


def test_at_most_ten_row_problems_are_listed(tmp_path):
    write_csv(tmp_path / "gaps.csv", "cs,metal,gap_ev\n" + "".join(f"0.9,Pb,{i}\n" for i in range(25)))
    err = load_error(tmp_path)
    assert len(err.problems) == MAX_ROW_PROBLEMS + 1
    assert err.problems[0].startswith("row 1: cs = 0.9 is outside") and err.problems[9].startswith("row 10:")
    assert err.problems[-1] == "... and 15 more problem(s)"


def test_formula_problems_name_the_row(tmp_path):
    write_csv(
        tmp_path / "gaps.csv",
        "formula,gap_ev\nCs0.2FA0.8PbI3,1.0\nCsPb(I0.8Br0.2,1.0\nMAPbI3,1.0\nCs0.6FA0.4PbI3,1.0\n,1.0\n",
    )
    s = source(columns={}, formula={"column": "formula", "fractions": {"cs_frac": frac("Cs", "Cs", "FA")}})
    assert load_error(tmp_path, s).problems == [
        "row 2: formula 'CsPb(I0.8Br0.2': unclosed '(' at position 4; add ')' after its species",
        "row 3: formula 'MAPbI3': cs_frac: none of [Cs, FA] is in the formula, so the Cs fraction is undefined; "
        "check the formula or the group",
        "row 4: cs_frac = 0.6 from 'Cs0.6FA0.4PbI3' is outside the range of 'cs_frac' [0, 0.4]; remove the row or widen the parameter's bounds",
        "row 5: formula is empty",
    ]


def test_nan_from_json_is_not_a_value(tmp_path):
    (tmp_path / "gaps.json").write_text('[{"cs": NaN, "metal": "Pb", "gap_ev": Infinity}]')
    problems = load_error(tmp_path, source(file="gaps.json")).problems
    assert problems == ["row 1: gap_ev = inf is not finite", "row 1: cs is NaN (an empty cell?)"]
