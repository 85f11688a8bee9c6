"""Opening what a campaign runs against: its simulator, its instruments, or its instruments simulated.

``open_backend`` is a context manager so that every path out of a run (the budget used, an error, Ctrl-C)
brings the instruments to a safe state and closes the ports.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from instruments.clock import WallClock
from instruments.errors import InstrumentError
from orchestrator.errors import UserInputError

if TYPE_CHECKING:
    from orchestrator.campaign import Campaign


@contextmanager
def open_backend(
    campaign: "Campaign",
    results_dir: str | Path,
    *,
    simulate: bool = False,
    transcript_path: str | Path | None = None,
    fault_rate: float = 0.0,
) -> Iterator[Any]:
    """Yields the campaign's backend: a simulator function, or an ``InstrumentBackend``.

    Args:
        campaign: the campaign.
        results_dir: the results folder (raw readings go to ``<results>/<campaign>/raw/``).
        simulate: run the instruments' byte-level simulators instead of the real ports.
        transcript_path: record every byte to this JSONL file.
        fault_rate: with ``simulate``, the chance that a simulated reply is spoiled.

    Raises:
        UserInputError: the simulator cannot be built, or the instruments cannot be reached.
    """
    from orchestrator.simulation import build_simulator

    if campaign.instruments is None:
        yield build_simulator(campaign)
        return
    from instruments.transport import Transcript

    transcript = Transcript(transcript_path) if transcript_path is not None else None
    try:
        yield from _instruments(campaign, Path(results_dir), simulate, transcript, fault_rate)
    finally:
        if transcript is not None:
            transcript.close()


def _instruments(
    campaign: "Campaign", results_dir: Path, simulate: bool, transcript: Any, fault_rate: float
) -> Iterator[Any]:
    from orchestrator.hardware import InstrumentBackend, make_drivers

    raw_dir = results_dir / campaign.name / "raw"
    if campaign.stations is not None:
        from orchestrator.station_dispatch import StationBackend

        if transcript is not None or fault_rate:
            raise UserInputError(
                "--transcript and --fault-rate act on one PC's ports; with stations the bytes flow on the station PCs "
                "(run a station's campaign part on its own to record them)"
            )
        yield from _connected(StationBackend(campaign, raw_dir, simulate=simulate))
        return
    if simulate:
        from simulators.bench import SimulatedBench

        if campaign.simulator is None or campaign.simulator.sample_model is None:
            raise UserInputError(
                "--simulate needs a 'simulator:' section with the materials model and its 'sample_model' "
                "(e.g. simulator: {model: perovskite_film, sample_model: simulators.perovskite_lab:film_conditions})"
            )
        with SimulatedBench(campaign, Path(results_dir) / campaign.name / "simulated", fault_rate=fault_rate) as bench:
            drivers = make_drivers(campaign, port_map=bench.port_map, transcript=transcript, clock=bench.lab.clock)
            backend = InstrumentBackend(
                campaign, drivers, bench.lab.clock, raw_dir, before_experiment=bench.lab.new_sample, inquire=bench.inquire
            )
            yield from _connected(backend)
        return
    drivers = make_drivers(campaign, transcript=transcript, clock=WallClock())
    yield from _connected(InstrumentBackend(campaign, drivers, WallClock(), raw_dir))


def _connected(backend: Any) -> Iterator[Any]:
    try:
        backend.connect()
    except InstrumentError as exc:
        backend.close()
        raise UserInputError(f"cannot connect to the instruments: {exc} (to try the campaign without hardware, add --simulate)") from None
    try:
        yield backend
    finally:
        backend.close()
