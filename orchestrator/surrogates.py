"""Gaussian-process surrogates: one GP per outcome, plus a success model once an experiment has failed."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from botorch.exceptions.errors import ModelFittingError
from botorch.exceptions.warnings import OptimizationWarning
from botorch.fit import fit_gpytorch_mll
from botorch.models import ModelListGP, SingleTaskGP
from botorch.models.transforms.input import ChainedInputTransform, InputTransform, Normalize
from botorch.models.transforms.outcome import Standardize
from botorch.models.utils.gpytorch_modules import get_covar_module_with_dim_scaled_prior
from gpytorch.kernels import Kernel

from orchestrator.dense_mll import marginal_log_likelihood
from orchestrator.space import DTYPE, SearchSpace

if TYPE_CHECKING:
    from orchestrator.transfer import PriorModel

log = logging.getLogger(__name__)

# L-BFGS steps for the hyperparameters. Weakly identified lengthscales (one-hot columns, knobs that do not
# matter) let the optimizer wander for ~800 steps (seconds per fit) without a better model; 200 is plenty.
FIT_MAXITER = 200
# L-BFGS memory (correction pairs) for models in spaces with a categorical. scipy's default of 10 is below
# the number of hyperparameters there (a lengthscale per one-hot or descriptor column, scale, noise, mean),
# and along the flat directions of lengthscales that run off to "irrelevant" the search crawls to the cap.
# Measured on the perovskite space (one-hot antisolvent) at 20-100 random points, 9 fits: 50 pairs took
# 20-95 steps instead of 135-200, at the same marginal likelihood in 8 of 9 (one stopped lower, by 0.3).
# Fits in continuous spaces converge in ~40 steps either way and keep the default.
MIXED_FIT_MAXCOR = 50


@dataclass(frozen=True)
class Surrogate:
    """A fitted model list: outcome GPs first (``m`` of them), then the success model if any."""

    model: ModelListGP
    has_feasibility: bool
    fit_s: float
    transfer: dict[int, dict] = field(default_factory=dict)


def fit_surrogate(space: SearchSpace, obs, priors: Mapping[int, "PriorModel"] | None = None) -> Surrogate:
    """Fits one GP per outcome to the completed experiments, and a success model when some failed.

    Args:
        space: the search space (which columns are categorical, and the encoded bounds).
        obs: ``Observations`` with ``X`` (``n x d``), ``Y`` (``n x m``) and ``X_failed`` (``f x d``).
        priors: calculated data per outcome column; the outcome's GP then uses it as configured
            (``orchestrator.transfer``), and ``Surrogate.transfer`` records the method used.
    """
    t0 = time.perf_counter()
    models, transfer = [], {}
    maxcor = MIXED_FIT_MAXCOR if space.cat_dims else None
    for k in range(obs.Y.shape[-1]):
        y = obs.Y[:, k : k + 1]
        if priors and k in priors:
            model, transfer[k] = _transfer_model(space, priors[k], obs.X, y)
        else:
            model = _gp(space, obs.X, y)
            _fit(model, maxcor)
        models.append(model)
    has_feasibility = obs.X_failed.shape[0] > 0
    if has_feasibility:
        X_all = torch.cat([obs.X, obs.X_failed])
        success = torch.cat([torch.ones(obs.X.shape[0], 1), torch.zeros(obs.X_failed.shape[0], 1)]).to(X_all)
        # A GP regressed on 0/1 is a crude classifier, but its posterior is Gaussian, so the acquisition
        # can weight by P(success) through botorch's constraint machinery with no extra approximation.
        models.append(_gp(space, X_all, success, standardize=False))
        _fit(models[-1], maxcor)
    return Surrogate(ModelListGP(*models), has_feasibility, time.perf_counter() - t0, transfer)


def _transfer_model(space: SearchSpace, prior: "PriorModel", X: torch.Tensor, y: torch.Tensor):
    """The outcome's GP by the prior's method; for ``auto`` see ``orchestrator.transfer.choose_method``."""
    from orchestrator.transfer import (
        choose_method,
        heldout_log_likelihood,
        loo_log_likelihood,
        multitask_gp,
        prior_mean_gp,
    )

    def fitted(method: str, Xs: torch.Tensor, ys: torch.Tensor):
        if method == "none":
            model = _gp(space, Xs, ys)
        else:
            model = (prior_mean_gp if method == "prior_mean" else multitask_gp)(space, prior, Xs, ys)
        _fit(model)
        return model

    candidates = prior.candidates()
    models = {m: fitted(m, X, y) for m in candidates}
    info: dict = {"outcome": prior.outcome, "prior": prior.name}
    if len(candidates) == 1:
        return models[candidates[0]], {**info, "method": candidates[0]}
    n = X.shape[0]
    loo = {m: loo_log_likelihood(model, n) for m, model in models.items()}
    held: dict[str, float] = {}
    h = max(1, n // 4)  # the latest experiments, predicted by models fitted to the earlier ones
    if n - h >= 3:
        held = {m: heldout_log_likelihood(fitted(m, X[:-h], y[:-h]), X[-h:], y[-h:]) for m in candidates}
    chosen = choose_method(loo, held)
    info.update(method=chosen, loo_nats={k: round(v, 3) for k, v in loo.items()},
                heldout_nats={k: round(v, 3) for k, v in held.items()})
    return models[chosen], info


def _gp(space: SearchSpace, X: torch.Tensor, y: torch.Tensor, standardize: bool = True) -> SingleTaskGP:
    input_transform, smooth = model_inputs(space)
    transform = Standardize(m=1) if standardize else None
    return SingleTaskGP(X, y, covar_module=_kernel(smooth), input_transform=input_transform,
                        outcome_transform=transform)


def model_inputs(space: SearchSpace, shift: int = 0) -> tuple[InputTransform | None, list[int]]:
    """The input transform of a model over the encoded space, and the columns its kernel sees.

    Ordinal columns are scaled to [0, 1]. Every categorical is replaced, for the kernel, by features
    appended after the inputs: its descriptors when the campaign gives them, else one-hot columns. The
    index column itself stays (the acquisition optimizer moves along it) but no kernel sees it.

    Args:
        shift: columns in front of the encoded ones (a multi-task model's task column).
    """
    d = space.dim + shift
    bounds = torch.cat([torch.tensor([[0.0], [1.0]], dtype=DTYPE).expand(2, shift), space.bounds()], dim=-1)
    ordinal = [i + shift for i in space.ordinal_dims]
    # Without ``indices`` when every column is ordinal: botorch's subset path copies the inputs on every call
    # (2-4 % of a Hartmann-6 or Suzuki proposal at 20 observations), for the same values.
    indices = ordinal if len(ordinal) < d else None
    normalize = Normalize(d=d, bounds=bounds, indices=indices) if ordinal else None
    tables = {i + shift: t for i, t in categorical_features(space).items()}
    transform: InputTransform | None = normalize
    if tables:
        features = CategoricalFeatures(tables)
        transform = ChainedInputTransform(normalize=normalize, features=features) if normalize else features
    return transform, ordinal + list(range(d, d + sum(t.shape[1] for t in tables.values())))


def categorical_features(space: SearchSpace) -> dict[int, torch.Tensor]:
    """Column → ``k x p`` feature table of each categorical: its descriptors scaled to [0, 1] per
    descriptor, or the ``k x k`` identity (one-hot) when it has none."""
    out = {}
    for i in space.cat_dims:
        p = space.parameters[i]
        if getattr(p, "descriptors", None):
            t = torch.tensor(p.descriptor_table(), dtype=DTYPE)
            lo, hi = t.min(dim=0).values, t.max(dim=0).values
            out[i] = (t - lo) / torch.where(hi > lo, hi - lo, torch.ones_like(hi))
        else:
            out[i] = torch.eye(len(p.choices), dtype=DTYPE)
    return out


class CategoricalFeatures(InputTransform, torch.nn.Module):
    """Appends each categorical's feature row (``k x p`` table) to the inputs: ``n x d`` → ``n x (d + sum p)``.

    With descriptors the kernel compares choices by them, so data on one solvent informs predictions for a
    similar one. Without them the one-hot columns share the RBF kernel (and its dimension-scaled lengthscale
    prior) with the ordered knobs, as Ax models choices. Against the product of an RBF and botorch's
    ``CategoricalKernel`` used before, on ``benchmarks/peers.py`` (10 seeds, budget 30, sequential): the
    perovskite simulator reached 95 % in 7 of 10 seeds instead of 4, the 192-compound band-gap lookup in a
    median of 10 experiments instead of 14, and a proposal took no longer.
    """

    def __init__(self, tables: dict[int, torch.Tensor]):
        super().__init__()
        self.transform_on_train = True
        self.transform_on_eval = True
        self.transform_on_fantasize = True
        self.tables = tables

    def transform(self, X: torch.Tensor) -> torch.Tensor:
        extra = []
        for i, table in self.tables.items():
            idx = X[..., i].round().long().clamp(0, table.shape[0] - 1)
            extra.append(table.to(X)[idx])
        return torch.cat([X, *extra], dim=-1)


def _kernel(smooth: list[int]) -> Kernel | None:
    """RBF (ARD, botorch's dimension-scaled lengthscale prior) over the ``smooth`` columns; ``None`` (botorch's
    default, the same kernel) when those are exactly the model's inputs in order."""
    if smooth == list(range(len(smooth))) and smooth:
        return None
    return get_covar_module_with_dim_scaled_prior(ard_num_dims=len(smooth), active_dims=smooth)


def _fit(model, maxcor: int | None = None) -> None:
    """Fits the hyperparameters; a fit that fails numerically leaves the model at its prior-based
    initial hyperparameters (still a usable GP) rather than stopping the campaign.

    Args:
        maxcor: L-BFGS memory (scipy's default 10 when ``None``); see ``MIXED_FIT_MAXCOR``.
    """
    mll = marginal_log_likelihood(model)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    with warnings.catch_warnings():
        # botorch retries a failed fit itself; its warnings are noise on a user's console.
        warnings.simplefilter("ignore", OptimizationWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            options = {"maxiter": FIT_MAXITER} if maxcor is None else {"maxiter": FIT_MAXITER, "maxcor": maxcor}
            fit_gpytorch_mll(mll, optimizer_kwargs={"options": options})
        except (RuntimeError, ValueError, ModelFittingError) as exc:  # LinAlgError and NotPSDError included
            log.warning("GP fit failed numerically (%s); using the initial hyperparameters", exc)
            model.load_state_dict(initial)
    model.eval()
