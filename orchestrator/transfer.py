"""Transfer from calculated data (DFT) to a measured outcome: three surrogates and a choice between them.

- ``prior_mean``: a GP fitted once to the calculated values becomes the mean function of the outcome's GP,
  ``a * g(x) + b``, with only the scale ``a``, the offset ``b`` and a residual GP learned from experiments.
  The calculation may cover a subset of the parameters (composition, not anneal time).
- ``multitask``: calculation and experiment are two tasks of one GP whose correlation is learned; needs
  calculated rows over every parameter of the campaign.
- ``none``: the plain GP.

``auto`` decides at every refit (``choose_method``): a transfer model is used only where it predicts the
experiments better than the plain GP by ``AUTO_MARGIN_NATS`` on two scores: the leave-one-out predictive
log-likelihood (closed form for a GP) and the log-likelihood of the latest quarter of the experiments under
models fitted to the earlier ones. Leave-one-out alone reuses hyperparameters fitted to the left-out point and
favours the models with more of them: on priors of pure noise it chose transfer in 23 of 24 toy cases. The
held-out score has no such bias but is noisier; requiring both keeps a prior that does not help out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from botorch.models import MultiTaskGP, SingleTaskGP
from botorch.models.transforms.outcome import Standardize
from gpytorch.kernels import ScaleKernel
from gpytorch.means import Mean

from orchestrator.parameters import CategoricalParameter, DiscreteParameter, IntegerParameter
from orchestrator.priors import PriorData, load_prior
from orchestrator.space import DTYPE, SearchSpace

METHODS = ("prior_mean", "multitask", "none")
# Leave-one-out log-likelihood (nats, summed over experiments) a transfer model must gain over the plain GP
# before ``auto`` uses it: one nat is a likelihood ratio of e, small against a wrong prior's losses.
AUTO_MARGIN_NATS = 1.0
# Least residual variance (standardized units) a prior-mean GP is given: sd 0.03 of the outcome's spread, so a
# prior that fits the first few experiments by chance does not make the GP certain everywhere.
RESIDUAL_VAR_FLOOR = 1e-3


@dataclass(frozen=True)
class PriorModel:
    """Calculated data for one outcome, fitted once per campaign run.

    Attributes:
        name: the prior's label from the campaign file.
        outcome: the outcome it informs.
        method: as configured (``auto``, ``prior_mean``, ``multitask`` or ``none``).
        columns: the campaign's encoded columns the data covers.
        model: a GP over those columns (encoded as in the campaign space), fitted to the calculated values.
        y_mean: mean of the calculated values (for z-scoring the prior's prediction).
        y_std: their standard deviation.
        X_full: ``n_p x d`` encoded rows when the data covers every parameter (multitask), else ``None``.
        y: ``n_p x 1`` calculated values.
    """

    name: str
    outcome: str
    method: str
    columns: tuple[int, ...]
    model: SingleTaskGP
    y_mean: float
    y_std: float
    X_full: torch.Tensor | None
    y: torch.Tensor

    def candidates(self) -> tuple[str, ...]:
        """The methods to try for this outcome."""
        if self.method != "auto":
            return (self.method,)
        return ("none", "prior_mean") + (("multitask",) if self.X_full is not None else ())


def load_priors(campaign) -> list[PriorData]:
    """Reads every prior file a campaign names (relative to its file's folder).

    Raises:
        PriorFileError: a file is missing or a row is bad; the message names the file and the row.
    """
    return [load_prior(src, campaign.parameters, campaign.outcomes, campaign.source_dir) for src in campaign.priors]


def fit_prior(space: SearchSpace, data: PriorData) -> PriorModel:
    """Fits a GP to a prior file's rows over the parameters it covers."""
    from orchestrator.surrogates import _fit, _gp  # local: surrogates imports this module

    sub = SearchSpace(tuple(p for p in space.parameters if p.name in data.parameters))
    columns = tuple(i for i, p in enumerate(space.parameters) if p.name in data.parameters)
    Xp = encode_loose(sub, data.rows)
    y = torch.tensor(np.array(data.y, dtype=float), dtype=DTYPE).reshape(-1, 1)
    model = _gp(sub, Xp, y)
    _fit(model)
    y_std = float(y.std()) if y.shape[0] > 1 else 1.0
    X_full = Xp if len(columns) == space.dim else None
    return PriorModel(data.name, data.outcome, data.method, columns, model, float(y.mean()), y_std or 1.0, X_full, y)


def encode_loose(space: SearchSpace, rows: list[dict]) -> torch.Tensor:
    """Like ``SearchSpace.encode`` but a discrete or integer value need only lie in range, not on a step:
    calculations are rarely run on the lab's temperature grid."""
    out = []
    for row in rows:
        vals = []
        for p in space.parameters:
            v = row[p.name]
            if isinstance(p, CategoricalParameter):
                vals.append(float(p.choices.index(v)))
            elif isinstance(p, IntegerParameter):
                vals.append(float(v))
            elif isinstance(p, DiscreteParameter):
                vals.append((float(v) - p.low) / (p.high - p.low))
            elif p.log_scale:
                vals.append((math.log(v) - math.log(p.low)) / (math.log(p.high) - math.log(p.low)))
            else:
                vals.append((float(v) - p.low) / (p.high - p.low))
        out.append(vals)
    return torch.tensor(out, dtype=DTYPE).reshape(len(out), space.dim)


class PriorMean(Mean):
    """``scale * z(x) + offset``, where ``z`` is the prior GP's prediction z-scored by the calculated values.

    Receives the outcome GP's *transformed* inputs (``... x d'``), undoes the normalization of the covered
    columns, and returns ``...`` means. The prior GP is held outside the module tree on purpose: it must
    never be trained on the experiments or switched to training mode with them.
    """

    def __init__(self, prior: PriorModel, lo: torch.Tensor, span: torch.Tensor, scale: float, offset: float):
        super().__init__()
        object.__setattr__(self, "_prior", prior)
        self.register_buffer("cols", torch.tensor(prior.columns, dtype=torch.long))
        self.register_buffer("lo", lo)
        self.register_buffer("span", span)
        self.register_parameter("scale", torch.nn.Parameter(torch.tensor(float(scale), dtype=DTYPE)))
        self.register_parameter("offset", torch.nn.Parameter(torch.tensor(float(offset), dtype=DTYPE)))

    def z(self, x: torch.Tensor) -> torch.Tensor:
        raw = x[..., self.cols] * self.span + self.lo
        g = self._prior.model.posterior(raw).mean.squeeze(-1)
        return (g - self._prior.y_mean) / self._prior.y_std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.z(x) + self.offset


def prior_mean_gp(space: SearchSpace, prior: PriorModel, X: torch.Tensor, y: torch.Tensor) -> SingleTaskGP:
    """The outcome GP (``n x d`` inputs, ``n x 1`` outcomes) with the prior as its mean function."""
    from orchestrator.surrogates import _gp

    model = _gp(space, X, y)
    bounds = space.bounds()
    ordinal = set(space.ordinal_dims)
    # Normalize maps ordinal columns by the space's bounds; categorical columns reach the mean untouched.
    lo = torch.tensor([float(bounds[0, i]) if i in ordinal else 0.0 for i in prior.columns], dtype=DTYPE)
    span = torch.tensor([float(bounds[1, i] - bounds[0, i]) if i in ordinal else 1.0 for i in prior.columns],
                        dtype=DTYPE)
    mean = PriorMean(prior, lo, span, 0.0, 0.0)
    with torch.no_grad():
        z = mean.z(model.transform_inputs(X))
        target = model.train_targets  # standardized outcomes
        # Least-squares start for (scale, offset); the marginal likelihood refines it with the residual GP.
        A = torch.stack([z, torch.ones_like(z)], dim=-1)
        coef = torch.linalg.lstsq(A, target.unsqueeze(-1)).solution.squeeze(-1)
        n = target.shape[-1]
        # Unbiased for the two fitted coefficients; with two points or fewer nothing is known of the residual.
        residual_var = float((target - A @ coef).pow(2).sum()) / (n - 2) if n > 2 else 1.0
    mean.scale.data.fill_(float(coef[0]))
    mean.offset.data.fill_(float(coef[1]))
    model.mean_module = mean
    # The residual GP's amplitude is the spread the prior leaves unexplained, not the outcome's own: held at
    # the standardized outcome's unit variance, it claimed about 1 eV of doubt at every untried material of
    # the 192-compound table, and the loop spent its budget exploring (benchmarks/transfer.py, perovskites).
    # It is fixed from the least-squares residual rather than learned, so the leave-one-out comparison with
    # the plain GP in ``auto`` is not tilted by one more free hyperparameter.
    model.covar_module = ScaleKernel(model.covar_module)
    model.covar_module.outputscale = min(max(residual_var, RESIDUAL_VAR_FLOOR), 1.0)
    model.covar_module.raw_outputscale.requires_grad_(False)
    return model


def prior_mean_coefficients(model: SingleTaskGP) -> tuple[float, float]:
    """``(scale, offset)`` of ``outcome ≈ scale * calculated + offset`` in the outcome's own units."""
    mean: PriorMean = model.mean_module
    tf = model.outcome_transform
    mu, sd = float(tf.means.squeeze()), float(tf.stdvs.squeeze())
    prior = mean._prior
    scale = sd * mean.scale.item() / prior.y_std
    offset = mu + sd * mean.offset.item() - scale * prior.y_mean
    return scale, offset


def multitask_gp(space: SearchSpace, prior: PriorModel, X: torch.Tensor, y: torch.Tensor) -> MultiTaskGP:
    """Calculation (task 0) and experiment (task 1) in one GP: the data kernel of the single-task GP
    (over inputs shifted one column right, the task column first) times a learned task covariance."""
    from orchestrator.surrogates import _kernel, model_inputs

    assert prior.X_full is not None
    train_X = torch.cat([
        torch.cat([torch.zeros(prior.X_full.shape[0], 1, dtype=DTYPE), prior.X_full], dim=-1),
        torch.cat([torch.ones(X.shape[0], 1, dtype=DTYPE), X], dim=-1),
    ])
    # Calculated values are mapped onto the experiments' mean and spread, so one ordinary Standardize serves
    # both tasks and un-standardizes predictions in the outcome's units (botorch's StratifiedStandardize
    # needs the task column at prediction time, which the acquisition never passes).
    y_std = float(y.std()) if y.shape[0] > 1 and float(y.std()) > 0 else prior.y_std
    source = (prior.y - prior.y_mean) / prior.y_std * y_std + float(y.mean())
    train_Y = torch.cat([source, y])
    # Kernel columns index the transformed inputs: the task column, the d inputs, then categorical features.
    transform, smooth = model_inputs(space, shift=1)
    kernel = _kernel(smooth)
    return MultiTaskGP(
        train_X, train_Y, task_feature=0, covar_module=kernel, output_tasks=[1], input_transform=transform,
        outcome_transform=Standardize(m=1),
    )


def loo_log_likelihood(model, n_target: int) -> float:
    """Leave-one-out log predictive density (nats) of the last ``n_target`` training points in the outcome's
    units, from one Cholesky factorization (hyperparameters as fitted on all points)."""
    model.train()
    try:
        with torch.no_grad():
            inputs = model.train_inputs
            dist = model.likelihood(model(*inputs), *inputs)
            K = dist.covariance_matrix
            L = torch.linalg.cholesky(K)
            K_inv = torch.cholesky_inverse(L)
            alpha = K_inv @ (model.train_targets - dist.mean).unsqueeze(-1)
            diag = K_inv.diagonal()
            var = 1.0 / diag
            resid = alpha.squeeze(-1) / diag
            ll = -0.5 * torch.log(2 * math.pi * var) - 0.5 * resid**2 / var
            # Standardized to outcome units: each density scales by 1/stdv (models standardize differently).
            log_stdv = float(torch.log(model.outcome_transform.stdvs).sum())
            return float(ll[-n_target:].sum()) - n_target * log_stdv
    finally:
        model.eval()


def heldout_log_likelihood(model, X_test: torch.Tensor, y_test: torch.Tensor) -> float:
    """Log predictive density (nats, summed) of ``X_test`` (``h x d``) / ``y_test`` (``h x 1``), with noise."""
    with torch.no_grad():
        post = model.posterior(X_test, observation_noise=True)
        mean, var = post.mean.reshape(-1), post.variance.reshape(-1).clamp_min(1e-12)
    resid = y_test.reshape(-1) - mean
    return float((-0.5 * torch.log(2 * math.pi * var) - 0.5 * resid**2 / var).sum())


def choose_method(loo: dict[str, float], held: dict[str, float]) -> str:
    """``auto``'s choice: the transfer model that beats ``none`` by the margin on both scores (the best sum
    if several do), else ``none``. Without a held-out score (fewer than 4 experiments) it is ``none``."""
    if not held:
        return "none"
    eligible = [m for m in loo if m != "none" and loo[m] > loo["none"] + AUTO_MARGIN_NATS
                and held[m] > held["none"] + AUTO_MARGIN_NATS]
    return max(eligible, key=lambda m: loo[m] + held[m]) if eligible else "none"
