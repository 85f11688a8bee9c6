"""Chemical formulas of mixed compositions: ``Cs0.17FA0.83Pb(I0.6Br0.4)3`` → amount of each species.

Prior data from DFT often names each calculated material by its formula rather than by the campaign's
composition fractions; :func:`parse_formula` reads the amounts and :func:`site_fractions` turns them into the
fractions a campaign searches over (Cs share of the A site, Br share of the halide site …).

Species are matched at each position in this order:

1. the caller's extra ``species`` and the organic-cation abbreviations in :data:`ORGANIC_CATIONS`, longest
   first, so ``FA`` is formamidinium rather than F followed by an unknown ``A``, and ``PEA`` wins over ``P``;
2. element symbols, two letters before one (``Cs`` is caesium, not C followed by ``s``).

Matching is case-sensitive, as chemistry writes it: ``BA`` is butylammonium, ``Ba`` barium, ``CO`` carbon and
oxygen, ``Co`` cobalt. An abbreviation or extra species is not taken where a lowercase letter follows it, because
no symbol starts with a lowercase letter: ``BAs`` (boron arsenide) is B + As, not butylammonium + ``s``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from orchestrator.errors import UserInputError

__all__ = ["ELEMENTS", "ORGANIC_CATIONS", "FormulaError", "parse_formula", "site_fractions"]

ELEMENTS = frozenset(
    """H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr Rb Sr Y Zr
    Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt
    Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm Md No Lr Rf Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc
    Lv Ts Og""".split()
)

# Abbreviations used in the perovskite literature for organic A-site (and spacer) cations.
ORGANIC_CATIONS: dict[str, str] = {
    "FA": "formamidinium",
    "MA": "methylammonium",
    "GA": "guanidinium",
    "EA": "ethylammonium",
    "PA": "propylammonium",
    "BA": "butylammonium",
    "DMA": "dimethylammonium",
    "TMA": "tetramethylammonium",
    "PEA": "phenethylammonium",
}

_OPENERS = {"(": ")", "[": "]", "{": "}"}
_CLOSERS = {v: k for k, v in _OPENERS.items()}
# A count: 3, 0.83, .5 (no sign, no exponent: formulas never need them, and "e" would be ambiguous).
_NUMBER = re.compile(r"\d+(?:\.\d+)?|\.\d+")
_SPECIES_NAME = re.compile(r"[A-Z][A-Za-z]*")
_DECIMALS = 12


class FormulaError(UserInputError):
    """A formula string cannot be read.

    Attributes:
        formula: the text as given.
        position: 0-based index of the offending character (None for problems of the whole formula).
    """

    def __init__(self, formula: str, message: str, position: int | None = None):
        self.formula = formula
        self.position = position
        super().__init__(f"{formula!r}: {message}")


def parse_formula(text: str, species: Iterable[str] = ()) -> dict[str, float]:
    """Amount of each species in a chemical formula.

    Groups in ``()``, ``[]`` or ``{}`` nest and take a count after the closing bracket; counts may be decimal;
    whitespace between tokens is ignored. A species written twice adds up.

    Args:
        text: e.g. ``"CsPb(I0.8Br0.2)3"`` or ``"(FA0.8MA0.2)Pb(I0.9Br0.1)3"``.
        species: extra species names to recognise (e.g. ``["BDA"]``), matched with the organic abbreviations
            before element symbols. Each starts with an uppercase letter and holds letters only.

    Returns:
        species → amount, in order of first appearance, e.g. ``{"Cs": 1.0, "Pb": 1.0, "I": 2.4, "Br": 0.6}``.

    Raises:
        FormulaError: naming the formula, the 0-based position and what was expected there.
    """
    if not isinstance(text, str):
        raise FormulaError(str(text), f"a formula must be text, got {type(text).__name__}")
    extra = list(species)
    for name in extra:
        if not isinstance(name, str) or not _SPECIES_NAME.fullmatch(name):
            raise FormulaError(
                text, f"extra species {name!r} must be letters starting with an uppercase one (e.g. 'BDA')"
            )
    # Longest first so that a longer abbreviation is never cut short by a shorter one it starts with.
    named = sorted(set(extra) | set(ORGANIC_CATIONS), key=lambda s: (-len(s), s))
    return _Parser(text, named).parse()


class _Parser:
    """Single left-to-right pass with an explicit stack of open brackets (no recursion limit to hit)."""

    def __init__(self, text: str, named: list[str]):
        self.text = text
        self.named = named

    def error(self, problem: str, position: int | None, fix: str, rest: str = "") -> FormulaError:
        where = f" at position {position}" if position is not None else ""
        return FormulaError(self.text, f"{problem}{where}{rest}; {fix}", position)

    def parse(self) -> dict[str, float]:
        text = self.text
        # Each frame: (amounts so far, opening bracket, its position); the bottom frame is the whole formula.
        stack: list[tuple[dict[str, float], str, int]] = [({}, "", -1)]
        # The last species or closed group, waiting to learn whether a count follows it.
        pending: dict[str, float] | None = None
        after_count = False
        i = 0
        while i < len(text):
            char = text[i]
            if char.isspace():
                i += 1
                continue
            number = _NUMBER.match(text, i)
            if number:
                if pending is None:
                    raise self.error(
                        f"count {number.group()!r}",
                        i,
                        "a count goes right after the species or closing bracket it multiplies (e.g. I3, (I0.8Br0.2)3)",
                        rest=f" follows {'another count' if after_count else 'nothing to count'}",
                    )
                _add(stack[-1][0], pending, float(number.group()))
                pending, after_count = None, True
                i = number.end()
                continue
            after_count = False
            if pending is not None:
                _add(stack[-1][0], pending, 1.0)
                pending = None
            if char in _OPENERS:
                stack.append(({}, char, i))
                i += 1
            elif char in _CLOSERS:
                if len(stack) == 1:
                    raise self.error(f"unmatched {char!r}", i, f"remove it or add the opening {_CLOSERS[char]!r}")
                amounts, opener, opened_at = stack.pop()
                if opener != _CLOSERS[char]:
                    raise self.error(
                        repr(char),
                        i,
                        f"close it with {_OPENERS[opener]!r}",
                        rest=f" does not close {opener!r} opened at position {opened_at}",
                    )
                if not amounts:
                    raise self.error(f"empty group {opener}{char}", opened_at, "put species in it or remove it")
                pending = amounts
                i += 1
            else:
                name = self.species_at(i)
                pending = {name: 1.0}
                i += len(name)
        if pending is not None:
            _add(stack[-1][0], pending, 1.0)
        if len(stack) > 1:
            _, opener, opened_at = stack[-1]
            raise self.error(f"unclosed {opener!r}", opened_at, f"add {_OPENERS[opener]!r} after its species")
        # Counts multiply as binary floats (3 * 0.1 = 0.30000000000000004); 12 decimals drop that noise and keep
        # every digit a formula is written with.
        amounts = {name: round(amount, _DECIMALS) for name, amount in stack[0][0].items()}
        if not amounts:
            raise self.error("empty formula", None, "write one such as 'CsPbI3' or 'FA0.8Cs0.2Pb(I0.7Br0.3)3'")
        return amounts

    def species_at(self, i: int) -> str:
        text = self.text
        for name in self.named:
            end = i + len(name)
            if text.startswith(name, i) and not (end < len(text) and text[end].islower()):
                return name
        two, one = text[i : i + 2], text[i]
        if len(two) == 2 and two in ELEMENTS:
            return two
        if one in ELEMENTS:
            return one
        # Show one symbol-shaped word ("Xq" in "CsXqI3"), not the whole run of letters.
        word = re.match(r"[A-Z][a-z]*|[a-z]+", text[i:])
        shown = word.group() if word else one
        raise self.error(
            f"unexpected {shown!r}",
            i,
            f"expected an element symbol (e.g. Pb), a cation abbreviation ({', '.join(ORGANIC_CATIONS)}), "
            "a count or a bracket",
        )


def _add(into: dict[str, float], amounts: Mapping[str, float], factor: float) -> None:
    for name, amount in amounts.items():
        into[name] = into.get(name, 0.0) + amount * factor


def site_fractions(
    amounts: Mapping[str, float],
    groups: Mapping[str, tuple[str, Sequence[str]]],
    formula: str | None = None,
) -> dict[str, float]:
    """Fraction of one species within its group of species, for each wanted name.

    Args:
        amounts: species → amount, as :func:`parse_formula` returns.
        groups: wanted name → (species, group), e.g. ``{"cs_frac": ("Cs", ["Cs", "FA", "MA"])}`` gives
            n(Cs) / (n(Cs) + n(FA) + n(MA)). Species of the group missing from ``amounts`` count as 0.
        formula: the formula text, for messages.

    Returns:
        wanted name → fraction in [0, 1].

    Raises:
        FormulaError: a group's species are all absent (zero total), or ``species`` is not in its group.
    """
    label = formula if formula is not None else _describe(amounts)
    out: dict[str, float] = {}
    for name, (species, group) in groups.items():
        if species not in group:
            raise FormulaError(label, f"{name}: {species!r} is not in its group [{', '.join(group)}]; add it there")
        total = sum(float(amounts.get(s, 0.0)) for s in dict.fromkeys(group))
        if not total > 0:
            raise FormulaError(
                label,
                f"{name}: none of [{', '.join(group)}] is in the formula, so the {species} fraction is undefined; "
                "check the formula or the group",
            )
        out[name] = round(float(amounts.get(species, 0.0)) / total, _DECIMALS)
    return out


def _describe(amounts: Mapping[str, float]) -> str:
    return "".join(f"{s}{a:g}" for s, a in amounts.items())
