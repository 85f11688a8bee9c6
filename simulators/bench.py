"""The simulated bench: byte-level simulators for every instrument a campaign names, on pseudo-terminals.

``orchestrator run FILE --simulate`` starts a :class:`SimulatedBench` and runs the unchanged drivers and
procedure against it: each configured port gets a pty under ``<root>/dev/...`` that mirrors its name
(``/dev/serial/by-id/usb-IKA-if00`` → ``<root>/dev/serial/by-id/usb-IKA-if00``), served by the firmware
simulator of the instrument's driver. Instruments that share a port (pumps on one RS-232 network) share
one pty and one firmware. All firmwares share one :class:`~simulators.lab.SimLab`: its virtual clock and
the materials model named in the campaign's ``simulator:`` section, which decides what the measuring
instruments see. The lab keeps its journal in ``<root>/journal.jsonl`` across runs of the campaign, so a run
resumed after a crash can ask what the bench did for an experiment (:meth:`SimulatedBench.inquire`).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.errors import UserInputError
from simulators.clock import VirtualClock
from simulators.faults import SOAK_KINDS, FaultKind, FaultPlan
from simulators.lab import SampleAccount, SimLab, read_journal, sample_accounts
from simulators.serial_device import Firmware, PtyDevice

if TYPE_CHECKING:
    from orchestrator.campaign import Campaign


def link_path(root: Path, port: str) -> Path:
    """Where the simulated bench serves ``port``."""
    if port.startswith("/"):
        return root / port.lstrip("/")
    return root / "dev" / "other" / re.sub(r"[^A-Za-z0-9_.-]+", "_", port)


class SimulatedBench:
    """Serves simulated instruments for a campaign.

    Args:
        campaign: a campaign with ``instruments:`` and a ``simulator:`` section naming the materials model
            and its ``sample_model``.
        root: folder for the pty links.
        fault_rate: chance that any reply is spoiled, for soak runs.
        fault_kinds: what a spoiled reply becomes, kind → share (default :data:`~simulators.faults.SOAK_KINDS`:
            every kind, line noise far more often than device alarms and disconnects).
        seed: seeds measurement noise and faults (default: the campaign's seed).
        only: serve only these instruments (a station's own); the others still inform the sample model.
    """

    def __init__(
        self,
        campaign: "Campaign",
        root: Path,
        fault_rate: float = 0.0,
        seed: int | None = None,
        fault_kinds: "Mapping[FaultKind, float] | tuple[FaultKind, ...] | None" = None,
        only: "Collection[str] | None" = None,
    ):
        self.only = None if only is None else set(only)
        self.campaign = campaign
        self.root = Path(root)
        self.fault_rate = fault_rate
        self.fault_kinds = SOAK_KINDS if fault_kinds is None else fault_kinds
        self.seed = campaign.seed if seed is None else seed
        self.journal_path = self.root / "journal.jsonl"
        self.lab = SimLab(
            VirtualClock(),
            truth=self._truth(),
            sample_model=self._sample_model(),
            seed=self.seed,
            journal_path=self.journal_path,
        )
        self.devices: dict[str, PtyDevice] = {}
        self.firmwares: dict[str, Firmware] = {}  # instrument name → its firmware
        self.port_map: dict[str, str] = {}

    def _truth(self) -> Callable[..., Any] | None:
        spec = self.campaign.simulator
        if spec is None:
            return None
        from orchestrator.simulation import build_model

        return build_model(spec, self.campaign.seed)

    def _sample_model(self) -> Callable[..., Any] | None:
        spec = self.campaign.simulator
        if spec is None or spec.sample_model is None:
            return None
        func = _import(spec.sample_model, "simulator.sample_model")
        known = inspect.signature(func).parameters
        # Bind what the model asks for from the campaign: the stage's stations, instrument names.
        kwargs: dict[str, Any] = {}
        for name, inst in (self.campaign.instruments or {}).items():
            if "stations" in inst.options and "stations" in known:
                kwargs["stations"] = inst.options["stations"]
                if "stage" in known:
                    kwargs["stage"] = name
            if inst.driver == "ika_namur" and "hotplate" in known:
                kwargs["hotplate"] = name
        return functools.partial(func, **kwargs)

    def start(self) -> "SimulatedBench":
        from instruments.registry import driver_specs

        specs = driver_specs()
        for i, (name, inst) in enumerate((self.campaign.instruments or {}).items()):
            if self.only is not None and name not in self.only:
                continue
            driver = specs[inst.driver].driver
            limits = driver.Limits.model_validate(inst.limits)
            options = driver.Options.model_validate(inst.options)
            if inst.port in self.devices:
                firmware = self.devices[inst.port].firmware
                add = getattr(firmware, "add_device", None)
                if add is None:
                    raise UserInputError(
                        f"instruments.{name}.port: the {inst.driver} simulator cannot share a port with another instrument"
                    )
                add(name, options, limits)
            else:
                make = _import(specs[inst.driver].firmware, f"the {inst.driver} simulator")
                firmware = make(name, options, limits, self.lab)
                faults = FaultPlan(rate=self.fault_rate, kinds=self.fault_kinds, seed=self.seed * 1000 + i)
                device = PtyDevice(firmware, link=link_path(self.root, inst.port), faults=faults, boot_s=0.01)
                self.devices[inst.port] = device.start()
                self.port_map[inst.port] = device.port
            self.firmwares[name] = firmware
        return self

    def stop(self) -> None:
        for device in self.devices.values():
            device.stop()
        self.lab.close()

    def inquire(self, key: str) -> SampleAccount | None:
        """What the bench did for the experiment with idempotency ``key``, from its journal (None: nothing)."""
        return sample_accounts(read_journal(self.journal_path)).get(key)

    def __enter__(self) -> "SimulatedBench":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _import(target: str, what: str) -> Callable[..., Any]:
    module_name, _, func_name = target.partition(":")
    try:
        func = getattr(importlib.import_module(module_name), func_name, None)
    except ImportError as exc:
        raise UserInputError(f"{what}: cannot import '{module_name}' ({exc})") from None
    if not callable(func):
        raise UserInputError(f"{what}: '{module_name}' has no function '{func_name}'")
    return func


def pump_runs_repeated(entries: list[dict]) -> list[str]:
    """Pump ``RUN`` commands sent twice to one address within one experiment, from a transcript.

    Experiments are told apart by the hotplate's ``OUT_SP_1`` set point, which every experiment of this
    campaign sends first (a resent set point only splits an experiment further, which cannot hide a repeat).
    """
    repeated: list[str] = []
    seen: set[bytes] = set()
    segment = 0
    for e in entries:
        if e["dir"] != "tx":
            continue
        data = bytes.fromhex(e["hex"])
        if data.startswith(b"OUT_SP_1 "):
            segment += 1
            seen = set()
        m = re.fullmatch(rb"(\d+)RUN\r", data)
        if m:
            if m.group(1) in seen:
                repeated.append(f"segment {segment}: RUN to pump {m.group(1).decode()} sent twice")
            seen.add(m.group(1))
    return repeated
