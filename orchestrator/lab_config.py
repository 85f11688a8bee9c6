"""Campaign-file models for running on instruments: ``instruments:``, ``procedure:`` and ``analysis:``.

The shapes are checked here; what depends on the drivers (their options, limits and actions, and
whether every condition the search space allows stays within the limits) is checked by
:func:`orchestrator.hardware.lab_problems` when the campaign is loaded.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from orchestrator.parameters import Strict

_MODULE_FUNCTION = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


_Strict = Strict


class PortSettings(_Strict):
    """Overrides of a device's factory line settings, when the device was configured otherwise."""

    baudrate: Annotated[int, Field(gt=0, le=4_000_000)] | None = None
    bytesize: Literal[7, 8] | None = None
    parity: Literal["N", "E", "O"] | None = None
    stopbits: Literal[1, 2] | None = None
    timeout_s: Annotated[float, Field(gt=0, le=600)] | None = None
    open_settle_s: Annotated[float, Field(ge=0, le=30)] | None = None


class InstrumentSpec(_Strict):
    """One instrument: which driver, on which port, with which options and safe limits."""

    driver: str = Field(description="Driver kind: ika_namur, new_era, scpi_smu, line_spectrometer, grbl, line.")
    port: str = Field(
        description="Stable port name: /dev/serial/by-id/..., socket://host:port, or usb:VID:PID[:SERIAL]."
    )
    serial: PortSettings = PortSettings()
    options: dict[str, Any] = Field(default_factory=dict, description="Driver options (address, syringe size …).")
    limits: dict[str, Any] = Field(default_factory=dict, description="Safe limits; commands outside are refused.")
    station: str | None = Field(
        None, description="With 'stations:': the station (lab PC) this instrument is attached to."
    )


class StationSpec(_Strict):
    """A lab PC that owns some of the instruments: its steps run there, as flow runs its Prefect worker picks up."""

    pool: Annotated[str, Field(min_length=1, max_length=100)] = Field(
        description="The Prefect process work pool whose worker runs on this PC (`prefect worker start --pool POOL`)."
    )
    queue: Annotated[str, Field(min_length=1, max_length=100)] | None = Field(
        None, description="A work queue of the pool (default: the pool's default queue)."
    )


class ProcedureSpec(_Strict):
    """The steps of one experiment: a list in the file, or a Python function."""

    steps: list[Any] | None = Field(None, description="Steps like 'hotplate.set_temperature: \"{anneal_temp_c}\"'.")
    function: str | None = Field(None, description="'package.module:function' returning a list of steps.")

    @model_validator(mode="after")
    def _one(self) -> "ProcedureSpec":
        if (self.steps is None) == (self.function is None):
            raise ValueError("give exactly one of 'steps' (a list) or 'function' (package.module:function)")
        if self.function is not None and not _MODULE_FUNCTION.match(self.function):
            raise ValueError(f"function '{self.function}' is not of the form package.module:function")
        return self


class AnalysisSpec(_Strict):
    """Turns one raw reading into outcomes: ``function(reading, **options) -> {quantity: value}``."""

    reading: str = Field(description="Label of the reading (a step's 'as:', or the instrument's name).")
    function: str = Field(description="Built-in (pl_peak, iv_metrics) or 'package.module:function'.")
    outcomes: dict[str, str] = Field(description="Quantity the function returns → campaign outcome it fills.")
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> "AnalysisSpec":
        if ":" in self.function and not _MODULE_FUNCTION.match(self.function):
            raise ValueError(f"function '{self.function}' is not of the form package.module:function")
        if not self.outcomes:
            raise ValueError("map at least one quantity to an outcome, e.g. outcomes: {peak_energy_ev: band_gap_ev}")
        return self
