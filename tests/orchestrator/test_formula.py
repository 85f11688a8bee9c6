"""Formula strings: amounts per species, organic abbreviations before elements, errors with positions."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.errors import UserInputError
from orchestrator.formula import ELEMENTS, ORGANIC_CATIONS, FormulaError, parse_formula, site_fractions


@pytest.mark.parametrize(
    "text, expected",
    [
        ("CsPb(I0.8Br0.2)3", {"Cs": 1, "Pb": 1, "I": 2.4, "Br": 0.6}),
        ("Cs0.17FA0.83Pb(I0.6Br0.4)3", {"Cs": 0.17, "FA": 0.83, "Pb": 1, "I": 1.8, "Br": 1.2}),
        ("MAPbI3", {"MA": 1, "Pb": 1, "I": 3}),
        ("(FA0.8MA0.2)Pb(I0.9Br0.1)3", {"FA": 0.8, "MA": 0.2, "Pb": 1, "I": 2.7, "Br": 0.3}),
        ("Cs2[Pb(I0.5Br0.5)3]2", {"Cs": 2, "Pb": 2, "I": 3, "Br": 3}),  # nested, mixed brackets
        ("{(MA)2}0.5PbI3", {"MA": 1, "Pb": 1, "I": 3}),
        ("  FA 0.5 Cs .5 Pb I3 ", {"FA": 0.5, "Cs": 0.5, "Pb": 1, "I": 3}),  # whitespace, ".5"
        ("PEA2PbI4", {"PEA": 2, "Pb": 1, "I": 4}),  # PEA, not P + EA
        ("DMAPbI3", {"DMA": 1, "Pb": 1, "I": 3}),
        ("GAPbI3", {"GA": 1, "Pb": 1, "I": 3}),  # guanidinium, not gallium
        ("BaTiO3", {"Ba": 1, "Ti": 1, "O": 3}),  # barium, not butylammonium
        ("BAs", {"B": 1, "As": 1}),  # boron arsenide: BA is not taken before a lowercase letter
        ("CO2", {"C": 1, "O": 2}),
        ("CoO", {"Co": 1, "O": 1}),
        ("CH3NH3PbI3", {"C": 1, "H": 6, "N": 1, "Pb": 1, "I": 3}),  # a species written twice adds up
    ],
)
def test_parses_amounts(text, expected):
    amounts = parse_formula(text)
    assert amounts == pytest.approx({k: float(v) for k, v in expected.items()})
    assert list(amounts) == list(expected)  # order of first appearance


def test_fa_is_formamidinium_not_fluorine():
    assert parse_formula("FAPbF3") == {"FA": 1.0, "Pb": 1.0, "F": 3.0}


def test_extra_species_are_matched_before_elements():
    assert "BDA" not in ORGANIC_CATIONS
    with pytest.raises(FormulaError):
        parse_formula("BDAPbI4")  # B, then an unknown "DA"
    assert parse_formula("BDAPbI4", species=["BDA"]) == {"BDA": 1.0, "Pb": 1.0, "I": 4.0}
    with pytest.raises(FormulaError, match="extra species 'bda'"):
        parse_formula("PbI2", species=["bda"])


@pytest.mark.parametrize(
    "text, position, fragment",
    [
        ("CsPb(I0.8Br0.2", 4, "unclosed '(' at position 4; add ')'"),
        ("CsPb)I3", 4, "unmatched ')' at position 4"),
        ("Cs(PbI3]", 7, "']' at position 7 does not close '(' opened at position 2; close it with ')'"),
        ("3CsPbI3", 0, "count '3' at position 0 follows nothing to count"),
        ("CsPbI3 3", 7, "count '3' at position 7 follows another count"),
        ("CsXqI3", 2, "unexpected 'Xq' at position 2; expected an element symbol"),
        ("Cspb", 2, "unexpected 'pb' at position 2"),
        ("Cs()Pb", 2, "empty group () at position 2"),
        ("CsPbI3#", 6, "unexpected '#' at position 6"),
        ("CsPbI3.", 6, "unexpected '.' at position 6"),
    ],
)
def test_errors_name_formula_position_and_expectation(text, position, fragment):
    with pytest.raises(FormulaError) as info:
        parse_formula(text)
    assert str(info.value).startswith(repr(text) + ": ")
    assert fragment in str(info.value)
    assert info.value.position == position
    assert isinstance(info.value, UserInputError)


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_formula(text):
    with pytest.raises(FormulaError, match="empty formula"):
        parse_formula(text)


def test_site_fractions():
    amounts = parse_formula("Cs0.17FA0.83Pb(I0.6Br0.4)3")
    fractions = site_fractions(
        amounts, {"cs_frac": ("Cs", ["Cs", "FA", "MA"]), "br_frac": ("Br", ["I", "Br"]), "ma": ("MA", ["MA", "FA"])}
    )
    assert fractions == {"cs_frac": pytest.approx(0.17), "br_frac": pytest.approx(0.4), "ma": 0.0}


def test_site_fractions_zero_group_names_formula_and_group():
    with pytest.raises(FormulaError, match=r"'MAPbI3': sn_frac: none of \[Sn, Ge\] is in the formula"):
        site_fractions(parse_formula("MAPbI3"), {"sn_frac": ("Sn", ["Sn", "Ge"])}, formula="MAPbI3")
    with pytest.raises(FormulaError, match="'Sn' is not in its group"):
        site_fractions({"Sn": 1.0}, {"x": ("Sn", ["Ge", "Pb"])})


_SPECIES = sorted(ELEMENTS | set(ORGANIC_CATIONS))
_amount = st.integers(min_value=1, max_value=999).map(lambda k: k / 100)


@st.composite
def _formula(draw, depth: int = 0):
    """(text, amounts) of a random formula: species with two-decimal counts, groups nested up to 2 deep."""
    parts, amounts = [], {}
    for _ in range(draw(st.integers(1, 3))):
        if depth < 2 and draw(st.booleans()):
            inner_text, inner = draw(_formula(depth + 1))
            count = draw(_amount)
            opener, closer = draw(st.sampled_from(["()", "[]", "{}"]))
            parts.append(f"{opener}{inner_text}{closer}{count:.2f}")
            for s, a in inner.items():
                amounts[s] = amounts.get(s, 0.0) + a * count
        else:
            species, count = draw(st.sampled_from(_SPECIES)), draw(_amount)
            parts.append(f"{species}{count:.2f}")
            amounts[species] = amounts.get(species, 0.0) + count
    return draw(st.sampled_from(["", " "])).join(parts), amounts


@settings(max_examples=150, deadline=None)
@given(_formula())
def test_round_trip_format_then_parse(case):
    text, amounts = case
    assert parse_formula(text) == pytest.approx(amounts, rel=1e-9)
