"""Shared fixtures: small campaigns written to real files."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
# Rich wraps console output at the terminal width; a wide one keeps asserted lines whole.
os.environ.setdefault("COLUMNS", "250")

BASE_CAMPAIGN: dict[str, Any] = {
    "name": "toy",
    "description": "a small campaign for tests",
    "parameters": [
        {"name": "temp_c", "type": "continuous", "low": 20.0, "high": 120.0, "unit": "degC"},
        {"name": "layers", "type": "integer", "low": 1, "high": 4},
        {"name": "solvent", "type": "categorical", "choices": ["dmf", "dmso", "gbl"]},
    ],
    "outcomes": [{"name": "yield_pct", "unit": "%"}],
    "objectives": [{"outcome": "yield_pct", "goal": "maximize"}],
    "budget": {"max_experiments": 8, "batch_size": 2, "initial_experiments": 4},
    "seed": 3,
    "simulator": {"model": "tests.toy_simulators:toy_yield"},
}


@pytest.fixture
def campaign_dict() -> dict[str, Any]:
    return copy.deepcopy(BASE_CAMPAIGN)


@pytest.fixture
def write_campaign(tmp_path: Path):
    """Writes a campaign dict (or raw text) to a YAML file and returns its path."""

    def write(content: dict[str, Any] | str, name: str = "campaign.yaml") -> Path:
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False))
        return path

    return write
