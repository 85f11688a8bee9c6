"""Properties of the campaign loader: whatever a file holds, a Campaign or a UserInputError.

The loader is fed arbitrary bytes, YAML-ish text built from YAML's own syntax, arbitrary nested data, and
near misses of real campaigns (the example files, a lab with instruments, a custom line-protocol rig): a
value replaced by something odd, a key dropped or added, an entry repeated. Every outcome must be a loaded
:class:`Campaign` or a :class:`UserInputError` (in practice :class:`CampaignFileError`) whose problems are
readable lines; a TypeError, OverflowError, re.error … escaping from a validator would crash the CLI with a
traceback instead of telling the user which line to fix.
"""

from __future__ import annotations

import copy
import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.campaign import Campaign, load_campaign
from orchestrator.errors import CampaignFileError, UserInputError
from tests.conftest import BASE_CAMPAIGN, REPO

# Reproducible in CI: a fixed seed per test, no example database.
PROPS = settings(
    max_examples=120, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)

# A rig on the generic line-protocol driver: its options carry templates and regexes from the file.
LINE_RIG: dict[str, Any] = {
    "name": "rig_lab",
    "parameters": [
        {"name": "speed", "type": "continuous", "low": 0.0, "high": 80.0},
        {"name": "mode", "type": "discrete", "low": 1, "high": 3, "step": 1},
    ],
    "outcomes": [{"name": "mass_g", "unit": "g"}],
    "objectives": [{"outcome": "mass_g", "goal": "target", "target": 2.0, "tolerance": 0.1}],
    "budget": {"max_experiments": 4, "batch_size": 1},
    "instruments": {
        "rig": {
            "driver": "line",
            "port": "/dev/serial/by-id/usb-rig-if00",
            "serial": {"baudrate": 115200},
            "options": {
                "ready_banner": "READY .*",
                "commands": {
                    "set_speed": {
                        "send": "SET {value:.1f}",
                        "reply": r"OK (?P<value>-?\d+(\.\d+)?)",
                        "error": "ERR (?P<code>.+)",
                        "idempotent": True,
                        "args": {"value": {"min": 0, "max": 80}},
                    },
                    "set_mode": {"send": "MODE {m:.0f}", "reply": "OK", "args": {"m": {"choices": [1, 2, 3]}}},
                    "weigh": {"send": "W?", "reply": r"W (?P<mass>\d+\.\d+)", "idempotent": True, "timeout_s": 2},
                },
                "safe_state": ["weigh", {"command": "set_speed", "args": {"value": 0}}],
            },
        }
    },
    "procedure": {
        "steps": [{"rig.set_speed": "{speed}"}, {"rig.set_mode": {"m": "{mode}"}}, {"wait": "1 s"}, {"rig.weigh": {}, "as": "w"}]
    },
    "analysis": [{"reading": "w", "function": "values", "outcomes": {"mass": "mass_g"}}],
    "simulator": {"model": "tests.toy_simulators:toy_yield"},
}
EXAMPLES = sorted((REPO / "campaigns").glob("*.yaml"))
BASES: list[dict[str, Any]] = [BASE_CAMPAIGN, LINE_RIG] + [yaml.safe_load(p.read_text()) for p in EXAMPLES]


def _keys(node: Any) -> set[str]:
    if isinstance(node, dict):
        return {str(k) for k in node} | {k for v in node.values() for k in _keys(v)}
    if isinstance(node, list):
        return {k for v in node for k in _keys(v)}
    return set()


KNOWN_KEYS = sorted(set().union(*map(_keys, BASES)) | {"step", "values", "log_scale", "descriptors", "compositions", "constraints"})


def _load(content: bytes) -> Campaign | None:
    """Loads ``content`` from a file; None when it was refused with a UserInputError (checked for readability)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "campaign.yaml"
        path.write_bytes(content)
        try:
            campaign = load_campaign(path)
        except UserInputError as exc:
            assert str(exc).strip()
            if isinstance(exc, CampaignFileError):
                assert exc.problems and all(isinstance(p, str) and p.strip() for p in exc.problems), exc.problems
            return None
    assert isinstance(campaign, Campaign)
    return campaign


def _dump(data: Any) -> bytes:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).encode("utf-8", "surrogatepass")


# --- odd values: what a slip of the keyboard, a wrong type or a hostile file puts in a field -------------

ODD_SCALARS = [
    None, True, False, 0, 1, -1, 2, 0.5, -0.0, 1e-320, 2**31, 2**63, 10**30, 10**400, 1e308, -1e308,
    math.inf, -math.inf, math.nan,
    "", " ", "x", "0", "1e999", "-inf", ".nan", "yes", "é", "\x00", "\t", "line\nbreak", "x" * 300,
    "2024-13-45", "12:30:00", "0x1F", "~", "null", "*alias", "&anchor", "!!python/object:os.system",
    "5 min", "-5 s", "1e400 h", "0 s", "{anneal_temp_c}", "{round(1/0)}", "{__import__('os')}", "{x.__class__}",
    "{", "}", "{0}", "{value:9999d}", "{value!r}", "a{4294967296}", "(((", "(?P<1>x)", "[", "\\",
    "cs_frac + br_frac <= 0.6", "cs_frac * br_frac <= 0.1", "1e308 * 1e308 * cs_frac <= 1", "cs_frac ** 99999 <= 1",
    "2 ** 2 ** 2 ** 2 ** 2 * cs_frac <= 1", "(" * 200 + "cs_frac" + ")" * 200 + " <= 1", "cs_frac <= 1 <= 2",
    "tests.toy_simulators:missing", "no_such_module_xyz:f", "a..b:f", "tests.:f", ":", "usb:zz:yy", "usb:0403:6001:SN:extra",
    "socket://localhost:1", "/dev/null", "ika_namur", "new_era", "grbl", "line", "line_spectrometer", "scpi_smu",
    "maximize", "minimize", "target", "continuous", "integer", "discrete", "categorical", "pareto", "weighted",
]
ODD_CONTAINERS = [[], {}, [None], [1, 2], [0, 1, 1], ["a", "a"], [[0, 1]], {"a": 1}, {"min": 0, "max": 1}, {"choices": []},
                  {"choices": [1, 1]}, [1e308, -1e308], [0, 1e-300]]
ODD = st.sampled_from(ODD_SCALARS + ODD_CONTAINERS).map(copy.deepcopy)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12), st.sampled_from(KNOWN_KEYS)
)
VALUES = st.one_of(
    ODD,
    SCALARS,
    st.recursive(
        SCALARS,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KNOWN_KEYS), inner, max_size=3),
        max_leaves=6,
    ),
)


# Regexes and str.format templates, as the line-protocol driver's options hold them.
PATTERN_TOKENS = ["(", ")", "a", "{", "}", "{0}", "{value}", "{value:.1f}", ":", "!r", "4294967296", "99", ",", "[", "]", "?",
                  "*", "+", "\\", "|", "(?P<", ">", "(?P=", "\\d", ".", "^", "$", " ", "\n", "{4294967296}", "{2,1}",
                  "{1,99999999999}", "(" * 300, ")" * 300, "(?:" * 300]
PATTERNS = st.lists(st.sampled_from(PATTERN_TOKENS), min_size=1, max_size=12).map("".join)
ODD_TEXT = st.sampled_from([v for v in ODD_SCALARS if isinstance(v, str)]) | PATTERNS | st.text(max_size=8)


def _slots(node: Any, path: tuple = ()) -> list[tuple]:
    """Every (container path, key) in the document, the top level's keys included."""
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append((path, k))
            out += _slots(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.append((path, i))
            out += _slots(v, path + (i,))
    return out


def _at(doc: Any, path: tuple) -> Any:
    for part in path:
        doc = doc[part]
    return doc


def _nudge(value: Any, draw: Any) -> Any:
    """A value of the same kind, changed the way a typo changes it."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return draw(st.sampled_from([-value, value * 10**6, value + 0.5, value - 1, 0, value * 1e300, str(value)]))
    if isinstance(value, str):
        return draw(st.sampled_from([value[:-1], value + value, value.upper(), value + " ", value.replace("_", "-"), [value]]))
    if isinstance(value, list):
        return value[::-1] + value[:1]
    return {str(k) + "x": v for k, v in value.items()}


@st.composite
def near_miss(draw: Any, bases: list[dict[str, Any]] = BASES) -> Any:
    """A real campaign with one to three things wrong with it."""
    doc = copy.deepcopy(draw(st.sampled_from(bases)))
    for _ in range(draw(st.integers(1, 3))):
        slots = _slots(doc)
        op = draw(st.sampled_from(["replace", "nudge", "drop", "add", "repeat", "copy", "retext", "retext"]))
        texts = [(p, k) for p, k in slots if isinstance(_at(doc, p)[k], str)]
        path, key = draw(st.sampled_from(texts if op == "retext" and texts else slots))
        parent = _at(doc, path)
        if op == "retext":  # a string field (a name, a template, a regex, a port) holding other text
            parent[key] = draw(ODD_TEXT)
        elif op == "replace":
            parent[key] = draw(VALUES)
        elif op == "nudge":
            parent[key] = _nudge(parent[key], draw)
        elif op == "drop":
            del parent[key]
        elif op == "add" and isinstance(parent, dict):
            parent[draw(st.sampled_from(KNOWN_KEYS))] = draw(VALUES)
        elif op == "repeat" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[key]))
        elif op == "copy":  # a value from elsewhere in the file (a name where a number goes …)
            other_path, other_key = draw(st.sampled_from(slots))
            parent[key] = copy.deepcopy(_at(doc, other_path)[other_key])
    return doc


# --- YAML-ish text ----------------------------------------------------------------------------------------

YAML_TOKENS = [
    "\n", "\n  ", "\n    ", "  ", ": ", ":", "- ", "-", "[", "]", "{", "}", ", ", "? ", "&a ", "*a", "<<: *a", "!!str ", "!!int ",
    "!!float ", "!!binary ", "!!timestamp ", "!!python/name:os.system ", "!custom ", "%YAML 1.1\n", "---\n", "...\n", "|\n  ",
    ">-\n  ", "'", '"', "\\", "#", "\t", "name", "parameters", "type", "low", "high", "budget", "max_experiments", "outcomes",
    "objectives", "simulator", "model", "instruments", "0", "1", "-1", "1e999", "0x", "0o8", "0b2", "2024-02-30", "12:60:60",
    ".nan", ".inf", "~", "null", "true", "é", "\x00", "\ufeff", "\x85", "\u2028",
]
YAML_TEXT = st.lists(st.sampled_from(YAML_TOKENS) | st.text(max_size=4), max_size=40).map("".join)
# Whole lines, each a key and a value the safe loader builds in its own way (or refuses to).
YAML_SCALARS = [
    "x", "2024-02-30", "2024-99-99 25:61:61", "!!int 0x", "!!float abc", "!!binary ===", "!!timestamp 2024-99-99",
    "!!set {a, b}", "!!omap [a: 1]", "!!pairs [a: 1]", "!!python/tuple [1]", "*undefined", "&a [*a]", "&b {k: *b}", "&c x",
    "*c", "[*c, *c]", "1e999", "9" * 400, "0x" + "F" * 300, "-.inf", ".NaN", "1_000", "0o17", "+12e3", "[1, [2, [3]]]",
    "{a: 1, a: 2}", "|\n  text", "'quoted''s'", '"\\x00\\uD800"', "", "null", "~", "yes", "off",
]
YAML_LINES = st.lists(
    st.tuples(
        st.sampled_from(["", "", "  ", "    ", "  - ", "- "]),
        st.sampled_from(KNOWN_KEYS + ["<<", "? [a]", "1", "null", "'x y'"]),
        st.sampled_from([": ", ":", " : "]),
        st.sampled_from(YAML_SCALARS),
    ).map(lambda t: "".join(t)),
    min_size=1,
    max_size=12,
).map("\n".join)


# --- the properties ---------------------------------------------------------------------------------------


@PROPS
@given(st.binary(max_size=200) | (YAML_TEXT | YAML_LINES).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_arbitrary_bytes_and_yaml_ish_text_load_or_raise_a_user_error(content):
    _load(content)


@PROPS
@given(
    st.dictionaries(st.sampled_from(KNOWN_KEYS) | SCALARS, VALUES, max_size=8)
    | st.fixed_dictionaries({k: VALUES for k in ("name", "parameters", "outcomes", "objectives", "budget", "simulator")})
    | VALUES
)
def test_arbitrary_nested_data_loads_or_raises_a_user_error(data):
    _load(_dump(data))


@settings(PROPS, max_examples=200)
@given(near_miss())
def test_near_miss_campaigns_load_or_raise_a_user_error(doc):
    campaign = _load(_dump(doc))
    if campaign is not None:  # what loads, round-trips through its own JSON form (the file's folder aside)
        assert Campaign.model_validate_json(campaign.model_dump_json()).model_dump() == campaign.model_dump()


@pytest.mark.filterwarnings("ignore:Possible nested set:FutureWarning")  # re's note on a pattern like "[[": harmless
@PROPS
@given(st.data())
def test_line_rig_near_misses_load_or_raise_a_user_error(data):
    """The rig's commands are templates and regexes straight from the file, compiled when it loads."""
    doc = copy.deepcopy(LINE_RIG)
    options = doc["instruments"]["rig"]["options"]
    texts = [(p, k) for p, k in _slots(options) if isinstance(_at(options, p)[k], str)]
    for _ in range(data.draw(st.integers(1, 2), label="edits")):
        path, key = data.draw(st.sampled_from(texts), label="field")
        _at(options, path)[key] = data.draw(PATTERNS, label="text")
    _load(_dump(data.draw(near_miss([doc]), label="campaign") if data.draw(st.booleans(), label="more") else doc))


def test_every_base_campaign_loads():
    """The near misses start from files that load, so each property example is one step from valid."""
    for base in BASES:
        assert _load(_dump(base)) is not None
