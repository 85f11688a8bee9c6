"""Raw readings that measuring instruments return, before analysis turns them into outcomes.

They are plain frozen records with a JSON form, so the executor can store each raw reading beside the
ledger (the ledger keeps its path) and every outcome can be traced to the data it came from.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Spectrum:
    """An emission or absorption spectrum.

    Attributes:
        wavelength_nm: the n pixel wavelengths, ascending.
        counts: the n detector counts (dark-subtracted if the device does so).
        integration_ms: the exposure.
    """

    wavelength_nm: tuple[float, ...]
    counts: tuple[float, ...]
    integration_ms: float

    kind = "spectrum"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}


@dataclass(frozen=True)
class IVCurve:
    """A current–voltage sweep.

    Attributes:
        voltage_v: the n source voltages, in sweep order.
        current_a: the n measured currents.
        compliance_a: the current limit the source held to.
    """

    voltage_v: tuple[float, ...]
    current_a: tuple[float, ...]
    compliance_a: float

    kind = "iv_curve"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}


@dataclass(frozen=True)
class Values:
    """Named values an instrument answered with (a balance's mass, a custom rig's reply).

    Attributes:
        values: name → number or text.
    """

    values: dict[str, float | str]

    kind = "values"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "values": dict(self.values)}


Reading = Spectrum | IVCurve | Values


def reading_from_json(data: dict[str, Any]) -> Reading:
    """Inverse of ``to_json``."""
    kind = data.get("kind")
    fields = {k: v for k, v in data.items() if k != "kind"}
    if kind == "spectrum":
        return Spectrum(tuple(fields["wavelength_nm"]), tuple(fields["counts"]), float(fields["integration_ms"]))
    if kind == "iv_curve":
        return IVCurve(tuple(fields["voltage_v"]), tuple(fields["current_a"]), float(fields["compliance_a"]))
    if kind == "values":
        return Values(dict(fields["values"]))
    raise ValueError(f"unknown reading kind {kind!r}")


def dumps(reading: Reading) -> str:
    return json.dumps(reading.to_json())
