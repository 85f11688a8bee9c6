"""Campaigns on instruments: load-time checks against the drivers, and runs through the serial path against
the byte-level simulators on real pseudo-terminals (``--simulate``)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from instruments.errors import LimitError
from instruments.transport import Transcript
from orchestrator.backends import open_backend
from orchestrator.campaign import load_campaign
from orchestrator.cli import app
from orchestrator.errors import CampaignFileError
from orchestrator.executor import Executor
from orchestrator.hardware import InstrumentBackend, make_drivers
from orchestrator.dispatch import decide
from orchestrator.ledger import Ledger, StepRecord
from orchestrator.loop import CampaignRunner, run_loop
from orchestrator.procedures import Action, Wait
from simulators.bench import SimulatedBench

LAB: dict[str, Any] = {
    "name": "plate_lab",
    "parameters": [{"name": "temp_c", "type": "continuous", "low": 60.0, "high": 180.0, "unit": "degC"}],
    "outcomes": [{"name": "peak_ev"}, {"name": "peak_height"}],
    "objectives": [{"outcome": "peak_height", "goal": "maximize"}],
    "budget": {"max_experiments": 5, "batch_size": 2, "initial_experiments": 3},
    "seed": 2,
    "instruments": {
        "hotplate": {
            "driver": "ika_namur",
            "port": "/dev/serial/by-id/usb-IKA_RCT_digital-if00",
            "limits": {"max_temp_c": 200},
        },
        "spectrometer": {"driver": "line_spectrometer", "port": "/dev/serial/by-id/usb-spec-if00"},
    },
    "procedure": {
        "steps": [
            {"hotplate.set_temperature": "{temp_c}"},
            {"hotplate.wait_for_temperature": {"tolerance_c": 2}},
            {"wait": "5 min"},
            {"spectrometer.measure": {"integration_ms": 100}, "as": "pl"},
            "hotplate.heat_off",
        ]
    },
    "analysis": [
        {"reading": "pl", "function": "pl_peak", "outcomes": {"peak_energy_ev": "peak_ev", "peak_counts": "peak_height"}}
    ],
    "simulator": {"model": "tests.toy_simulators:plate_film", "sample_model": "tests.toy_simulators:plate_sample"},
}


@pytest.fixture
def lab_dict():
    return copy.deepcopy(LAB)


def problems(write_campaign, data) -> list[str]:
    with pytest.raises(CampaignFileError) as info:
        load_campaign(write_campaign(data))
    return info.value.problems


def test_lab_campaign_loads(write_campaign, lab_dict):
    campaign = load_campaign(write_campaign(lab_dict))
    assert set(campaign.instruments) == {"hotplate", "spectrometer"}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d["instruments"]["hotplate"].update(driver="ika_magic"), "instruments.hotplate.driver: unknown driver 'ika_magic'"),
        (lambda d: d["instruments"]["hotplate"]["limits"].update(max_temp_f=300), "instruments.hotplate.limits.max_temp_f: unknown key"),
        (lambda d: d["instruments"]["hotplate"].update(limits={}), "instruments.hotplate.limits.max_temp_c: Field required"),
        (lambda d: d["procedure"]["steps"].insert(0, "hotplate.boil"), "hotplate has no action 'boil'"),
        (lambda d: d["procedure"]["steps"].insert(0, "oven.heat"), "no instrument 'oven'"),
        (lambda d: d["procedure"]["steps"].insert(0, {"wait": "{tmep_c} min"}), "reads tmep_c, which is not a parameter"),
        (lambda d: d["analysis"][0].update(reading="absorbance"), "no step takes a reading 'absorbance'"),
        (lambda d: d["analysis"][0]["outcomes"].pop("peak_counts"), "no analysis fills the outcome(s) peak_height"),
        (lambda d: d["analysis"][0].update(function="fit_everything"), "unknown analysis 'fit_everything'"),
        (lambda d: d.pop("procedure"), "instruments need a 'procedure:'"),
    ],
)
def test_bad_lab_sections_name_the_field(write_campaign, lab_dict, change, expected):
    change(lab_dict)
    assert any(expected in p for p in problems(write_campaign, lab_dict)), problems(write_campaign, lab_dict)


def test_a_search_space_beyond_the_instrument_limits_is_refused_at_load(write_campaign, lab_dict):
    lab_dict["parameters"][0]["high"] = 260.0
    (problem,) = problems(write_campaign, lab_dict)
    assert "temp_c=260" in problem and "exceeds the limit 200" in problem and "narrow the parameters" in problem
    assert problem.startswith("line ")


def test_run_on_simulated_instruments_records_outcomes_and_raw_spectra(write_campaign, lab_dict, tmp_path):
    campaign = load_campaign(write_campaign(lab_dict))
    transcript = tmp_path / "bytes.jsonl"
    with (
        Ledger.for_campaign(campaign, tmp_path) as ledger,
        open_backend(campaign, tmp_path, simulate=True, transcript_path=transcript) as backend,
    ):
        run_loop(CampaignRunner(campaign, ledger, backend))
        exps = ledger.experiments()
    assert len(exps) == 5 and exps[-1].generator.startswith("gp:")
    for e in exps:
        raw = json.loads(open(e.raw["pl"]).read())
        assert raw["kind"] == "spectrum" and len(raw["counts"]) == 512
        if e.conditions["temp_c"] < 70.0:
            assert e.state == "failed" and "no PL peak" in e.error
        else:
            assert e.state == "completed"
            # The spectrometer saw the film the hotplate made: the model's gap at the set temperature.
            assert e.outcomes["peak_ev"] == pytest.approx(1.55 + 0.001 * (e.conditions["temp_c"] - 100.0), abs=0.01)
    sent = Transcript.load(transcript)
    assert any(bytes.fromhex(x["hex"]).startswith(b"OUT_SP_1 ") for x in sent if x["dir"] == "tx")


def test_cli_runs_the_example_hardware_campaign_simulated(tmp_path):
    from tests.conftest import REPO

    data = yaml.safe_load((REPO / "campaigns" / "perovskite_film_hardware.yaml").read_text())
    data["budget"] = {"max_experiments": 3, "batch_size": 1, "initial_experiments": 3}
    path = tmp_path / "hw.yaml"
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["run", str(path), "--simulate", "--no-prefect", "-r", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "on simulated instruments" in result.output
    assert "experiments used   │ 3 of 3" in result.output


def test_cli_without_the_hardware_says_how_to_simulate(write_campaign, lab_dict, tmp_path):
    result = CliRunner().invoke(app, ["run", str(write_campaign(lab_dict)), "--no-prefect", "-r", str(tmp_path)])
    assert result.exit_code == 2
    assert "cannot connect to the instruments" in result.output and "--simulate" in result.output
    assert "Traceback" not in result.output


@pytest.fixture
def bench(write_campaign, lab_dict, tmp_path):
    campaign = load_campaign(write_campaign(lab_dict))
    transcript = Transcript()
    with SimulatedBench(campaign, tmp_path / "sim") as b:
        drivers = make_drivers(campaign, port_map=b.port_map, transcript=transcript, clock=b.lab.clock)
        for d in drivers.values():
            d.connect()
        yield campaign, b, drivers, transcript
        for d in drivers.values():
            d.close()


def test_an_experiment_with_one_step_beyond_a_limit_sends_nothing_at_all(bench):
    _, b, drivers, transcript = bench
    executor = Executor(drivers, b.lab.clock)
    before = len(transcript.written())
    steps = [Action("hotplate", "set_temperature", {"temp_c": 120.0}), Wait(60.0), Action("hotplate", "set_temperature", {"temp_c": 320.0})]
    with pytest.raises(LimitError, match="320"):
        executor.run(steps)
    assert len(transcript.written()) == before, "the valid first step must not be sent either"


def test_a_failing_step_leaves_every_touched_instrument_safe(bench):
    _, b, drivers, _ = bench
    executor = Executor(drivers, b.lab.clock)
    plate = b.firmwares["hotplate"]
    b.firmwares["spectrometer"].detector_fault = True
    with pytest.raises(Exception, match="(?i)detector|ERR"):
        executor.run([Action("hotplate", "set_temperature", {"temp_c": 150.0}), Action("spectrometer", "measure", {})])
    assert not plate.heating, "the heater was switched off after the spectrometer failed"


def _interrupted(campaign, ledger, steps):
    """A ledger as a crash leaves it: one experiment dispatched, with ``steps`` (text, repeatable, done) logged."""
    (exp,) = ledger.add_proposed([{"temp_c": 120.0}], "sobol")
    ledger.mark_running(exp.id)
    for i, (text, repeatable, done) in enumerate(steps):
        ledger.step_started(exp.id, 1, i, text, repeatable)
        if done:
            ledger.step_done(exp.id, 1, i)
    return exp


def test_an_interrupted_experiment_that_sent_only_repeatable_steps_is_dispatched_again_once(bench, tmp_path):
    campaign, b, drivers, transcript = bench
    backend = InstrumentBackend(campaign, drivers, b.lab.clock, tmp_path / "raw")  # real hardware: cannot ask
    backend.executor.start_keepalive()  # the hotplate's watchdog wants to hear from a live run
    with Ledger.for_campaign(campaign, tmp_path) as ledger:
        exp = _interrupted(campaign, ledger, [("hotplate.set_temperature(temp_c=120.0)", True, True)])
        result = CampaignRunner(campaign, ledger, backend).run_experiment(exp.id)
        events = ledger.events(exp.id)
        assert (result.state, result.attempts) == ("completed", 2), result.error
        assert [s.state for s in ledger.steps(exp.id)] == ["done"] * 4, "attempt 2 ran every action"
    assert any("dispatched again (attempt 2)" in (e["detail"] or "") for e in events)
    set_points = [x for x in transcript.entries if x["dir"] == "tx" and bytes.fromhex(x["hex"]).startswith(b"OUT_SP_1 ")]
    assert len(set_points) == 1, "the new attempt sent the experiment's steps once"


def test_an_interrupted_irreversible_step_on_real_instruments_becomes_unknown_and_nothing_is_sent(bench, tmp_path):
    campaign, b, drivers, transcript = bench
    backend = InstrumentBackend(campaign, drivers, b.lab.clock, tmp_path / "raw")
    with Ledger.for_campaign(campaign, tmp_path) as ledger:
        exp = _interrupted(
            campaign, ledger, [("hotplate.set_temperature(temp_c=120.0)", True, True), ("pump.dispense(volume_ul=40)", False, False)]
        )
        before = len(transcript.written())
        result = CampaignRunner(campaign, ledger, backend).run_experiment(exp.id)
        assert ledger.counts()["unknown"] == 1
    assert result.state == "unknown"
    assert "pump.dispense(volume_ul=40) was unconfirmed" in result.error and "orchestrator resolve" in result.error
    assert len(transcript.written()) == before, "not one byte was sent for it"


def test_an_experiment_whose_readings_were_saved_is_finished_from_them_without_sending(bench, tmp_path):
    """The crash came after the last step but before the result was committed: the saved spectrum is analysed."""
    campaign, b, drivers, transcript = bench
    backend = InstrumentBackend(campaign, drivers, b.lab.clock, tmp_path / "raw")
    backend.executor.start_keepalive()
    with Ledger.for_campaign(campaign, tmp_path) as ledger:
        (exp,) = ledger.add_proposed([{"temp_c": 120.0}], "sobol")
        first = CampaignRunner(campaign, ledger, backend).run_experiment(exp.id)
        assert first.state == "completed"
        ledger._db.execute("UPDATE experiments SET state = 'running', outcomes = NULL, raw = NULL WHERE id = ?", (exp.id,))
        before = len(transcript.written())
        again = CampaignRunner(campaign, ledger, backend).run_experiment(exp.id)
        assert any("resumed: every step had been done" in (e["detail"] or "") for e in ledger.events(exp.id))
    assert again.state == "completed" and again.outcomes == first.outcomes and again.raw == first.raw
    assert len(transcript.written()) == before


def test_the_simulated_bench_journal_accounts_for_each_key(write_campaign, lab_dict, tmp_path):
    """The bench's journal says, by idempotency key, what it did; a run resumed after a crash asks it."""
    from tests.conftest import REPO

    data = yaml.safe_load((REPO / "campaigns" / "perovskite_film_hardware.yaml").read_text())
    data["budget"] = {"max_experiments": 1, "batch_size": 1, "initial_experiments": 1}
    campaign = load_campaign(write_campaign(data))
    with (
        Ledger.for_campaign(campaign, tmp_path) as ledger,
        open_backend(campaign, tmp_path, simulate=True) as backend,
    ):
        run_loop(CampaignRunner(campaign, ledger, backend))
        (exp,) = ledger.experiments()
        account = backend.inquire(exp.dispatch_key)
        assert backend.inquire("never-used-key") is None
        # Decisions a resumed run would take for a dispense left unconfirmed, asked of this journal:
        log = [StepRecord(0, "pump_fai.dispense(...)", False, "started", None, None)]
        steps = backend.procedure.steps(exp.conditions)
        assert decide(steps, log, account, can_ask=True).verdict == "unknown"
        assert decide(steps, log, backend.inquire("never-used-key"), can_ask=True).verdict == "redispatch"
    assert account.material_samples == 1 and account.measured
    assert sum("dispensed" in e for e in account.events) == 5
    if exp.state == "completed":
        assert exp.outcomes["band_gap_ev"] == pytest.approx(account.truth["band_gap_ev"], abs=0.02)
    assert "it was measured" in decide(steps, log, account, can_ask=True).reason


def test_a_simulated_bench_run_repeats_exactly_under_its_seed(write_campaign, lab_dict, tmp_path):
    campaign = load_campaign(write_campaign(lab_dict))
    results = []
    for run in ("a", "b"):
        with (
            Ledger.for_campaign(campaign, tmp_path / run) as ledger,
            open_backend(campaign, tmp_path / run, simulate=True) as backend,
        ):
            run_loop(CampaignRunner(campaign, ledger, backend))
            results.append([(e.conditions, e.outcomes, e.state) for e in ledger.experiments()])
    assert results[0] == results[1]
