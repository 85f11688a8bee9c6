"""Transfer from calculated data: each method fits and proposes, a biased prior is corrected, ``auto`` keeps a
useless prior out and a helpful one in, and a campaign's ``priors:`` entry reaches the ledger or stops the run
with a message naming the file and row."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from botorch.models import MultiTaskGP, SingleTaskGP
from typer.testing import CliRunner

from orchestrator import transfer
from orchestrator.campaign import Campaign, load_campaign
from orchestrator.cli import app
from orchestrator.errors import CampaignFileError
from orchestrator.ledger import Ledger
from orchestrator.loop import CampaignRunner, run_loop
from orchestrator.objectives import ScalarObjective
from orchestrator.parameters import CategoricalParameter, ContinuousParameter
from orchestrator.priors import PriorData, PriorFileError
from orchestrator.proposer import Observations, _untried, fit_for_objective, propose
from orchestrator.simulation import build_simulator
from orchestrator.space import DTYPE, SearchSpace
from orchestrator.surrogates import _fit, fit_surrogate
from orchestrator.threads import single_threaded
from orchestrator.transfer import (
    AUTO_MARGIN_NATS,
    PriorMean,
    fit_prior,
    load_priors,
    loo_log_likelihood,
    prior_mean_coefficients,
)
from simulators.dft import PerovskitesMeasured, hse06_rows
from tests.conftest import REPO

cli = CliRunner()

# --- a continuous toy: the truth depends on a and b (which a calculation covers), not on the process knob t --
A = ContinuousParameter(name="a", low=0.0, high=1.0)
B = ContinuousParameter(name="b", low=0.0, high=2.0)
T = ContinuousParameter(name="t", low=10.0, high=20.0)
COMPOSITION = SearchSpace((A, B))  # the calculation covers every parameter: multitask is possible
WITH_PROCESS = SearchSpace((A, B, T))  # the calculation covers a subset: prior_mean only


def truth(c: dict) -> float:
    return 1.5 + math.sin(3.0 * c["a"]) + 0.5 * math.cos(2.0 * c["b"])


def calc_rows(n: int, seed: int) -> list[dict[str, float]]:
    """``n`` calculated compositions, uniform over the (a, b) box."""
    rng = np.random.default_rng(seed)
    return [{"a": float(x), "b": float(2.0 * y)} for x, y in rng.random((n, 2))]


def prior_data(rows: list[dict], values, method: str = "auto", params: tuple[str, ...] = ("a", "b")) -> PriorData:
    y = np.asarray(values, dtype=float)
    y.flags.writeable = False  # as load_prior hands it over
    return PriorData("dft", "y", method, params, rows, y, Path("dft.csv"))


def experiments(space: SearchSpace, n: int, seed: int, fn=truth) -> Observations:
    X = space.initial_design(seed, 0, n)
    Y = torch.tensor([[fn(c)] for c in space.decode(X)], dtype=DTYPE)
    return Observations(X, Y, X[:0], X[:0])


def fitted_prior(space: SearchSpace, data: PriorData):
    with single_threaded(), torch.random.fork_rng():
        torch.manual_seed(0)
        return fit_prior(space, data)


def surrogate_for(space: SearchSpace, obs: Observations, priors):
    with single_threaded(), torch.random.fork_rng():
        torch.manual_seed(0)
        return fit_surrogate(space, obs, priors)


def toy_campaign(params, outcomes=("y",), objective: str = "y") -> Campaign:
    return Campaign.model_validate(
        {
            "name": "transfer_toy",
            "parameters": [p.model_dump() for p in params],
            "outcomes": [{"name": o} for o in outcomes],
            "objectives": [{"outcome": objective, "goal": "maximize"}],
            "budget": {"max_experiments": 20},
            "simulator": {"model": "tests.toy_simulators:branin_like"},
        }
    )


def posterior_mean(model, X: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.posterior(X).mean.squeeze(-1)


# --- the categorical perovskite space and its HSE06 table ----------------------------------------------------
PEROVSKITES = yaml.safe_load((REPO / "campaigns" / "perovskites_dft_prior.yaml").read_text())
PEROVSKITE_SPACE = SearchSpace(
    tuple(CategoricalParameter(type="categorical", name=p["name"], choices=p["choices"]) for p in PEROVSKITES["parameters"])
)
MEASURED = PerovskitesMeasured(seed=0)


def measured_gap(c: dict) -> float:
    return MEASURED.truth(c)["band_gap_ev"]


def hse06_prior(method: str) -> PriorData:
    rows = hse06_rows()
    params = ("organic", "cation", "anion")
    return prior_data([{k: r[k] for k in params} for r in rows], [r["hse_gap_ev"] for r in rows], method, params)


# === 1. every method fits and proposes ======================================================================


@pytest.mark.parametrize("method", ["prior_mean", "multitask", "none"])
@pytest.mark.parametrize("kind", ["continuous", "categorical"])
def test_each_method_fits_and_proposes_legal_points(method, kind):
    if kind == "continuous":
        space, params = COMPOSITION, (A, B)
        rows = calc_rows(30, seed=1)
        data = prior_data(rows, [truth(r) - 0.4 for r in rows], method)
        obs = experiments(space, 8, seed=2)
    else:
        space, params = PEROVSKITE_SPACE, PEROVSKITE_SPACE.parameters
        data = hse06_prior(method)
        obs = experiments(space, 8, seed=2, fn=measured_gap)
    prior = fitted_prior(space, data)
    assert prior.candidates() == (method,)
    surrogate = surrogate_for(space, obs, {0: prior})

    info = surrogate.transfer[0]
    assert info["method"] == method
    assert (info["outcome"], info["prior"]) == ("y", "dft")
    model = surrogate.model.models[0]
    if method == "multitask":
        assert isinstance(model, MultiTaskGP)
        assert model.train_inputs[0].shape[0] == len(data) + obs.X.shape[0]  # calculations and experiments
    else:
        assert isinstance(model, SingleTaskGP)
        assert isinstance(model.mean_module, PriorMean) == (method == "prior_mean")
        assert model.train_inputs[0].shape[0] == obs.X.shape[0]

    objective = ScalarObjective.from_campaign(toy_campaign(params), obs.Y)
    with single_threaded():
        proposal = propose(space, obs, objective, q=2, seed=5, n_initial=4, surrogate=surrogate)
    assert proposal.generator == "gp:qLogNEI"
    assert proposal.info["transfer"] == [info]
    X = proposal.X
    assert X.shape == (2, space.dim) and bool(torch.isfinite(X).all())
    lo, hi = space.bounds()
    assert bool(((X >= lo - 1e-9) & (X <= hi + 1e-9)).all())
    conditions = space.decode(X)
    if kind == "categorical":
        assert torch.equal(X, X.round())
        for c in conditions:
            assert all(c[p.name] in p.choices for p in space.parameters)
        tried = {tuple(r) for r in obs.X.tolist()}
        assert not tried & {tuple(r) for r in X.tolist()}, "an enumerated space never repeats a tried point"
    else:
        assert all(0.0 <= c["a"] <= 1.0 and 0.0 <= c["b"] <= 2.0 for c in conditions)


def test_prior_gp_is_not_trained_on_the_experiments():
    rows = calc_rows(30, seed=1)
    prior = fitted_prior(WITH_PROCESS, prior_data(rows, [truth(r) - 0.5 for r in rows], "prior_mean"))
    before = {k: v.clone() for k, v in prior.model.state_dict().items()}
    surrogate = surrogate_for(WITH_PROCESS, experiments(WITH_PROCESS, 8, seed=3), {0: prior})
    mean = surrogate.model.models[0].mean_module
    assert {n for n, _ in mean.named_parameters()} == {"scale", "offset"}
    after = prior.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert prior.model.train_inputs[0].shape == (30, 2), "the prior GP keeps its calculated rows"
    assert not prior.model.training


def test_fit_for_objective_maps_priors_onto_the_modelled_outcomes():
    """Outcome 1 of two is the objective: its prior applies to column 0 of the modelled view; a prior on the
    unmodelled outcome 0 is ignored."""
    rows = calc_rows(30, seed=1)
    prior = fitted_prior(COMPOSITION, prior_data(rows, [truth(r) - 0.5 for r in rows], "prior_mean"))
    campaign = toy_campaign((A, B), outcomes=("other", "y"), objective="y")
    X = COMPOSITION.initial_design(4, 0, 8)
    Y = torch.tensor([[0.0, truth(c)] for c in COMPOSITION.decode(X)], dtype=DTYPE)
    obs = Observations(X, Y, X[:0], X[:0])
    objective = ScalarObjective.from_campaign(campaign, Y)
    used = fit_for_objective(COMPOSITION, obs, objective, {1: prior})
    assert list(used.transfer) == [0] and used.transfer[0]["method"] == "prior_mean"
    assert isinstance(used.model.models[0].mean_module, PriorMean)
    ignored = fit_for_objective(COMPOSITION, obs, objective, {0: prior})
    assert ignored.transfer == {}
    assert not isinstance(ignored.model.models[0].mean_module, PriorMean)


# === 2. a constant offset is learned ========================================================================


def test_constant_offset_prior_is_corrected():
    """calc = truth - 0.5 over (a, b); the campaign also has a process knob t the calculation lacks."""
    rows = calc_rows(40, seed=0)
    prior = fitted_prior(WITH_PROCESS, prior_data(rows, [truth(r) - 0.5 for r in rows], "prior_mean"))
    assert prior.columns == (0, 1) and prior.X_full is None
    obs = experiments(WITH_PROCESS, 8, seed=1)
    with_prior = surrogate_for(WITH_PROCESS, obs, {0: prior})
    plain = surrogate_for(WITH_PROCESS, obs, None)
    assert with_prior.transfer[0]["method"] == "prior_mean" and plain.transfer == {}

    scale, offset = prior_mean_coefficients(with_prior.model.models[0])
    assert scale == pytest.approx(1.0, abs=0.15)
    assert offset == pytest.approx(0.5, abs=0.1)

    X_new = WITH_PROCESS.initial_design(99, 0, 20)
    y_new = torch.tensor([truth(c) for c in WITH_PROCESS.decode(X_new)], dtype=DTYPE)
    err = (posterior_mean(with_prior.model.models[0], X_new) - y_new).abs()
    err_plain = (posterior_mean(plain.model.models[0], X_new) - y_new).abs()
    assert float(err.mean()) < 0.02 and float(err.max()) < 0.06
    assert float(err.mean()) < 0.2 * float(err_plain.mean()), (float(err.mean()), float(err_plain.mean()))


def test_a_prior_that_explains_the_experiments_leaves_only_its_residual_doubt():
    """HSE06 prior, measured gaps = scaled HSE06 + 0.05 eV per material: after 8 materials the prior-mean GP's
    posterior sd at the untried ones is near that 0.05 eV, not the outcome's 1 eV spread (which made the loop
    explore the whole table), and its errors there are what the sd says."""
    prior = fitted_prior(PEROVSKITE_SPACE, hse06_prior("prior_mean"))
    X = PEROVSKITE_SPACE.initial_design(3, 0, 8)
    y = torch.tensor([[measured_gap(c)] for c in PEROVSKITE_SPACE.decode(X)], dtype=DTYPE)
    with single_threaded(), torch.random.fork_rng():
        torch.manual_seed(0)
        model = transfer.prior_mean_gp(PEROVSKITE_SPACE, prior, X, y)
        _fit(model)
    untried = _untried(PEROVSKITE_SPACE.all_points(), X)
    truth_gap = torch.tensor([measured_gap(c) for c in PEROVSKITE_SPACE.decode(untried)], dtype=DTYPE)
    with torch.no_grad():
        post = model.posterior(untried)
    sd, err = post.variance.squeeze(-1).sqrt(), post.mean.squeeze(-1) - truth_gap
    assert float(y.std()) > 0.8  # the outcome's own spread
    assert 0.01 < float(sd.median()) < 0.2, float(sd.median())
    assert float(err.pow(2).mean().sqrt()) < 0.15 and float(err.abs().median()) < 2 * float(sd.median())


# === 3. auto: no transfer from noise, transfer from a helpful prior ==========================================


RANDOM_PRIOR_CASES = [(seed, 10 if seed % 2 == 0 else 12) for seed in range(6)]


def auto_on_random_priors(space: SearchSpace) -> list[dict]:
    """``auto``'s record on six seeded toy cases: 40 calculated values i.i.d. N(0, 1), unrelated to the truth,
    over the composition (a, b); 10 or 12 noise-free experiments."""
    records = []
    for seed, n in RANDOM_PRIOR_CASES:
        rows = calc_rows(40, seed=seed)
        noise = np.random.default_rng(100 + seed).standard_normal(40)
        prior = fitted_prior(space, prior_data(rows, noise))
        surrogate = surrogate_for(space, experiments(space, n, seed=seed + 1), {0: prior})
        info = surrogate.transfer[0]
        assert set(info["loo_nats"]) == set(prior.candidates())
        assert all(math.isfinite(v) for v in info["loo_nats"].values())
        model = surrogate.model.models[0]
        assert isinstance(model.mean_module, PriorMean) == (info["method"] == "prior_mean")
        records.append(info)
    return records


def test_auto_ignores_a_random_prior_over_a_subset():
    """With the process knob t uncovered (candidates none and prior_mean), ``auto`` keeps the plain GP in at
    least 5 of the 6 cases (without the margin it would transfer in 3 of them)."""
    records = auto_on_random_priors(WITH_PROCESS)
    assert all(set(r["loo_nats"]) == {"none", "prior_mean"} for r in records)
    chosen = [r["method"] for r in records]
    assert chosen.count("none") >= 5, records


def test_auto_ignores_a_random_prior_over_every_parameter():
    records = auto_on_random_priors(COMPOSITION)
    assert all(set(r["loo_nats"]) == {"none", "prior_mean", "multitask"} for r in records)
    chosen = [r["method"] for r in records]
    assert chosen.count("none") >= 5, records


@pytest.mark.parametrize("space", [WITH_PROCESS, COMPOSITION], ids=["subset", "full"])
def test_auto_uses_a_helpful_prior(space):
    """The same setup with calc = truth + 0.3: a transfer model wins, by more than the margin."""
    rows = calc_rows(40, seed=0)
    prior = fitted_prior(space, prior_data(rows, [truth(r) + 0.3 for r in rows]))
    surrogate = surrogate_for(space, experiments(space, 10, seed=1), {0: prior})
    info = surrogate.transfer[0]
    scores = info["loo_nats"]
    assert set(scores) == set(prior.candidates())
    assert info["method"] in ("prior_mean", "multitask"), info
    assert scores[info["method"]] == max(scores.values())
    assert scores[info["method"]] > scores["none"] + AUTO_MARGIN_NATS
    if info["method"] == "prior_mean":
        assert isinstance(surrogate.model.models[0].mean_module, PriorMean)


@pytest.mark.parametrize(
    ("gain", "chosen"), [(0.5 * AUTO_MARGIN_NATS, "none"), (2.0 * AUTO_MARGIN_NATS, "prior_mean")]
)
def test_auto_needs_the_margin_to_transfer(monkeypatch, gain, chosen):
    """A transfer model must beat the plain GP's leave-one-out score by AUTO_MARGIN_NATS to be used."""

    def scored(model, n_target):
        return gain if isinstance(model.mean_module, PriorMean) else 0.0

    monkeypatch.setattr(transfer, "loo_log_likelihood", scored)
    rows = calc_rows(20, seed=0)
    prior = fitted_prior(WITH_PROCESS, prior_data(rows, [truth(r) for r in rows]))
    surrogate = surrogate_for(WITH_PROCESS, experiments(WITH_PROCESS, 6, seed=1), {0: prior})
    assert surrogate.transfer[0]["method"] == chosen
    assert surrogate.transfer[0]["loo_nats"] == {"none": 0.0, "prior_mean": round(gain, 3)}
    assert isinstance(surrogate.model.models[0].mean_module, PriorMean) == (chosen == "prior_mean")


def test_loo_log_likelihood_matches_explicit_leave_one_out():
    """The closed form equals conditioning on the other n - 1 points, point by point, in outcome units."""
    rows = calc_rows(30, seed=1)
    prior = fitted_prior(WITH_PROCESS, prior_data(rows, [truth(r) - 0.5 for r in rows], "prior_mean"))
    obs = experiments(WITH_PROCESS, 7, seed=2)
    for model in (surrogate_for(WITH_PROCESS, obs, {0: prior}).model.models[0],
                  surrogate_for(WITH_PROCESS, obs, None).model.models[0]):
        closed = loo_log_likelihood(model, 7)
        model.train()
        with torch.no_grad():
            dist = model.likelihood(model(*model.train_inputs), *model.train_inputs)
            K, m = dist.covariance_matrix, dist.mean
            t = model.train_targets
        model.eval()
        stdv = float(model.outcome_transform.stdvs.squeeze())
        total = 0.0
        for i in range(7):
            o = [j for j in range(7) if j != i]
            w = torch.linalg.solve(K[o][:, o], K[o, i])
            mu = m[i] + w @ (t[o] - m[o])
            var = K[i, i] - K[i, o] @ w
            # density of the outcome itself: y = mu_y + stdv * t, so divide by stdv
            total += float(-0.5 * torch.log(2 * math.pi * var) - 0.5 * (t[i] - mu) ** 2 / var) - math.log(stdv)
        assert closed == pytest.approx(total, abs=1e-6)
        assert model.training is False


# === 4. multitask is a candidate only with full coverage ======================================================


def test_candidates_follow_coverage_and_method():
    rows = calc_rows(15, seed=0)
    values = [truth(r) for r in rows]
    full = fitted_prior(COMPOSITION, prior_data(rows, values))
    assert full.X_full is not None and full.X_full.shape == (15, 2)
    assert full.candidates() == ("none", "prior_mean", "multitask")
    subset = fitted_prior(WITH_PROCESS, prior_data(rows, values))
    assert subset.X_full is None
    assert subset.candidates() == ("none", "prior_mean")
    only_a = fitted_prior(COMPOSITION, prior_data([{"a": r["a"]} for r in rows], values, params=("a",)))
    assert only_a.columns == (0,) and only_a.candidates() == ("none", "prior_mean")
    for method in ("prior_mean", "multitask", "none"):
        assert fitted_prior(COMPOSITION, prior_data(rows, values, method)).candidates() == (method,)


# === 5. campaign files =======================================================================================


def hse06_campaign(tmp_path: Path, csv_text: str | None = None, **changes) -> Path:
    """``perovskites_dft_prior.yaml`` in ``tmp_path`` with its prior file under ``tmp_path/data``."""
    (tmp_path / "data").mkdir(parents=True, exist_ok=True)
    target = tmp_path / "data" / "perovskites_hse06.csv"
    if csv_text is None:
        shutil.copy(REPO / "campaigns" / "data" / "perovskites_hse06.csv", target)
    else:
        target.write_text(csv_text)
    content = yaml.safe_load((REPO / "campaigns" / "perovskites_dft_prior.yaml").read_text())
    content.update(changes)
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def film_campaign(tmp_path: Path, csv_text: str, **prior_changes) -> Path:
    """``perovskite_film_dft.yaml`` in ``tmp_path``, its prior file (formula column) given as text."""
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "perovskite_film_dft_helpful.csv").write_text(csv_text)
    content = yaml.safe_load((REPO / "campaigns" / "perovskite_film_dft.yaml").read_text())
    content["priors"][0].update(prior_changes)
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def test_campaign_run_records_transfer_in_the_ledger(tmp_path, monkeypatch):
    """The shipped HSE06 campaign, moved to tmp_path: its prior file is read relative to the campaign file,
    fitted once, and every model-based proposal records the method chosen."""
    fits = []
    real_fit_prior = fit_prior

    def counting_fit_prior(space, data):
        fits.append(data.name)
        return real_fit_prior(space, data)

    monkeypatch.setattr("orchestrator.loop.fit_prior", counting_fit_prior)
    path = hse06_campaign(tmp_path, budget={"max_experiments": 7, "batch_size": 1, "initial_experiments": 4})
    campaign = load_campaign(path)
    assert campaign.source_dir == tmp_path.resolve()
    with Ledger.for_campaign(campaign, tmp_path / "results") as ledger:
        runner = CampaignRunner(campaign, ledger, build_simulator(campaign))
        assert len(runner.prior_data) == 1 and len(runner.prior_data[0]) == 192
        assert runner.prior_data[0].file == tmp_path.resolve() / "data" / "perovskites_hse06.csv"
        run_loop(runner)
    with Ledger.for_campaign(campaign, tmp_path / "results") as ledger:
        exps = ledger.experiments()
    assert len(exps) == 7 and all(e.state == "completed" for e in exps)
    assert fits == ["hse06"], "the prior is fitted once per run, not at every refit"
    design, model_based = exps[:4], exps[4:]
    assert all(e.generator == "sobol" and "transfer" not in e.proposal_info for e in design)
    for e in model_based:
        assert e.generator == "gp:qLogNEI"
        (info,) = e.proposal_info["transfer"]
        assert (info["outcome"], info["prior"]) == ("band_gap_ev", "hse06")
        assert info["method"] in ("none", "prior_mean", "multitask")
        assert set(info["loo_nats"]) == {"none", "prior_mean", "multitask"}  # the table covers every parameter
        best = max(info["loo_nats"], key=info["loo_nats"].get)
        assert info["method"] in (best, "none")


def test_runner_stops_on_a_bad_prior_file_before_any_experiment(tmp_path):
    path = hse06_campaign(tmp_path, "organic,cation,anion,hse_gap_ev\nethylammonium,Ge,F,nan\n")
    campaign = load_campaign(path)
    with Ledger.for_campaign(campaign, tmp_path / "results") as ledger:
        with pytest.raises(PriorFileError, match=r"row 1: hse_gap_ev is NaN"):
            CampaignRunner(campaign, ledger, build_simulator(campaign))
        assert ledger.experiments() == []
    with pytest.raises(PriorFileError) as err:
        load_priors(campaign)
    assert err.value.path == tmp_path.resolve() / "data" / "perovskites_hse06.csv"


HSE06_HEAD = "organic,cation,anion,hse_gap_ev\nethylammonium,Ge,F,5.3704\nethylammonium,Ge,Cl,3.1393\n"
FILM_HEAD = "cs_frac,br_frac,formula,gap_dft_ev\n0.31,0.05,Cs0.31FA0.69Pb(I0.95Br0.05)3,1.0436\n"
BAD_PRIOR_FILES = {
    "missing_column": ("hse06", HSE06_HEAD.replace("hse_gap_ev", "gap"), ["missing column(s) 'hse_gap_ev'"]),
    "nan_row": ("hse06", HSE06_HEAD + "ethylammonium,Ge,Br,nan\n", ["row 3: hse_gap_ev is NaN"]),
    "unknown_choice": ("hse06", HSE06_HEAD + "caesium,Ge,Br,2.7\n", ["row 3: organic 'caesium' is not a choice"]),
    "composition_outside": (
        "film",
        FILM_HEAD + "0.5,0.05,Cs0.50FA0.50Pb(I0.95Br0.05)3,1.1\n",
        ["row 2: cs_frac = 0.5 from 'Cs0.50FA0.50Pb(I0.95Br0.05)3' is outside the range of 'cs_frac' [0, 0.4]"],
    ),
}


def bad_prior_campaign(tmp_path: Path, case: str) -> tuple[Path, Path, list[str]]:
    which, text, expected = BAD_PRIOR_FILES[case]
    if which == "hse06":
        return hse06_campaign(tmp_path, text), tmp_path / "data" / "perovskites_hse06.csv", expected
    return film_campaign(tmp_path, text), tmp_path / "data" / "perovskite_film_dft_helpful.csv", expected


def assert_names_file_and_row(output: str, data_file: Path, expected: list[str]) -> None:
    flat = " ".join(output.split())  # in case the console wraps a long line
    assert str(data_file) in flat, output
    for text in expected:
        assert text in flat, output
    assert "Traceback" not in output


@pytest.mark.parametrize("case", sorted(BAD_PRIOR_FILES))
def test_run_rejects_a_bad_prior_file(tmp_path, case):
    path, data_file, expected = bad_prior_campaign(tmp_path, case)
    result = cli.invoke(app, ["run", str(path), "--no-prefect", "-q", "-r", str(tmp_path / "res")])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert_names_file_and_row(result.output, data_file, expected)
    assert not (tmp_path / "res").exists(), "no ledger may be created for a campaign that cannot run"


@pytest.mark.parametrize("case", sorted(BAD_PRIOR_FILES))
def test_validate_rejects_a_bad_prior_file(tmp_path, case):
    path, data_file, expected = bad_prior_campaign(tmp_path, case)
    result = cli.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    assert_names_file_and_row(result.output, data_file, expected)


def test_validate_accepts_a_good_prior_file(tmp_path):
    result = cli.invoke(app, ["validate", str(hse06_campaign(tmp_path))])
    assert result.exit_code == 0, result.output


def test_two_priors_for_one_outcome_are_rejected_at_load(tmp_path):
    content = yaml.safe_load((REPO / "campaigns" / "perovskites_dft_prior.yaml").read_text())
    second = dict(content["priors"][0], name="hse06_again")
    path = hse06_campaign(tmp_path, priors=[content["priors"][0], second])
    with pytest.raises(CampaignFileError) as err:
        load_campaign(path)
    (line,) = [p for p in err.value.problems if "priors[1].outcome" in p]
    assert "'band_gap_ev' already has a prior (priors[0])" in line
    result = cli.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and "priors[1].outcome" in result.output and "Traceback" not in result.output


def test_multitask_needs_full_coverage_at_load(tmp_path):
    """The film prior covers cs_frac and br_frac only; multitask is refused, naming the missing parameters."""
    path = film_campaign(tmp_path, FILM_HEAD, method="multitask")
    with pytest.raises(CampaignFileError) as err:
        load_campaign(path)
    (line,) = [p for p in err.value.problems if "priors[0].method" in p]
    assert "'multitask' needs calculated values over every parameter" in line
    assert "anneal_temp_c" in line and "antisolvent" in line and "cs_frac" not in line.split("cover")[-1]
    result = cli.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and "priors[0].method" in result.output

    # The HSE06 table covers all three parameters, so there multitask is allowed.
    full = hse06_campaign(tmp_path / "full", priors=[dict(PEROVSKITES["priors"][0], method="multitask")])
    assert load_campaign(full).priors[0].method == "multitask"


@pytest.mark.parametrize(
    ("loo", "held", "chosen"),
    [
        ({"none": 0.0, "prior_mean": 5.0}, {}, "none"),  # too few experiments for a held-out score
        ({"none": 0.0, "prior_mean": 5.0}, {"none": 0.0, "prior_mean": 0.5}, "none"),  # held-out gain too small
        ({"none": 0.0, "prior_mean": 0.5}, {"none": 0.0, "prior_mean": 5.0}, "none"),  # leave-one-out gain too small
        ({"none": 0.0, "prior_mean": 3.0}, {"none": 0.0, "prior_mean": 2.0}, "prior_mean"),
        ({"none": 0.0, "prior_mean": 3.0, "multitask": 4.0}, {"none": 0.0, "prior_mean": 4.0, "multitask": 1.5},
         "prior_mean"),  # both eligible: the larger sum
    ],
)
def test_choose_method_needs_both_scores(loo, held, chosen):
    assert transfer.choose_method(loo, held) == chosen
