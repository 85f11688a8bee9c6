"""Deterministic simulators that stand in for real experiments.

Every simulator follows :class:`simulators.base.Simulator`: ``sim(conditions, rng)`` returns one float per
outcome or raises :class:`~orchestrator.errors.ExperimentFailed`, and ``sim.truth(conditions)`` gives the
noise-free values. Campaign files name a simulator by its key in :data:`BUILTIN_MODELS` and pass options::

    sim = BUILTIN_MODELS["perovskite_film"](noise_scale=0.5)
    sim = BUILTIN_MODELS["dataset"](dataset="suzuki", mode="emulator")

Unknown options raise :class:`~orchestrator.errors.SimulatorError` naming the allowed ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from simulators.base import Simulator, strict_options
# Aliased so that ``simulators.perovskite_film`` stays the module, not its factory function.
from simulators.perovskite_film import perovskite_film as _perovskite_film

__all__ = ["BUILTIN_MODELS", "Simulator"]


def _dataset(**options: Any) -> Simulator:
    """Factory for ``"dataset"``; options as :func:`simulators.datasets.dataset_simulator`."""
    # Imported on use: the dataset module pulls in torch and BoTorch, which a perovskite-only run never needs.
    from simulators.datasets import dataset_simulator

    return dataset_simulator(**options)


def _perovskites_measured(**options: Any) -> Simulator:
    """Factory for ``"perovskites_measured"``; options as :func:`simulators.dft.perovskites_measured`."""
    from simulators.dft import perovskites_measured

    return perovskites_measured(**options)


BUILTIN_MODELS: dict[str, Callable[..., Simulator]] = {
    "perovskite_film": _perovskite_film,
    "dataset": _dataset,
    "perovskites_measured": _perovskites_measured,
}
