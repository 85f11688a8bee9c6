"""Simulators over the recorded Olympus datasets: loading, GP emulation, lookup, best values."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from orchestrator.errors import ExperimentFailed, SimulatorError
from simulators import BUILTIN_MODELS, Simulator
from simulators.datasets import (
    DATA_DIR,
    DatasetEmulator,
    DatasetLookup,
    available_datasets,
    best_point,
    best_value,
    dataset_simulator,
    load_dataset,
)

ROWS = {
    "agnp": 164,
    "crossed_barrel": 600,
    "p3ht": 178,
    "photo_pce10": 1040,
    "perovskites": 192,
    "snar": 66,
    "suzuki": 247,
}


def r_squared(y: np.ndarray, predicted: np.ndarray) -> float:
    return float(1 - ((y - predicted) ** 2).sum() / ((y - y.mean()) ** 2).sum())


def conditions_of(sim: DatasetEmulator | DatasetLookup, row: object) -> dict[str, object]:
    return {p["name"]: v for p, v in zip(sim.parameters, row, strict=True)}


@pytest.fixture(scope="module")
def suzuki() -> DatasetEmulator:
    return DatasetEmulator("suzuki")


@pytest.fixture(scope="module")
def crossed_barrel() -> DatasetEmulator:
    return DatasetEmulator("crossed_barrel")


@pytest.fixture(scope="module")
def snar() -> DatasetEmulator:
    return DatasetEmulator("snar")


@pytest.fixture(scope="module")
def perovskites() -> DatasetLookup:
    return DatasetLookup("perovskites")


def test_every_shipped_dataset_is_listed() -> None:
    assert available_datasets() == sorted(ROWS)


@pytest.mark.parametrize(("name", "rows"), sorted(ROWS.items()))
def test_each_dataset_loads_with_the_right_shape(name: str, rows: int) -> None:
    data = load_dataset(name)
    assert len(data) == rows == len(data.y)
    assert len(data.X) == rows
    assert data.goal in ("maximize", "minimize")
    if data.categorical:
        assert all(len(row) == len(data.parameters) for row in data.X)
    else:
        X = np.asarray(data.X)
        assert X.shape == (rows, len(data.parameters))
        low = np.array([p["low"] for p in data.parameters])
        high = np.array([p["high"] for p in data.parameters])
        assert np.all(X >= low - 1e-9 * (high - low)) and np.all(X <= high + 1e-9 * (high - low))


def test_dataset_metadata_is_read_from_config() -> None:
    perovskites = load_dataset("perovskites")
    assert perovskites.categorical and perovskites.outcome == "hse_gap" and perovskites.goal == "minimize"
    assert perovskites.parameters[1] == {"name": "cation", "type": "categorical", "choices": ["Ge", "Sn", "Pb"]}
    assert perovskites.X[0] == ("ethylammonium", "Ge", "F")
    suzuki = load_dataset("suzuki")
    assert suzuki.parameters[0] == {"name": "temperature", "type": "continuous", "low": 75.0, "high": 90.0}
    assert (suzuki.outcome, suzuki.goal, suzuki.positive, suzuki.simplex) == ("yield", "maximize", True, False)
    assert load_dataset("photo_pce10").simplex
    with pytest.raises(ValueError):
        suzuki.y[0] = 0.0  # the recorded data are read-only


def test_load_dataset_accepts_a_folder_path(tmp_path: Path) -> None:
    shutil.copytree(DATA_DIR / "snar", tmp_path / "my_snar")
    data = load_dataset(tmp_path / "my_snar")
    assert data.name == "my_snar" and len(data) == 66


def test_missing_or_bad_files_raise_simulator_error_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(SimulatorError, match="unknown dataset 'nope'"):
        load_dataset("nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SimulatorError, match="config.json"):
        load_dataset(tmp_path / "empty")
    shutil.copytree(DATA_DIR / "snar", tmp_path / "bad")
    (tmp_path / "bad" / "data.csv").write_text("1.0,2.0,0.3,80.0,0.5\n1.0,2.0,0.3\n")
    with pytest.raises(SimulatorError, match=r"data\.csv:2: expected 5 columns"):
        load_dataset(tmp_path / "bad")
    (tmp_path / "bad" / "data.csv").write_text("1.0,2.0,0.3,hot,0.5\n")
    with pytest.raises(SimulatorError, match=r"data\.csv:1: temperature = 'hot' is not a number"):
        load_dataset(tmp_path / "bad")
    (tmp_path / "bad" / "config.json").write_text("{not json")
    with pytest.raises(SimulatorError, match="config.json"):
        load_dataset(tmp_path / "bad")


@pytest.mark.parametrize("fixture", ["suzuki", "crossed_barrel"])
def test_emulator_fits_the_recorded_rows(fixture: str, request: pytest.FixtureRequest) -> None:
    sim: DatasetEmulator = request.getfixturevalue(fixture)
    assert isinstance(sim, Simulator)
    data = sim.dataset
    assert r_squared(data.y, sim.predict_mean(data.X)) > 0.7
    assert 0 < sim.noise_std < data.y.std()


def test_emulator_noise_matches_the_fitted_noise(suzuki: DatasetEmulator) -> None:
    conditions = conditions_of(suzuki, suzuki.dataset.X[100])
    truth = suzuki.truth(conditions)["yield"]
    rng = np.random.default_rng(0)
    draws = np.array([suzuki(conditions, rng)["yield"] for _ in range(400)])
    assert abs(draws.mean() - truth) < 0.2 * suzuki.noise_std
    assert 0.85 < draws.std() / suzuki.noise_std < 1.15
    quiet = DatasetEmulator(suzuki.dataset, noise_scale=0.0)
    assert quiet(conditions, np.random.default_rng(1)) == quiet.truth(conditions) == {"yield": truth}


def test_emulator_fit_is_deterministic_and_leaves_global_torch_rng_alone(snar: DatasetEmulator) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    again = DatasetEmulator("snar", seed=0)
    assert torch.equal(torch.rand(3), expected)
    X = np.asarray(snar.dataset.X)
    assert np.array_equal(again.predict_mean(X), snar.predict_mean(X))
    assert again.noise_std == snar.noise_std
    conditions = conditions_of(snar, X[3])
    assert again(conditions, np.random.default_rng(9)) == snar(conditions, np.random.default_rng(9))


def test_emulator_rejects_conditions_outside_the_dataset_bounds(suzuki: DatasetEmulator) -> None:
    conditions = conditions_of(suzuki, suzuki.dataset.X[0])
    with pytest.raises(SimulatorError, match="'pd_mol' = 6.0 is outside its bounds"):
        suzuki({**conditions, "pd_mol": 6.0}, np.random.default_rng(0))
    with pytest.raises(SimulatorError, match="missing parameter 'k3po4'"):
        suzuki.truth({k: v for k, v in conditions.items() if k != "k3po4"})


def test_emulator_clips_positive_outcomes_at_zero(crossed_barrel: DatasetEmulator) -> None:
    X = torch.tensor(np.asarray(crossed_barrel.dataset.X))
    with torch.no_grad():
        raw = crossed_barrel._mean_tensor(X).numpy()
    assert raw.min() < 0  # the unclipped GP does dip below zero here, so the clip is exercised
    assert crossed_barrel.predict_mean(X.numpy()).min() == 0.0
    row = np.asarray(crossed_barrel.dataset.X)[int(np.argmin(raw))]
    conditions = conditions_of(crossed_barrel, row)
    noisy = [crossed_barrel(conditions, np.random.default_rng(s))["toughness"] for s in range(50)]
    assert min(noisy) >= 0.0


def test_simplex_emulator_requires_fractions_summing_to_one() -> None:
    sim = DatasetEmulator("photo_pce10", max_rows=150)
    assert sim.truth({"mat_1": 0.25, "mat_2": 0.25, "mat_3": 0.25, "mat_4": 0.25}) is not None
    with pytest.raises(SimulatorError, match="must sum to 1"):
        sim.truth({"mat_1": 0.5, "mat_2": 0.5, "mat_3": 0.5, "mat_4": 0.0})
    value, where = best_point(sim)
    assert sum(where.values()) == pytest.approx(1.0, abs=1e-4)
    assert value <= sim.predict_mean(np.asarray(sim.dataset.X)).min() + 1e-9


@pytest.mark.parametrize("fixture", ["suzuki", "crossed_barrel", "snar"])
def test_best_value_beats_every_recorded_rows_emulated_mean(fixture: str, request: pytest.FixtureRequest) -> None:
    sim: DatasetEmulator = request.getfixturevalue(fixture)
    value, where = best_point(sim)
    means = sim.predict_mean(np.asarray(sim.dataset.X))
    if sim.dataset.goal == "maximize":
        assert value >= means.max() - 1e-9
    else:
        assert value <= means.min() + 1e-9
    assert sim.truth(where)[sim.dataset.outcome] == pytest.approx(value)
    assert best_value(sim) == value


def test_lookup_replays_every_recorded_value_exactly(perovskites: DatasetLookup) -> None:
    assert isinstance(perovskites, Simulator)
    rng = np.random.default_rng(0)
    for row, recorded in zip(perovskites.dataset.X, perovskites.dataset.y, strict=True):
        assert perovskites(conditions_of(perovskites, row), rng) == {"hse_gap": recorded}
    assert best_value(perovskites) == perovskites.dataset.y.min()  # goal: minimize


def test_lookup_fails_for_a_combination_nobody_recorded(tmp_path: Path) -> None:
    folder = tmp_path / "partial"
    shutil.copytree(DATA_DIR / "perovskites", folder)
    lines = (folder / "data.csv").read_text().splitlines()
    (folder / "data.csv").write_text("\n".join(line for line in lines if line != "ethylammonium,Ge,F,5.3704"))
    sim = dataset_simulator(str(folder))
    missing = {"organic": "ethylammonium", "cation": "Ge", "anion": "F"}
    with pytest.raises(ExperimentFailed, match="no recorded experiment for organic='ethylammonium'"):
        sim(missing, np.random.default_rng(0))
    assert sim.truth(missing) is None
    with pytest.raises(SimulatorError, match="'Xe' is not one of"):
        sim({**missing, "cation": "Xe"}, np.random.default_rng(0))


def test_lookup_over_continuous_rows_averages_repeats(tmp_path: Path) -> None:
    folder = tmp_path / "repeats"
    shutil.copytree(DATA_DIR / "snar", folder)
    (folder / "data.csv").write_text("1.0,2.0,0.3,80.0,0.5\n1.0,2.0,0.3,80.0,0.7\n1.5,2.0,0.3,80.0,0.9\n")
    sim = dataset_simulator(str(folder), mode="lookup")
    assert isinstance(sim, DatasetLookup)
    conditions = {"residence_time": 1.0, "ratio": 2.0, "concentration": 0.3, "temperature": 80.0}
    assert sim(conditions, np.random.default_rng(0))["impurity"] == pytest.approx(0.6)
    noisy = DatasetLookup(sim.dataset, noise_scale=1.0)
    assert noisy(conditions, np.random.default_rng(0))["impurity"] != pytest.approx(0.6)


def test_dataset_simulator_modes_and_options() -> None:
    assert isinstance(dataset_simulator("perovskites"), DatasetLookup)
    assert isinstance(BUILTIN_MODELS["dataset"](dataset="snar", mode="auto"), DatasetEmulator)
    assert dataset_simulator("perovskites").noise_scale == 0.0
    with pytest.raises(SimulatorError, match="mode must be"):
        dataset_simulator("snar", mode="gp")
    with pytest.raises(SimulatorError, match="use mode='lookup'"):
        dataset_simulator("perovskites", mode="emulator")
    with pytest.raises(SimulatorError, match=r"'noise'.*allowed options: dataset, mode, noise_scale, seed"):
        BUILTIN_MODELS["dataset"](dataset="snar", noise=1.0)
    with pytest.raises(SimulatorError, match="missing required option"):
        BUILTIN_MODELS["dataset"]()
    json.dumps(load_dataset("suzuki").parameters)  # plain dicts, ready for a campaign file
