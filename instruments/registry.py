"""The drivers a campaign file can name under ``instruments: <name>: {driver: KIND}``."""

from __future__ import annotations

import importlib
from functools import cache

from instruments.base import DriverSpec

_MODULES = (
    "instruments.ika",
    "instruments.new_era",
    "instruments.scpi",
    "instruments.spectrometer",
    "instruments.gcode",
    "instruments.line",
)


@cache
def driver_specs() -> dict[str, DriverSpec]:
    """Every driver by the ``kind`` campaign files use."""
    specs: dict[str, DriverSpec] = {}
    for module_name in _MODULES:
        spec = importlib.import_module(module_name).SPEC
        specs[spec.kind] = spec
    return specs
