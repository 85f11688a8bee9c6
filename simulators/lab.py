"""The simulated lab's physical world, shared by the byte-level simulators of one campaign.

Firmwares report what they physically did (``record``): a pump dispensed 40 µL of its reagent, the stage
moved the sample to (x, y, z), the hotplate's set point changed. The world keeps every event in order;
``new_sample()`` (a fresh substrate, at the start of each experiment) adds a ``new_sample`` marker, so
a sample's own events are those after the last marker while instrument state that outlives a sample
(a plate that is already hot) can still be read from the earlier ones. Instruments that measure ask the world what they see: a spectrometer gets the
sample's photoluminescence (:meth:`SimLab.emission`), a source-measure unit the current through the
sample's device at a voltage (:meth:`SimLab.current_a`).

What the sample *is* follows from its history through a ``sample_model``: a function from the history
to the conditions the materials model takes (``simulators.perovskite_lab.film_conditions`` turns
dispensed stock volumes, the quench station visited and the hotplate trace into composition,
concentration, antisolvent, anneal temperature and time). So a procedure that dispenses the wrong
volume, or anneals too briefly, measures a different film, as it would in a real lab.

The ground truth is a :class:`~simulators.base.Simulator` (e.g. the perovskite film model): its noisy
outcomes for the derived conditions decide the emission peak, or no emission where the film fails.

With a ``journal_path`` every event is also appended (and fsynced) to a JSON-lines file labelled with the
experiment's idempotency key, which outlives the process: the lab's own account of what it physically did,
which a run resumed after a crash asks (:func:`sample_account`) and which crash tests check the ledger
against.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.errors import ExperimentFailed, SimulatorError
from simulators.clock import VirtualClock

HC_EV_NM = 1239.84193  # photon energy (eV) times wavelength (nm)
# Events that change or use up material: a sample that saw one of these has been made (at least partly).
MATERIAL_EVENTS = frozenset({"dispensed", "command"})


@dataclass(frozen=True)
class Emission:
    """A photoluminescence peak as a spectrometer would see it.

    Attributes:
        peak_nm: peak wavelength.
        height_counts: peak height in detector counts at 100 ms integration.
        fwhm_nm: full width at half maximum.
    """

    peak_nm: float
    height_counts: float
    fwhm_nm: float


@dataclass
class Event:
    """One physical event: ``instrument`` did ``kind`` at ``t_s`` (virtual seconds) with ``data``."""

    t_s: float
    instrument: str
    kind: str
    data: dict[str, Any] = field(default_factory=dict)


SampleModel = Callable[[list[Event]], dict[str, Any]]


class SimLab:
    """The world of one simulated campaign run.

    Args:
        clock: the virtual clock every firmware and driver shares.
        truth: the materials model (``sim(conditions, rng) -> outcomes``; raises ``ExperimentFailed``).
        sample_model: ``f(events)`` → the conditions ``truth`` takes, from every event so far (the current
            sample's follow the last ``new_sample`` marker; the bench binds what else it needs, such as the
            stage's stations, with ``functools.partial``).
        seed: seeds measurement noise.
        counts_per_pl: detector counts per unit of the model's ``pl_intensity`` at 100 ms.
        journal_path: append every event, labelled with the current sample's key, to this file.
    """

    def __init__(
        self,
        clock: VirtualClock | None = None,
        truth: Callable[[Mapping[str, Any], np.random.Generator], Mapping[str, float]] | None = None,
        sample_model: SampleModel | None = None,
        seed: int = 0,
        counts_per_pl: float = 400.0,
        journal_path: str | Path | None = None,
    ):
        self.clock = clock or VirtualClock()
        self.truth = truth
        self.sample_model = sample_model
        self.counts_per_pl = counts_per_pl
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.events: list[Event] = []
        self.sample_no = 0
        self._measured: tuple[Any, dict[str, float] | None, str] | None = None  # (key, outcomes, why not)
        self._lock = threading.RLock()
        self.sample_key: str | None = None
        self.sample_experiment: int | None = None
        self._journal = None
        if journal_path is not None:
            Path(journal_path).parent.mkdir(parents=True, exist_ok=True)
            self._journal = open(journal_path, "a", encoding="utf-8")

    def _write_journal(self, event: Event) -> None:
        if self._journal is None:
            return
        entry = {
            "t_s": event.t_s, "instrument": event.instrument, "kind": event.kind, "data": event.data,
            "key": self.sample_key, "experiment": self.sample_experiment, "sample": self.sample_no,
        }
        if event.kind == "measured" and self._measured is not None and self._measured[0][0] == self.sample_no:
            # What the film truly was, for crash tests to compare with the ledger (never read by the run).
            entry["truth"] = self._measured[1]
        self._journal.write(json.dumps(entry, default=float) + "\n")
        self._journal.flush()
        os.fsync(self._journal.fileno())

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    # --- what firmwares report -------------------------------------------------------------------
    def record(self, instrument: str, kind: str, **data: Any) -> None:
        """A firmware reports a physical event for the current sample."""
        with self._lock:
            event = Event(self.clock.now_s(), instrument, kind, dict(data))
            self.events.append(event)
            self._write_journal(event)

    def new_sample(self, sample_id: int | None = None, key: str | None = None) -> None:
        """Starts a fresh sample (a new substrate); the executor calls it at the start of each experiment.

        With ``sample_id`` (the experiment's id) the measurement noise is drawn from a generator seeded by
        it, so an experiment measures the same whatever order a batch's experiments reach the bench in.
        ``key`` (the experiment's idempotency key) labels the sample in the journal.
        """
        with self._lock:
            if sample_id is not None:
                self.rng = np.random.default_rng([self.seed, sample_id])
            self.sample_no += 1
            self.sample_key, self.sample_experiment = key, sample_id
            event = Event(self.clock.now_s(), "lab", "new_sample", {"sample": self.sample_no})
            self.events.append(event)
            self._write_journal(event)

    def continue_sample(self, sample_id: int, key: str | None, events: list[dict[str, Any]]) -> None:
        """Takes over a sample another station worked on: ``events`` is its history there (``history`` as
        dicts), as the sample carries it physically. The lab's clock moves on to the last of them; the
        carried events are not journalled, as this lab did not do them."""
        with self._lock:
            self.new_sample(sample_id, key)
            carried = [Event(float(e["t_s"]), str(e["instrument"]), str(e["kind"]), dict(e.get("data") or {})) for e in events]
            self.events.extend(carried)
            latest = max((e.t_s for e in carried), default=0.0)
            if latest > self.clock.now_s():
                self.clock.advance(latest - self.clock.now_s())

    @property
    def history(self) -> list[Event]:
        """The current sample's events (those after the last ``new_sample`` marker)."""
        with self._lock:
            starts = [i for i, e in enumerate(self.events) if e.kind == "new_sample"]
            return list(self.events[starts[-1] + 1 :] if starts else self.events)

    # --- what measuring instruments see ----------------------------------------------------------
    def conditions(self) -> dict[str, Any]:
        """The current sample's conditions as the materials model sees them (from its history)."""
        if self.sample_model is None:
            raise ExperimentFailed("the simulated lab has no sample model; nothing to measure")
        with self._lock:
            return self.sample_model(list(self.events))

    def outcomes(self) -> tuple[dict[str, float] | None, str]:
        """The materials model's (noisy) outcomes for the current sample, drawn once per sample.

        Returns:
            (outcomes, "") for a film that formed, (None, reason) for one that did not.
        """
        with self._lock:
            try:
                conditions = self.conditions()
            except (ExperimentFailed, SimulatorError) as exc:
                return None, getattr(exc, "reason", str(exc))
            # One noise draw per sample and state: measuring twice sees the same film, re-annealing a new one.
            key = (self.sample_no, repr(sorted(conditions.items())))
            if self._measured is None or self._measured[0] != key:
                if self.truth is None:
                    raise ExperimentFailed("the simulated lab has no materials model")
                try:
                    out: dict[str, float] | None = dict(self.truth(conditions, self.rng))
                    why = ""
                except ExperimentFailed as exc:
                    out, why = None, exc.reason
                except SimulatorError as exc:
                    # The sample was processed outside what the materials model knows (e.g. never annealed).
                    out, why = None, f"sample outside the materials model: {exc}"
                self._measured = (key, out, why)
            return self._measured[1], self._measured[2]

    def emission(self) -> Emission | None:
        """The current sample's PL peak, or None where no film formed (the spectrum shows no peak)."""
        out, _ = self.outcomes()
        if out is None:
            return None
        eg = out["band_gap_ev"]
        return Emission(
            peak_nm=HC_EV_NM / eg,
            height_counts=max(0.0, out["pl_intensity"]) * self.counts_per_pl,
            fwhm_nm=out.get("fwhm_nm", 30.0),
        )

    def current_a(self, voltage_v: float, illuminated: bool = True) -> float:
        """Current (A) through a 0.1 cm² photodiode made of the current sample at ``voltage_v``.

        Shockley diode with a photocurrent: I = I0 (exp(V / (n Vt)) - 1) - I_ph, where a wider gap lowers
        the saturation current (I0 ∝ exp(-Eg / (n Vt)), giving an open-circuit voltage ~ Eg - 0.6 V for a
        good film) and a brighter film (less non-radiative loss) raises the photocurrent. No film: an open
        circuit (1 nA leakage per volt).
        """
        out, _ = self.outcomes()
        if out is None:
            return 1e-9 * voltage_v
        n_vt = 1.5 * 0.025852
        eg = out["band_gap_ev"]
        i_ph = 2.0e-3 * min(1.0, max(0.0, out["pl_intensity"]) / 100.0) if illuminated else 0.0
        i0 = 1.0e4 * math.exp(-eg / n_vt)
        exponent = min(voltage_v / n_vt, 60.0)
        return i0 * (math.exp(exponent) - 1.0) - i_ph


# --- the journal, read back ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleAccount:
    """What the simulated lab did to the samples labelled with one key (across process restarts).

    Attributes:
        key: the experiment's idempotency key.
        samples: how many substrates were started for it.
        material_samples: how many of those saw material events (a dispense): made at least partly.
        events: the material and measuring events, in order, as ``instrument kind`` strings.
        measured: a measurement was taken of a sample that had material.
        truth: the materials model's outcomes at the last such measurement (None: no film formed or none).
    """

    key: str
    samples: int
    material_samples: int
    events: tuple[str, ...]
    measured: bool
    truth: dict[str, float] | None

    def describe(self) -> str:
        if self.material_samples == 0:
            return f"the simulated lab started {self.samples} substrate(s) for it but dispensed nothing onto them"
        done = ", ".join(self.events[:12]) + (" …" if len(self.events) > 12 else "")
        return (
            f"the simulated lab made {self.material_samples} sample(s) for it ({done}); "
            + ("it was measured" if self.measured else "it was not measured")
        )


def read_journal(path: str | Path) -> list[dict[str, Any]]:
    """Every complete entry of a lab journal (a line cut short by a kill is skipped)."""
    entries = []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return entries


def sample_accounts(entries: list[dict[str, Any]]) -> dict[str, SampleAccount]:
    """The journal's entries grouped by key into accounts."""
    by_key: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        if e.get("key") is not None:
            by_key.setdefault(e["key"], []).append(e)
    out = {}
    for key, items in by_key.items():
        samples: dict[tuple[int, int], list[dict[str, Any]]] = {}
        run = 0
        for e in items:
            if e["kind"] == "new_sample":
                run += 1
            samples.setdefault((run, e["sample"]), []).append(e)
        material = [s for s in samples.values() if any(e["kind"] in MATERIAL_EVENTS for e in s)]
        events = tuple(
            f"{e['instrument']} {e['kind']}"
            for s in material for e in s if e["kind"] in MATERIAL_EVENTS or e["kind"] == "measured"
        )
        measured = [e for s in material for e in s if e["kind"] == "measured" and e["data"].get("shutter_open", True)]
        out[key] = SampleAccount(
            key=key,
            samples=sum(1 for e in items if e["kind"] == "new_sample"),
            material_samples=len(material),
            events=events,
            measured=bool(measured),
            truth=measured[-1].get("truth") if measured else None,
        )
    return out
