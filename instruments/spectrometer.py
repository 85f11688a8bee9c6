"""A serial spectrometer controller speaking a documented ASCII line protocol: integration, shutter, spectra.

Not a vendor protocol. Commercial spectrometers (Ocean Insight USB2000+/Flame, Avantes AvaSpec) speak
binary protocols over USB through their vendors' libraries; this driver does not speak those. It speaks
the ASCII line protocol below, which this project defines for a small lab-built controller (a
microcontroller reading a linear CCD, or a serial bridge in front of a USB spectrometer). There is no
vendor manual: this docstring is the specification, and ``simulators.firmware.spectrometer`` is its
reference implementation, against which a controller's firmware can be checked.

Line: 115200 baud 8N1, no flow control; ASCII; every command and every reply line ends with LF.

=================  ==========================  =====================================================
command            reply                       meaning
=================  ==========================  =====================================================
``*IDN?``          ``<maker>,<model>,<serial>,<firmware>``
``PIX?``           ``PIX <n>``                 number of detector pixels, 1 … 16384
``CAL?``           ``CAL <c0>,<c1>,<c2>,<c3>`` wavelength of pixel i (0 … n-1):
                                               c0 + c1·i + c2·i² + c3·i³ nm, ascending in i
``INT <ms>``       ``OK``                      integration time, decimal ms, at most 3 decimals
``INT?``           ``INT <ms>``
``SHUT OPEN``      ``OK``                      entrance shutter; ``SHUT CLOSE`` closes it
``SHUT?``          ``SHUT OPEN|CLOSED``
``MEAS?``          ``SPEC <n> <crc>`` + a      one exposure at the present integration time, sent when
                   second line                 it ends. Second line: the n raw counts (not dark
                   ``<c0>,<c1>,…,<c(n-1)>``    subtracted), unsigned 16-bit decimal integers; 65535 is
                                               a saturated pixel (the spectrum is still sent). crc:
                                               CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no
                                               reflection, no final xor) of the data line without its
                                               LF, as 4 upper-case hex digits.
any error          ``ERR <code> <text>``       1 unknown command, 2 bad or out-of-range parameter,
                                               3 detector fault (no exposure), 4 excitation lamp fault
                                               (``MEAS?`` with the shutter open)
=================  ==========================  =====================================================

Every error reply becomes a :class:`DeviceError` with ``code`` the number as a string.

Driver choices: connect reads ``*IDN?``, ``PIX?`` and ``CAL?`` once (the wavelength axis is computed
then) and checks the calibration ascends. Each measurement states its integration time (``INT``) or
reads it (``INT?``), so a controller that rebooted to its default cannot mislabel a spectrum. The
header is read with ``transport.query`` (timeout: the integration time plus the port's timeout) and the
data line with ``transport.read_frame``; ``MEAS?`` is idempotent (a fresh exposure; the sample is lit
regardless), so a lost, partial, garbled or checksum-failing spectrum is measured again, at most
``Options.measure_retries`` more times. Averaging is done here, over separate ``MEAS?`` exposures, and
returns float counts; a pixel saturated in any exposure stays at 65535 in the average, so a saturated
peak is still recognisable as such. ``measure`` opens the shutter and leaves it open; ``dark`` closes
it; the safe state is the shutter closed. On a virtual clock the driver lets the exposure time pass
after each spectrum (on a real one the reply already took that long). The port must be this
instrument's own: between the header and the data line another user of a shared transport could
interleave.
"""

from __future__ import annotations

import binascii
import logging
import math
import re
from collections.abc import Callable, Sequence
from typing import TypeVar

from pydantic import Field, model_validator

from instruments.base import Driver, DriverSpec, Settings
from instruments.ascii import check_idn, printable_text
from instruments.errors import ConnectionLost, DeviceError, InstrumentError, InstrumentTimeout, LimitError, ProtocolError, naming
from instruments.readings import Spectrum
from instruments.transport import SerialSettings

log = logging.getLogger(__name__)
T = TypeVar("T")

END = b"\n"
MAX_PIXELS = 16384
FULL_SCALE_COUNTS = 65535
_ERR = re.compile(r"ERR (\d{1,3})(?: (.*))?")
_NUMBER = r"[+-]?(?:\d{1,20}(?:\.\d{0,20})?|\.\d{1,20})(?:[eE][+-]?\d{1,3})?"
_COUNT = re.compile(r"\d{1,5}")


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF); ``crc16(b"123456789") == 0x29B1``."""
    return binascii.crc_hqx(data, 0xFFFF)


# --- commands ------------------------------------------------------------------------------------


def format_idn() -> bytes:
    return b"*IDN?\n"


def format_pixels_query() -> bytes:
    return b"PIX?\n"


def format_calibration_query() -> bytes:
    return b"CAL?\n"


def format_integration(integration_ms: float) -> bytes:
    """``INT <ms>`` with 3 decimals (never an exponent)."""
    return f"INT {integration_ms:.3f}\n".encode("ascii")


def format_integration_query() -> bytes:
    return b"INT?\n"


def format_shutter(open_: bool) -> bytes:
    return b"SHUT OPEN\n" if open_ else b"SHUT CLOSE\n"


def format_shutter_query() -> bytes:
    return b"SHUT?\n"


def format_measure() -> bytes:
    return b"MEAS?\n"


# --- replies -------------------------------------------------------------------------------------


def _line(frame: bytes) -> str:
    """The reply's text without its LF; an ``ERR`` reply raises :class:`DeviceError`."""
    text = printable_text(frame[:-1] if frame.endswith(END) else frame, frame)
    err = _ERR.fullmatch(text)
    if err is not None:
        raise DeviceError(f"the spectrometer reports error {err.group(1)}: {err.group(2) or ''}", code=err.group(1))
    return text


def _match(pattern: str, frame: bytes, what: str) -> re.Match[str]:
    match = re.fullmatch(pattern, _line(frame))
    if match is None:
        raise ProtocolError(f"{what} reply {frame[:80]!r} does not follow the protocol")
    return match


def _finite(token: str, frame: bytes) -> float:
    value = float(token)
    if not math.isfinite(value):
        raise ProtocolError(f"reply {frame[:80]!r}: {token!r} is not finite")
    return value


def parse_ok(frame: bytes) -> None:
    """``OK``."""
    _match("OK", frame, "acknowledgement")


def parse_idn(frame: bytes) -> str:
    """``*IDN?``: four non-empty comma-separated fields."""
    return check_idn(_line(frame), frame)


def parse_pixels(frame: bytes) -> int:
    """``PIX <n>`` → n."""
    n = int(_match(r"PIX (\d{1,5})", frame, "PIX?").group(1))
    if not 1 <= n <= MAX_PIXELS:
        raise ProtocolError(f"PIX? reply {frame!r}: {n} pixels is outside 1..{MAX_PIXELS}")
    return n


def parse_calibration(frame: bytes) -> tuple[float, float, float, float]:
    """``CAL c0,c1,c2,c3`` → the polynomial coefficients."""
    match = _match(rf"CAL ({_NUMBER}),({_NUMBER}),({_NUMBER}),({_NUMBER})", frame, "CAL?")
    c0, c1, c2, c3 = (_finite(g, frame) for g in match.groups())
    return c0, c1, c2, c3


def parse_integration(frame: bytes) -> float:
    """``INT <ms>`` → ms (positive)."""
    value = _finite(_match(rf"INT ({_NUMBER})", frame, "INT?").group(1), frame)
    if value <= 0:
        raise ProtocolError(f"INT? reply {frame!r}: integration time must be positive")
    return value


def parse_shutter(frame: bytes) -> bool:
    """``SHUT OPEN|CLOSED`` → True when open."""
    return _match("SHUT (OPEN|CLOSED)", frame, "SHUT?").group(1) == "OPEN"


def parse_header(frame: bytes) -> tuple[int, int]:
    """``SPEC <n> <crc>`` → (n, crc)."""
    match = _match(r"SPEC (\d{1,5}) ([0-9A-F]{4})", frame, "MEAS? header")
    n = int(match.group(1))
    if not 1 <= n <= MAX_PIXELS:
        raise ProtocolError(f"MEAS? header {frame!r}: {n} pixels is outside 1..{MAX_PIXELS}")
    return n, int(match.group(2), 16)


def parse_data(frame: bytes, n: int, crc: int) -> tuple[int, ...]:
    """The data line after a ``SPEC <n> <crc>`` header → n counts, checked against the header.

    Raises:
        ProtocolError: checksum mismatch, wrong count, or a value that is not a 16-bit count.
    """
    text = _line(frame)
    actual = crc16(text.encode("ascii"))
    if actual != crc:
        raise ProtocolError(f"spectrum checksum {actual:04X} differs from the header's {crc:04X}: data garbled")
    parts = text.split(",")
    if len(parts) != n:
        raise ProtocolError(f"spectrum has {len(parts)} values; the header announced {n}")
    if not all(_COUNT.fullmatch(p) for p in parts):
        raise ProtocolError("spectrum holds a value that is not a decimal count")
    counts = tuple(int(p) for p in parts)
    if max(counts) > FULL_SCALE_COUNTS:
        raise ProtocolError(f"spectrum holds a count above {FULL_SCALE_COUNTS}")
    return counts


def wavelengths(coefficients: Sequence[float], n: int) -> tuple[float, ...]:
    """Pixel wavelengths (nm) from the ``CAL?`` polynomial.

    Raises:
        DeviceError: the calibration does not ascend strictly over the n pixels.
    """
    c0, c1, c2, c3 = coefficients
    axis = tuple(c0 + c1 * i + c2 * i * i + c3 * i * i * i for i in range(n))
    if not all(math.isfinite(w) for w in axis) or any(b <= a for a, b in zip(axis, axis[1:])):
        raise DeviceError(
            f"the wavelength calibration {tuple(coefficients)} does not ascend over {n} pixels; recalibrate the controller",
            code="calibration",
        )
    return axis


# --- the driver ----------------------------------------------------------------------------------


class Spectrometer(Driver):
    """A spectrometer controller on a serial line (the ASCII protocol of this module)."""

    ACTIONS = frozenset({"identify", "set_integration", "measure", "dark"})
    REPEATABLE = ACTIONS  # a second exposure measures the same film

    class Limits(Settings):
        """Allowed settings.

        Attributes:
            min_integration_ms, max_integration_ms: the integration times an action may ask for.
            max_averages: most exposures one measurement may average.
        """

        min_integration_ms: float = Field(default=1.0, gt=0)
        max_integration_ms: float = Field(default=10_000.0, gt=0)
        max_averages: int = Field(default=100, ge=1)

        @model_validator(mode="after")
        def _ordered(self) -> "Spectrometer.Limits":
            if self.min_integration_ms > self.max_integration_ms:
                raise ValueError("min_integration_ms must not exceed max_integration_ms")
            return self

    class Options(Settings):
        """Other settings.

        Attributes:
            transfer_timeout_s: wait for the data line once its header arrived (n × ~6 bytes at the baud rate).
            measure_retries: further exposures after a lost, garbled or checksum-failing spectrum.
        """

        transfer_timeout_s: float = Field(default=2.0, gt=0)
        measure_retries: int = Field(default=2, ge=0, le=10)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.wavelength_nm: tuple[float, ...] = ()

    # --- limit checks (pure) ---------------------------------------------------------------------
    def _check_identify(self) -> None:
        """Nothing to check."""

    def _check_set_integration(self, integration_ms: float) -> None:
        value = self.number(integration_ms, "integration time")
        low, high = self.limits.min_integration_ms, self.limits.max_integration_ms
        self.limit(value, high, "integration time", "ms", minimum=low)
        sent = float(format_integration(value).split()[1])  # 3 decimals: 1999.9996 goes out as 2000.000
        self.limit(sent, high, "integration time as sent (3 decimals)", "ms", minimum=low)

    def _check_measure(self, integration_ms: float | None = None, averages: int = 1) -> None:
        if integration_ms is not None:
            self._check_set_integration(integration_ms)
        if isinstance(averages, bool) or not isinstance(averages, int):
            raise LimitError(f"averages must be an integer, got {averages!r}", instrument=self.name)
        self.limit(averages, self.limits.max_averages, "averages", "exposures", minimum=1)

    def _check_dark(self, integration_ms: float | None = None, averages: int = 1) -> None:
        self._check_measure(integration_ms, averages)

    # --- lifecycle -------------------------------------------------------------------------------
    def connect(self) -> None:
        """Opens the port, reads the identity, pixel count and wavelength calibration."""
        self.transport.open()
        self.identify()
        self._calibrate()

    def safe_state(self) -> None:
        """Closes the shutter; logs (never raises) a failure."""
        try:
            self._ask(format_shutter(False), parse_ok)
        except InstrumentError as exc:
            log.error("%s: safe state: could not close the shutter: %s", self.name, exc)

    # --- actions ---------------------------------------------------------------------------------
    def identify(self) -> str:
        """The ``*IDN?`` string."""
        self._check_identify()
        return self._ask(format_idn(), parse_idn)

    def set_integration(self, integration_ms: float) -> None:
        """Sets the integration time (ms)."""
        self._check_set_integration(integration_ms)
        self._ask(format_integration(integration_ms), parse_ok)

    def measure(self, integration_ms: float | None = None, averages: int = 1) -> Spectrum:
        """A raw spectrum with the shutter open, averaged over ``averages`` exposures.

        Args:
            integration_ms: exposure; None keeps the controller's present setting.
            averages: exposures to average.
        """
        self._check_measure(integration_ms, averages)
        return self._spectrum(True, integration_ms, averages)

    def dark(self, integration_ms: float | None = None, averages: int = 1) -> Spectrum:
        """A dark spectrum: the same as :meth:`measure` with the shutter closed (it stays closed)."""
        self._check_dark(integration_ms, averages)
        return self._spectrum(False, integration_ms, averages)

    # --- internals -------------------------------------------------------------------------------
    def _ask(self, payload: bytes, parse: Callable[[bytes], T], timeout_s: float | None = None) -> T:
        try:
            return self.transport.query(payload, end=END, parse=parse, idempotent=True, timeout_s=timeout_s)
        except InstrumentError as exc:
            raise naming(exc, self.name) from None

    def _calibrate(self) -> None:
        n = self._ask(format_pixels_query(), parse_pixels)
        coefficients = self._ask(format_calibration_query(), parse_calibration)
        try:
            self.wavelength_nm = wavelengths(coefficients, n)
        except DeviceError as exc:
            raise naming(exc, self.name) from None

    def _spectrum(self, shutter_open: bool, integration_ms: float | None, averages: int) -> Spectrum:
        if not self.wavelength_nm:
            self._calibrate()
        if integration_ms is not None:
            self._ask(format_integration(integration_ms), parse_ok)
        exposure_ms = self._ask(format_integration_query(), parse_integration)
        self._ask(format_shutter(shutter_open), parse_ok)
        total = [0] * len(self.wavelength_nm)
        saturated: set[int] = set()
        for _ in range(averages):
            counts = self._acquire(exposure_ms)
            saturated.update(k for k, c in enumerate(counts) if c >= FULL_SCALE_COUNTS)
            total = [a + b for a, b in zip(total, counts)]
        mean = tuple(FULL_SCALE_COUNTS if k in saturated else c / averages for k, c in enumerate(total))
        return Spectrum(self.wavelength_nm, mean, exposure_ms)

    def _acquire(self, exposure_ms: float) -> tuple[int, ...]:
        """One ``MEAS?`` exposure, measured again after a lost or garbled spectrum."""
        exposure_s = exposure_ms / 1000.0
        started = self.clock.now_s()
        last: InstrumentError | None = None
        for _ in range(1 + self.options.measure_retries):
            try:
                timeout_s = exposure_s + self.transport.settings.timeout_s
                n, crc = self._ask(format_measure(), parse_header, timeout_s=timeout_s)
                frame = self.transport.read_frame(end=END, timeout_s=self.options.transfer_timeout_s)
                counts = parse_data(frame, n, crc)
                break
            except DeviceError as exc:
                raise naming(exc, self.name) from None
            except (InstrumentTimeout, ProtocolError, ConnectionLost) as exc:
                if isinstance(exc, ConnectionLost) and not self.transport.is_open:
                    raise
                last = naming(exc, self.name)
                log.info("%s: spectrum lost or garbled (%s); measuring again", self.name, exc)
        else:
            assert last is not None
            raise last
        if len(counts) != len(self.wavelength_nm):
            raise ProtocolError(
                f"spectrum has {len(counts)} pixels but the controller reported {len(self.wavelength_nm)} at connect",
                instrument=self.name,
            )
        # A real exposure already took this long; on a virtual clock, let simulated time pass.
        remaining = exposure_s - (self.clock.now_s() - started)
        if remaining > 0:
            self.clock.sleep(remaining)
        return counts


SPEC = DriverSpec(
    kind="line_spectrometer",
    driver=Spectrometer,
    serial=SerialSettings(baudrate=115200, bytesize=8, parity="N", stopbits=1, timeout_s=1.0),
    firmware="simulators.firmware.spectrometer:make_firmware",
    summary="Spectrometer controller with this project's ASCII line protocol (not a vendor USB protocol)",
)
