"""Byte-level simulator of the ASCII spectrometer controller of ``instruments.spectrometer``.

It implements that module's protocol (the reference implementation; see its docstring for the command
table) with a detector of 512 pixels and this wavelength calibration, answered by ``CAL?``::

    wavelength(i) = 399.54 + 1.1826·i − 1.36e-5·i² − 1.0e-9·i³ nm   (i = 0 … 511: 399.5 … 1000.2 nm)

Power-on state: integration 100 ms, shutter closed. Integration range 1 … 60000 ms (``ERR 2`` outside).

Each ``MEAS?`` exposure, for pixel wavelength λ and integration time t (ms):

- dark level 500 counts + dark current 0.05 counts/ms;
- with the shutter open, the current sample's photoluminescence from ``lab.emission()``: a Gaussian of
  the given peak wavelength and FWHM whose height is ``height_counts`` at 100 ms, scaled linearly with
  t; no film (``emission()`` is None, or the world has no materials model) gives no peak;
- shot noise (Poisson on the signal, one count per photoelectron) and 6 counts RMS read noise, drawn
  from ``lab.rng``;
- rounded and clipped to 0 … 65535: a saturated spectrum is sent as is (65535 at the clipped pixels),
  for the analysis to recognise.

The reply is sent at once (the exposure takes no wall time; the driver lets the virtual clock run).

Events recorded in the world: ``measured`` (``integration_ms``, ``shutter_open``, ``saturated_pixels``)
for each exposure; ``shutter`` (``open``) when the shutter moves.

Knobs: ``detector_fault`` (``MEAS?`` answers ``ERR 3 DETECTOR FAULT``), ``lamp_fault`` (``MEAS?`` with
the shutter open answers ``ERR 4 LAMP FAULT``; dark spectra still work), ``corrupt_spectra`` (that many
next spectra carry one altered count, so only the checksum reveals it).

Fault plan (``simulators.faults``): ``device_error`` answers ``MEAS?`` with ``ERR 3 DETECTOR FAULT`` (no
exposure); ``bad_value`` sends an exposure whose brightest pixel reads, in turn, ``nan``, ``-12`` and
``70000``, under a checksum computed over the spoiled line (the controller itself produced it, so the
checksum cannot tell). Other commands show neither.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from orchestrator.errors import ExperimentFailed
from simulators.lab import Emission, SimLab
from simulators.serial_device import Firmware

PIXELS = 512
CALIBRATION = (399.54, 1.1826, -1.36e-5, -1.0e-9)
DARK_COUNTS = 500.0
DARK_CURRENT_PER_MS = 0.05
READ_NOISE_COUNTS = 6.0
FULL_SCALE = 65535
INTEGRATION_RANGE_MS = (1.0, 60000.0)
_DECIMAL = re.compile(r"\d{1,5}(?:\.\d{1,3})?")
BAD_COUNTS = ("nan", "-12", "70000")


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE, bit by bit (kept apart from the driver's, so each checks the other)."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


class SpectrometerFirmware(Firmware):
    """The controller's state machine.

    Args:
        name: the instrument's name (events in the world are recorded under it).
        lab: the simulated world (sample, RNG).
        serial: the serial number ``*IDN?`` reports.
    """

    rx_end = b"\n"

    def __init__(self, name: str, lab: SimLab, serial: str = "SN0042"):
        super().__init__()
        self.name = name
        self.lab = lab
        self.serial = serial
        self.integration_ms = 100.0
        self.shutter_open = False
        self.detector_fault = False
        self.lamp_fault = False
        self.corrupt_spectra = 0
        i = np.arange(PIXELS, dtype=float)
        c0, c1, c2, c3 = CALIBRATION
        self.wavelength_nm = c0 + c1 * i + c2 * i**2 + c3 * i**3

    def handle(self, frame: bytes) -> bytes | None:
        try:
            text = frame[:-1].decode("ascii").strip()
        except UnicodeDecodeError:
            return b"ERR 1 UNKNOWN COMMAND\n"
        command, _, arg = text.partition(" ")
        command, arg = command.upper(), arg.strip().upper()
        if command == "*IDN?" and not arg:
            return f"LABSPEC,SPX-{PIXELS},{self.serial},FW1.3\n".encode()
        if command == "PIX?" and not arg:
            return f"PIX {PIXELS}\n".encode()
        if command == "CAL?" and not arg:
            return ("CAL " + ",".join(f"{c:.9E}" for c in CALIBRATION) + "\n").encode()
        if command == "INT?" and not arg:
            return f"INT {self.integration_ms:.3f}\n".encode()
        if command == "INT":
            if not _DECIMAL.fullmatch(arg):
                return b"ERR 2 BAD PARAMETER\n"
            value = float(arg)
            low, high = INTEGRATION_RANGE_MS
            if not low <= value <= high:
                return b"ERR 2 INTEGRATION OUT OF RANGE\n"
            self.integration_ms = value
            return b"OK\n"
        if command == "SHUT?" and not arg:
            return b"SHUT OPEN\n" if self.shutter_open else b"SHUT CLOSED\n"
        if command == "SHUT":
            if arg not in ("OPEN", "CLOSE"):
                return b"ERR 2 BAD PARAMETER\n"
            if (arg == "OPEN") != self.shutter_open:
                self.shutter_open = arg == "OPEN"
                self.lab.record(self.name, "shutter", open=self.shutter_open)
            return b"OK\n"
        if command == "MEAS?" and not arg:
            return self._measure()
        return b"ERR 1 UNKNOWN COMMAND\n"

    def express(self, kind: str, frame: bytes) -> bytes | None:
        if frame.strip().upper() != b"MEAS?":
            return None
        if kind == "device_error":
            return b"ERR 3 DETECTOR FAULT\n"
        if kind != "bad_value":
            return None
        reply = self._measure()
        if not reply.startswith(b"SPEC "):
            return reply  # a detector or lamp fault already answers for itself
        data = reply.split(b"\n")[1].decode("ascii").split(",")
        data[max(range(len(data)), key=lambda k: int(data[k]))] = self.next_bad(BAD_COUNTS)
        line = ",".join(data)
        return f"SPEC {len(data)} {crc16(line.encode('ascii')):04X}\n{line}\n".encode("ascii")

    # --- the detector ----------------------------------------------------------------------------
    def _measure(self) -> bytes:
        if self.detector_fault:
            return b"ERR 3 DETECTOR FAULT\n"
        if self.shutter_open and self.lamp_fault:
            return b"ERR 4 LAMP FAULT\n"
        counts = self.expose()
        line = ",".join(str(c) for c in counts)
        crc = crc16(line.encode("ascii"))
        if self.corrupt_spectra > 0:
            self.corrupt_spectra -= 1
            k = int(np.argmax(counts))
            spoiled = list(counts)
            spoiled[k] = spoiled[k] - 1 if spoiled[k] > 0 else 1
            line = ",".join(str(c) for c in spoiled)
        self.lab.record(
            self.name, "measured", integration_ms=self.integration_ms, shutter_open=self.shutter_open,
            saturated_pixels=sum(1 for c in counts if c >= FULL_SCALE),
        )
        return f"SPEC {len(counts)} {crc:04X}\n{line}\n".encode("ascii")

    def expose(self) -> list[int]:
        """One exposure's counts at the present integration time and shutter state."""
        t_ms = self.integration_ms
        signal = np.zeros(PIXELS)
        emission = self._emission() if self.shutter_open else None
        if emission is not None and emission.height_counts > 0:
            sigma = max(emission.fwhm_nm, 0.1) / (2.0 * math.sqrt(2.0 * math.log(2.0)))
            height = emission.height_counts * t_ms / 100.0
            signal = height * np.exp(-0.5 * ((self.wavelength_nm - emission.peak_nm) / sigma) ** 2)
        rng = self.lab.rng
        photo = rng.poisson(np.minimum(signal, 1e9)).astype(float)
        raw = photo + DARK_COUNTS + DARK_CURRENT_PER_MS * t_ms + rng.normal(0.0, READ_NOISE_COUNTS, PIXELS)
        return [int(c) for c in np.clip(np.rint(raw), 0, FULL_SCALE)]

    def _emission(self) -> Emission | None:
        try:
            return self.lab.emission()
        except ExperimentFailed:  # a world without a materials model shows no film
            return None


def make_firmware(name: str, options: Any, limits: Any, lab: SimLab) -> SpectrometerFirmware:
    """The simulator for one spectrometer controller (its options and limits change nothing here)."""
    return SpectrometerFirmware(name, lab)
