"""The ASCII spectrometer driver against its byte-level simulator on a real pseudo-terminal."""


import logging
import statistics


import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from instruments.errors import DeviceError, InstrumentError, LimitError, ProtocolError
from instruments.spectrometer import (
    SPEC,
    Spectrometer,
    crc16,
    format_integration,
    format_measure,
    format_shutter,
    parse_calibration,
    parse_data,
    parse_header,
    parse_idn,
    parse_integration,
    parse_ok,
    parse_pixels,
    parse_shutter,
    wavelengths,
)
from instruments.transport import SerialSettings
from orchestrator.errors import ExperimentFailed
from simulators.firmware import spectrometer as firmware_module
from simulators.firmware.spectrometer import make_firmware
from simulators.lab import HC_EV_NM, SimLab
from tests.instruments.rig import serve

FAST = SerialSettings(baudrate=115200, timeout_s=0.3, reopen_backoff_s=0.05, reopen_attempts=8)
LIMITS = Spectrometer.Limits(min_integration_ms=5.0, max_integration_ms=2000.0, max_averages=8)
OPTIONS = Spectrometer.Options(transfer_timeout_s=0.3)
PEAK_NM = HC_EV_NM / 1.6


def truth(conditions, rng):
    return {"band_gap_ev": 1.6, "pl_intensity": 50.0, "fwhm_nm": 30.0}


def no_film(conditions, rng):
    raise ExperimentFailed("the film did not form")


def make_rig(tmp_path, truth_fn=truth, limits=LIMITS, settings_=FAST):
    lab = SimLab(truth=truth_fn, sample_model=lambda history: {})
    return serve(
        tmp_path, make_firmware("spec", OPTIONS, limits, lab), Spectrometer, name="spec", link="usb-LabSpec_SPX-512-if00",
        lab=lab, settings=settings_, limits=limits, options=OPTIONS, connect=True,
    )


@pytest.fixture
def rig(tmp_path):
    r = make_rig(tmp_path)
    yield r
    r.drv.close()
    r.dev.stop()


def peak_nm(spectrum):
    k = max(range(len(spectrum.counts)), key=spectrum.counts.__getitem__)
    return spectrum.wavelength_nm[k]


# --- pure protocol functions ---------------------------------------------------------------------


def test_formats_known_frames():
    assert format_integration(100) == b"INT 100.000\n"
    assert format_integration(12.3456) == b"INT 12.346\n"
    assert format_integration(60000) == b"INT 60000.000\n"  # never an exponent
    assert format_shutter(True) == b"SHUT OPEN\n" and format_shutter(False) == b"SHUT CLOSE\n"
    assert format_measure() == b"MEAS?\n"


def test_parses_known_frames():
    assert crc16(b"123456789") == 0x29B1 == firmware_module.crc16(b"123456789")
    assert parse_ok(b"OK\n") is None
    assert parse_idn(b"LABSPEC,SPX-512,SN0042,FW1.3\n") == "LABSPEC,SPX-512,SN0042,FW1.3"
    assert parse_pixels(b"PIX 512\n") == 512
    assert parse_calibration(b"CAL 4.0E+02,1.17,-1.5e-5,0\n") == (400.0, 1.17, -1.5e-5, 0.0)
    assert parse_integration(b"INT 100.000\n") == 100.0
    assert parse_shutter(b"SHUT OPEN\n") is True and parse_shutter(b"SHUT CLOSED\n") is False
    line = b"500,510,65535"
    assert parse_header(b"SPEC 3 %04X\n" % crc16(line)) == (3, crc16(line))
    assert parse_data(line + b"\n", 3, crc16(line)) == (500, 510, 65535)
    with pytest.raises(DeviceError) as info:
        parse_ok(b"ERR 3 DETECTOR FAULT\n")
    assert info.value.code == "3" and "DETECTOR FAULT" in str(info.value)
    with pytest.raises(DeviceError):
        parse_header(b"ERR 4 LAMP FAULT\n")
    with pytest.raises(ProtocolError, match="checksum"):
        parse_data(b"500,511,65535\n", 3, crc16(line))
    for frame, n in ((b"500,510\n", 3), (b"500,510,65536\n", 3), (b"500,-1,2\n", 3), (b"\n", 1)):
        body = frame[:-1]
        with pytest.raises(ProtocolError):
            parse_data(frame, n, crc16(body))
    for bad in (b"SPEC 0 0000\n", b"SPEC 3 12g4\n", b"SPEC 3\n", b"OK\n"):
        with pytest.raises(ProtocolError):
            parse_header(bad)
    with pytest.raises(ProtocolError):
        parse_integration(b"INT 0\n")
    with pytest.raises(ProtocolError):
        parse_calibration(b"CAL 1,2,3\n")


def test_wavelength_axis_must_ascend():
    assert wavelengths((400.0, 2.0, 0.0, 0.0), 3) == (400.0, 402.0, 404.0)
    with pytest.raises(DeviceError) as info:
        wavelengths((400.0, 1.0, -0.01, 0.0), 100)
    assert info.value.code == "calibration"


SPEC_ISH = st.text(alphabet="0123456789ABCDEF ,.+-eSPCINTXROKHUL\n", max_size=80).map(str.encode)
PARSERS = [parse_ok, parse_idn, parse_pixels, parse_calibration, parse_integration, parse_shutter, parse_header,
           lambda frame: parse_data(frame, 3, 0x1234), lambda frame: parse_data(frame, 1, crc16(frame.rstrip(b"\n")))]


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=120), SPEC_ISH, SPEC_ISH.map(lambda b: b + b"\n")))
def test_parsers_raise_only_instrument_errors(frame):
    for parse in PARSERS:
        try:
            parse(frame)
        except InstrumentError:
            pass


# --- actions -------------------------------------------------------------------------------------


def test_connect_reads_identity_and_calibration(rig):
    assert rig.drv.identify() == "LABSPEC,SPX-512,SN0042,FW1.3"
    axis = rig.drv.wavelength_nm
    assert len(axis) == 512 and axis[0] == pytest.approx(399.54) and axis[-1] == pytest.approx(1000.16, abs=0.01)
    assert all(b > a for a, b in zip(axis, axis[1:]))
    assert rig.fw.count(b"CAL?") == 1 and rig.fw.count(b"PIX?") == 1
    assert SPEC.kind == "line_spectrometer" and SPEC.serial.baudrate == 115200 and SPEC.driver is Spectrometer


def test_measure_shows_the_films_emission_peak(rig):
    spectrum = rig.drv.measure(integration_ms=100)
    assert spectrum.integration_ms == 100.0 and spectrum.wavelength_nm == rig.drv.wavelength_nm
    assert peak_nm(spectrum) == pytest.approx(PEAK_NM, abs=2.5)
    assert max(spectrum.counts) == pytest.approx(500 + 5 + 50 * 400, rel=0.03)  # dark + 20000 counts at 100 ms
    wings = [c for w, c in zip(spectrum.wavelength_nm, spectrum.counts) if w < 600]
    assert statistics.mean(wings) == pytest.approx(505, abs=3)
    assert rig.fw.shutter_open and rig.fw.integration_ms == 100.0
    measured = [e.data for e in rig.lab.history if e.kind == "measured"]
    assert measured == [{"integration_ms": 100.0, "shutter_open": True, "saturated_pixels": 0}]


def test_signal_scales_with_integration_and_the_virtual_clock_runs(rig):
    short = rig.drv.measure(integration_ms=20)
    assert rig.lab.clock.now_s() == pytest.approx(0.02)
    long = rig.drv.measure(integration_ms=200)
    assert rig.lab.clock.now_s() == pytest.approx(0.22)
    ratio = (max(long.counts) - 510) / (max(short.counts) - 501)
    assert ratio == pytest.approx(10, rel=0.05)
    rig.drv.set_integration(50)
    assert rig.fw.integration_ms == 50.0
    assert rig.drv.measure().integration_ms == 50.0  # None keeps (and reads back) the present setting


def test_averages_are_separate_exposures(rig):
    spectrum = rig.drv.measure(integration_ms=10, averages=4)
    assert rig.fw.count(b"MEAS?") == 4
    assert any(c != int(c) for c in spectrum.counts), "averaged counts are floats"
    assert rig.lab.clock.now_s() == pytest.approx(0.04)


def test_failed_film_gives_a_flat_spectrum(tmp_path):
    r = make_rig(tmp_path, truth_fn=no_film)
    try:
        spectrum = r.drv.measure(integration_ms=100)
    finally:
        r.dev.stop()
    assert max(spectrum.counts) - min(spectrum.counts) < 60  # read noise only, no peak
    assert statistics.mean(spectrum.counts) == pytest.approx(505, abs=2)


def test_saturated_spectrum_is_still_returned(rig):
    spectrum = rig.drv.measure(integration_ms=2000)  # 20× the 100 ms height: far above full scale
    saturated = sum(1 for c in spectrum.counts if c == 65535)
    assert saturated > 10 and min(spectrum.counts) > 400
    assert [e.data["saturated_pixels"] for e in rig.lab.history if e.kind == "measured"] == [saturated]


def test_a_pixel_saturated_in_any_exposure_stays_saturated_in_the_average(rig):
    exposures = iter([[65535, 60000, 500] + [500] * 509, [60000, 60000, 500] + [500] * 509])
    rig.fw.expose = lambda: next(exposures)
    spectrum = rig.drv.measure(integration_ms=100, averages=2)
    assert spectrum.counts[:3] == (65535, 60000.0, 500.0)


def test_dark_closes_the_shutter(rig):
    rig.drv.measure(integration_ms=100)
    dark = rig.drv.dark()
    assert not rig.fw.shutter_open
    assert max(dark.counts) < 600 and dark.integration_ms == 100.0
    assert [e.data["open"] for e in rig.lab.history if e.kind == "shutter"] == [True, False]


# --- limits: refused before any byte -------------------------------------------------------------


@pytest.mark.parametrize("action, kwargs", [
    ("set_integration", {"integration_ms": 4.0}),
    ("set_integration", {"integration_ms": 2500.0}),
    ("set_integration", {"integration_ms": float("nan")}),
    ("set_integration", {"integration_ms": "100"}),
    ("measure", {"integration_ms": 3000.0}),
    ("measure", {"averages": 9}),
    ("measure", {"averages": 0}),
    ("measure", {"averages": 2.0}),
    ("dark", {"integration_ms": 1.0}),
    ("dark", {"averages": 100}),
    ("measure", {"exposure_ms": 10}),
])
def test_limit_violation_sends_nothing(rig, action, kwargs):
    before = rig.transcript.written()
    with pytest.raises(LimitError):
        rig.drv.perform(action, kwargs)
    with pytest.raises((LimitError, TypeError)):
        getattr(rig.drv, action)(**kwargs)
    assert rig.transcript.written() == before


def test_limits_must_be_ordered():
    with pytest.raises(ValueError):
        Spectrometer.Limits(min_integration_ms=100.0, max_integration_ms=10.0)


# --- device errors -------------------------------------------------------------------------------


def test_detector_fault_is_a_device_error(rig):
    rig.fw.detector_fault = True
    with pytest.raises(DeviceError) as info:
        rig.drv.measure(integration_ms=10)
    assert info.value.code == "3" and info.value.instrument == "spec"
    assert rig.fw.count(b"MEAS?") == 1, "an error reply is an answer: not retried"


def test_lamp_fault_blocks_light_but_not_dark_spectra(rig):
    rig.fw.lamp_fault = True
    with pytest.raises(DeviceError) as info:
        rig.drv.measure(integration_ms=10)
    assert info.value.code == "4"
    assert max(rig.drv.dark(integration_ms=10).counts) < 600


def test_integration_outside_the_controllers_range_is_err_2(tmp_path):
    r = make_rig(tmp_path, limits=Spectrometer.Limits(max_integration_ms=100_000.0))
    try:
        with pytest.raises(DeviceError) as info:
            r.drv.set_integration(70_000)
    finally:
        r.dev.stop()
    assert info.value.code == "2" and r.fw.integration_ms == 100.0


def test_checksum_mismatch_is_measured_again(rig):
    rig.fw.corrupt_spectra = 1
    spectrum = rig.drv.measure(integration_ms=10)
    assert rig.fw.count(b"MEAS?") == 2 and len(spectrum.counts) == 512


def test_persistent_checksum_mismatch_is_a_protocol_error(rig):
    rig.fw.corrupt_spectra = 10
    with pytest.raises(ProtocolError, match="checksum"):
        rig.drv.measure(integration_ms=10)
    assert rig.fw.count(b"MEAS?") == 3  # one try and Options.measure_retries (2) more


# --- generic faults ------------------------------------------------------------------------------


def spoil_reply_to(rig, command, kind):
    """Spoils the reply to the next ``command`` the firmware receives (not just the next reply)."""
    original = rig.fw.handle
    armed = [True]

    def handle(frame):
        if armed[0] and frame.startswith(command):
            armed[0] = False
            rig.dev.faults.inject(kind)  # applies to the reply this very call returns
        return original(frame)

    rig.fw.handle = handle


@pytest.mark.parametrize("kind", ["no_reply", "partial", "late", "corrupt", "noise", "disconnect"])
def test_spectrum_recovers_from_each_reply_fault(rig, kind):
    spoil_reply_to(rig, b"MEAS?", kind)
    spectrum = rig.drv.measure(integration_ms=10)
    assert rig.dev.faults.applied == [kind]
    assert rig.fw.count(b"MEAS?") == 2, "measured once more"
    assert len(spectrum.counts) == 512 and peak_nm(spectrum) == pytest.approx(PEAK_NM, abs=3)
    assert [e.data["integration_ms"] for e in rig.lab.history if e.kind == "measured"] == [10.0, 10.0]
    if kind == "disconnect":
        assert rig.dev.disconnects == 1 and rig.transport.reopens == 1


@pytest.mark.parametrize("kind", ["no_reply", "partial", "late", "corrupt", "noise", "disconnect"])
def test_setting_recovers_from_each_reply_fault(rig, kind):
    rig.dev.faults.inject(kind)  # the next reply: the OK to INT
    rig.drv.set_integration(25)
    assert rig.dev.faults.applied == [kind]
    assert rig.fw.count(b"INT 25.000") == 2 and rig.fw.integration_ms == 25.0


# --- safe state ----------------------------------------------------------------------------------


def test_safe_state_closes_the_shutter(rig):
    rig.drv.measure(integration_ms=10)
    rig.drv.safe_state()
    assert not rig.fw.shutter_open
    rig.drv.safe_state()  # already safe: no error
    assert rig.fw.count(b"SHUT CLOSE") == 2


def test_safe_state_does_not_raise_when_the_controller_is_gone(tmp_path, caplog):
    r = make_rig(tmp_path, settings_=SerialSettings(baudrate=115200, timeout_s=0.2, reopen_backoff_s=0.02,
                                                   reopen_attempts=2))
    r.dev.stop()
    with caplog.at_level(logging.ERROR, logger="instruments.spectrometer"):
        r.drv.safe_state()
    assert "could not close the shutter" in caplog.text
