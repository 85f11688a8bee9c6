"""The exact marginal likelihood of this project's GPs on dense tensors, for fitting their hyperparameters.

botorch fits a model by L-BFGS over gpytorch's ``ExactMarginalLogLikelihood``, whose lazy linear-operator
layers cost ~5 ms per evaluation at 20 observations, nearly all of it Python. For the models
``surrogates`` builds (a constant mean, an RBF kernel with a lengthscale per column, homoskedastic Gaussian
noise and fixed input transforms) the same number is one kernel matrix, one Cholesky factor and the priors'
log densities, ~2 ms. botorch's loss closures call an MLL's ``compute_custom_loss`` where it has one, so the
fit keeps botorch's optimizer, its retries and its parameter bookkeeping; only the evaluation changes.
Every other model (the DFT-prior models of ``transfer``) gets gpytorch's MLL.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from botorch.models import SingleTaskGP
from gpytorch import settings as gpytorch_settings
from gpytorch.kernels import RBFKernel
from gpytorch.likelihoods import GaussianLikelihood
from gpytorch.likelihoods.noise_models import HomoskedasticNoise
from gpytorch.means import ConstantMean
from gpytorch.mlls import ExactMarginalLogLikelihood
from linear_operator.utils.cholesky import psd_safe_cholesky

_LOG_2PI = math.log(2 * math.pi)


def marginal_log_likelihood(model) -> ExactMarginalLogLikelihood:
    """The MLL to fit ``model`` with: ``DenseExactMLL`` where it computes the same value, else gpytorch's."""
    if DenseExactMLL.supports(model):
        return DenseExactMLL(model.likelihood, model)
    return ExactMarginalLogLikelihood(model.likelihood, model)


class DenseExactMLL(ExactMarginalLogLikelihood):
    """gpytorch's exact MLL of a single-output ``SingleTaskGP`` with an RBF kernel, evaluated densely.

    The value is gpytorch's (log density of the ``n`` training targets plus the priors' log densities,
    divided by ``n``); ``tests/orchestrator/test_dense_mll.py`` checks it and its gradients against
    ``ExactMarginalLogLikelihood``. The training inputs are transformed once, here: the input transforms
    this project uses have no trainable parameters.
    """

    def __init__(self, likelihood: GaussianLikelihood, model: SingleTaskGP):
        super().__init__(likelihood, model)
        with torch.no_grad():
            X = model.transform_inputs(model.train_inputs[0])
            kernel = model.covar_module
            self._X = X if kernel.active_dims is None else X.index_select(-1, kernel.active_dims)

    @staticmethod
    def supports(model: Any) -> bool:
        """Whether ``model`` has exactly the structure this class computes the likelihood of."""
        if type(model) is not SingleTaskGP or model.train_targets.dim() != 1:
            return False
        likelihood, kernel = model.likelihood, model.covar_module
        transform = getattr(model, "input_transform", None)
        return (
            type(likelihood) is GaussianLikelihood
            and type(likelihood.noise_covar) is HomoskedasticNoise
            and likelihood.noise.numel() == 1
            and type(model.mean_module) is ConstantMean
            and type(kernel) is RBFKernel
            and kernel.batch_shape == torch.Size([])
            and not list(model.added_loss_terms())
            and (transform is None or not any(p.requires_grad for p in transform.parameters()))
            and gpytorch_settings.observation_nan_policy.value() == "ignore"
        )

    def compute_custom_loss(self, **_: Any) -> torch.Tensor:
        """The negative MLL (what botorch minimizes), differentiable in the model's raw hyperparameters."""
        model = self.model
        y = model.train_targets
        n = y.shape[-1]
        Z = self._X / model.covar_module.lengthscale  # n x k, lengthscale 1 x k
        # |z - z'|^2 by one matrix product: an n x n x k difference tensor (and its backward) took seconds at n = 500.
        Z = Z - Z.mean(dim=-2, keepdim=True)  # centred first, as gpytorch does, for accuracy
        sq = Z.pow(2).sum(-1)
        K = torch.exp(-0.5 * (sq.unsqueeze(-1) + sq.unsqueeze(-2) - 2 * Z @ Z.transpose(-1, -2)).clamp_min(0))
        K = K + torch.diag_embed(self.likelihood.noise.expand(n))
        L = psd_safe_cholesky(K)
        r = (y - model.mean_module.constant).unsqueeze(-1)
        alpha = torch.cholesky_solve(r, L)
        log_density = -0.5 * (r * alpha).sum() - torch.log(torch.diagonal(L)).sum() - 0.5 * n * _LOG_2PI
        for _name, module, prior, value_of, _setter in model.named_priors():
            log_density = log_density + prior.log_prob(value_of(module)).sum()
        return -log_density / n
