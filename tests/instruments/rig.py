"""A driver wired to its firmware simulator on a real pseudo-terminal, as the driver tests use it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from instruments.transport import SerialSettings, Transcript, Transport
from simulators.faults import FaultPlan
from simulators.lab import SimLab
from simulators.serial_device import Firmware, PtyDevice


def serve(
    tmp_path: Any,
    firmware: Firmware,
    driver_cls: type,
    *,
    name: str,
    link: str,
    lab: SimLab,
    settings: SerialSettings,
    limits: Any = None,
    options: Any = None,
    connect: bool = False,
) -> SimpleNamespace:
    """Serves ``firmware`` under ``<tmp_path>/serial/by-id/<link>`` (late replies after 0.5 s, a disconnect
    lasting 0.1 s) and builds ``driver_cls`` on a recorded transport; connects it if asked (stopping the
    pty again if connecting fails). Returns ``lab, fw, dev, drv, transcript, transport``."""
    dev = PtyDevice(firmware, link=tmp_path / "serial" / "by-id" / link, faults=FaultPlan(late_s=0.5, down_s=0.1)).start()
    transcript = Transcript()
    transport = Transport(dev.port, settings, name=name, transcript=transcript)
    driver = driver_cls(transport, name=name, limits=limits, options=options, clock=lab.clock)
    if connect:
        try:
            driver.connect()
        except BaseException:
            transport.close()
            dev.stop()
            raise
    return SimpleNamespace(lab=lab, fw=firmware, dev=dev, drv=driver, transcript=transcript, transport=transport)
