"""The dense marginal likelihood equals gpytorch's, in value, gradients and fitted hyperparameters."""

from __future__ import annotations

import pytest
import torch
from botorch.fit import fit_gpytorch_mll
from botorch.optim.closures import get_loss_closure_with_grads
from botorch.optim.utils import get_parameters
from gpytorch.kernels import ScaleKernel
from gpytorch.likelihoods.noise_models import HomoskedasticNoise
from gpytorch.means import ZeroMean
from gpytorch.mlls import ExactMarginalLogLikelihood

from orchestrator.campaign import Campaign
from orchestrator.dense_mll import DenseExactMLL, marginal_log_likelihood
from orchestrator.space import SearchSpace
from orchestrator.surrogates import _gp

DESCRIPTORS = {"dmf": {"bp_c": 153.0, "polarity": 6.4}, "dmso": {"bp_c": 189.0, "polarity": 7.2},
               "gbl": {"bp_c": 204.0, "polarity": 4.2}}


def _space(campaign_dict, kind: str) -> SearchSpace:
    if kind == "continuous":
        campaign_dict["parameters"] = [
            {"name": n, "type": "continuous", "low": 0.0, "high": 2.0} for n in ("a", "b", "c", "d")
        ]
    elif kind == "descriptors":
        campaign_dict["parameters"][2]["descriptors"] = DESCRIPTORS
    return SearchSpace(tuple(Campaign.model_validate(campaign_dict).parameters))


def _model(space: SearchSpace, n: int, standardize: bool = True):
    X = space.initial_design(1, 0, n)
    y = torch.sin(3 * X[:, :1]) + 0.3 * X[:, 1:2] + 0.05 * torch.randn(n, 1, generator=torch.Generator().manual_seed(n), dtype=X.dtype)
    if not standardize:  # a success model: 0/1 targets
        y = (y > y.median()).to(y)
    return _gp(space, X, y, standardize=standardize)


def _randomize(model, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # same signs: lengthscales are raw values kept positive by the fit's bounds
            p.mul_(torch.exp(torch.randn(p.shape, generator=g, dtype=p.dtype)))


@pytest.mark.parametrize("kind", ["continuous", "mixed", "descriptors"])
@pytest.mark.parametrize("standardize", [True, False])
def test_value_and_gradients_match_gpytorch(campaign_dict, kind, standardize):
    space = _space(campaign_dict, kind)
    model = _model(space, 17, standardize)
    assert DenseExactMLL.supports(model)
    for seed in range(4):
        _randomize(model, seed)
        model.train()
        params = get_parameters(model, requires_grad=True)
        ours, ours_grads = get_loss_closure_with_grads(DenseExactMLL(model.likelihood, model), params)()
        theirs, their_grads = get_loss_closure_with_grads(ExactMarginalLogLikelihood(model.likelihood, model), params)()
        assert float(ours) == pytest.approx(float(theirs), rel=1e-9, abs=1e-12)
        for a, b in zip(ours_grads, their_grads):
            assert torch.allclose(a, b, rtol=1e-7, atol=1e-10)


def test_fitted_hyperparameters_match_gpytorch(campaign_dict):
    space = _space(campaign_dict, "mixed")
    a, b = _model(space, 20), _model(space, 20)
    for model, mll in ((a, DenseExactMLL(a.likelihood, a)), (b, ExactMarginalLogLikelihood(b.likelihood, b))):
        torch.manual_seed(0)
        fit_gpytorch_mll(mll)
    assert torch.allclose(a.covar_module.lengthscale, b.covar_module.lengthscale, rtol=1e-4)
    assert torch.allclose(a.likelihood.noise, b.likelihood.noise, rtol=1e-4)


def test_other_models_keep_gpytorchs_likelihood(campaign_dict):
    """A kernel, mean or noise model other than the ones ``surrogates`` builds falls back to gpytorch's MLL."""
    space = _space(campaign_dict, "continuous")
    variants = {
        "scaled kernel": lambda m: setattr(m, "covar_module", ScaleKernel(m.covar_module)),
        "zero mean": lambda m: setattr(m, "mean_module", ZeroMean()),
        "noise per task": lambda m: setattr(m.likelihood, "noise_covar", HomoskedasticNoise(batch_shape=torch.Size([2]))),
    }
    assert type(marginal_log_likelihood(_model(space, 8))) is DenseExactMLL
    for name, change in variants.items():
        model = _model(space, 8)
        change(model)
        assert type(marginal_log_likelihood(model)) is ExactMarginalLogLikelihood, name
