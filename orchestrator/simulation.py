"""Building the simulated lab a campaign names: a built-in model, a user's function, or a dataset."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from orchestrator.campaign import Campaign, SimulatorSpec
from orchestrator.errors import SimulatorError, UserInputError

SimulatorFn = Callable[[Mapping[str, Any], np.random.Generator], Mapping[str, float]]


def build_simulator(campaign: Campaign) -> SimulatorFn:
    """Returns ``f(conditions, rng) -> outcomes`` for the campaign's ``simulator:`` section.

    A ``package.module:function`` model is called as ``function(conditions, rng, **options)`` and returns a
    dict of outcomes or raises ``orchestrator.errors.ExperimentFailed``.

    Raises:
        UserInputError: the model or dataset is unknown, cannot be imported, or lacks an outcome the campaign
            measures.
    """
    spec = campaign.simulator
    if spec is None:
        raise UserInputError("the campaign has no 'simulator:' section; add one, e.g. simulator: {model: perovskite_film}")
    try:
        sim = build_model(spec, campaign.seed)
    except SimulatorError as exc:
        raise UserInputError(f"simulator: {exc}") from None
    provided = getattr(sim, "outcomes", None)
    if provided is not None:
        missing = [o.name for o in campaign.outcomes if o.name not in provided]
        if missing:
            raise UserInputError(
                f"simulator does not measure {', '.join(missing)}; it provides: {', '.join(provided)}. "
                "Rename the campaign's outcomes to match"
            )
    return sim


def build_model(spec: SimulatorSpec, seed: int) -> SimulatorFn:
    """The materials model or dataset emulator a ``simulator:`` section names (outcomes not checked)."""
    if spec.dataset is not None:
        from simulators.datasets import dataset_simulator

        options = dict(spec.options)
        unknown = set(options) - {"noise_scale"}
        if unknown:
            raise SimulatorError(f"unknown option(s) for a dataset: {', '.join(sorted(unknown))}; allowed: noise_scale")
        return dataset_simulator(spec.dataset, mode=spec.mode, noise_scale=options.get("noise_scale"), seed=seed)
    assert spec.model is not None
    if ":" in spec.model:
        return _user_function(spec.model, spec.options)
    from simulators import BUILTIN_MODELS

    if spec.model not in BUILTIN_MODELS:
        raise SimulatorError(
            f"unknown model '{spec.model}'; built-in models: {', '.join(sorted(BUILTIN_MODELS))}, "
            "or name your own as 'package.module:function'"
        )
    return BUILTIN_MODELS[spec.model](**spec.options)


def _user_function(target: str, options: Mapping[str, Any]) -> SimulatorFn:
    module_name, _, func_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SimulatorError(f"cannot import '{module_name}' ({exc}); is it installed or on PYTHONPATH?") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise SimulatorError(f"'{module_name}' has no function '{func_name}'")
    try:
        inspect.signature(func).bind({}, None, **options)
    except TypeError as exc:
        raise SimulatorError(f"{target} cannot be called as {func_name}(conditions, rng, **options): {exc}") from None

    def simulate(conditions: Mapping[str, Any], rng: np.random.Generator) -> Mapping[str, float]:
        return func(dict(conditions), rng, **options)

    return simulate
