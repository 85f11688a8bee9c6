"""Every file of the malformed-campaign corpus is refused cleanly: exit code 2, a message naming the file and
what is wrong, no traceback, no hang, and nothing created on disk.

Each file in ``tests/corpus/malformed/`` is one mistake, named for it, and starts with ``# expect: <text>``:
text the error message must contain (the field path and what is wrong, or the offending value).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from tests.conftest import REPO

CORPUS = REPO / "tests" / "corpus" / "malformed"
FILES = sorted(CORPUS.glob("*.yaml"))
EXPECT = "# expect: "
# Alias bombs and deep nesting must be refused at once, not after expanding them.
SECONDS_PER_FILE = 10.0
# One per stage a file can fail at: YAML syntax, alias expansion, top-level shape, a field, the expressions,
# a cross-field check, the simulator, the prior files.
RUN_SAMPLE = [
    "yaml_unclosed_quote",
    "yaml_billion_laughs",
    "top_level_list",
    "param_bounds_reversed",
    "budget_is_bool",
    "constraint_dunder_import",
    "objective_unknown_outcome",
    "batch_size_above_budget",
    "simulator_unknown_builtin",
    "prior_missing_file",
]

cli = CliRunner()


def _expected(path: Path) -> str:
    first = path.read_bytes().split(b"\n", 1)[0].decode("ascii")
    assert first.startswith(EXPECT), f"{path.name}: the first line must be '{EXPECT}<text the message contains>'"
    text = first.removeprefix(EXPECT).strip()
    assert text, f"{path.name}: empty expectation"
    return text


def _refused(result, path: Path) -> None:
    output = result.output
    assert "Traceback" not in output
    assert isinstance(result.exception, SystemExit), f"{type(result.exception).__name__}: {result.exception}\n{output}"
    assert result.exit_code == 2, output
    assert str(path) in output, f"the message does not name the file:\n{output}"
    expected = _expected(path)
    assert expected in output, f"expected {expected!r} in:\n{output}"


def test_corpus_is_large_and_annotated():
    assert len(FILES) >= 50
    for path in FILES:
        _expected(path)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_validate_refuses(path):
    start = time.perf_counter()
    result = cli.invoke(app, ["validate", str(path)])
    assert time.perf_counter() - start < SECONDS_PER_FILE
    _refused(result, path)


@pytest.mark.parametrize("name", RUN_SAMPLE)
def test_run_refuses_before_creating_anything(name, tmp_path):
    path = CORPUS / f"{name}.yaml"
    results = tmp_path / "results"
    result = cli.invoke(app, ["run", str(path), "--no-prefect", "-r", str(results)])
    _refused(result, path)
    assert not results.exists(), f"run created {sorted(p.name for p in results.rglob('*'))}"
