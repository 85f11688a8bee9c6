"""Procedures describe steps; they are inspected here with no instrument at all."""

from __future__ import annotations

import pytest

from orchestrator.procedures import Action, Procedure, ProcedureError, Wait

ARGS = {("hotplate", "set_temperature"): ["temp_c"], ("pump", "dispense"): ["volume_ul", "rate_ul_min"]}


def arg_names(instrument, action):
    return ARGS.get((instrument, action), [])


def make(steps):
    return Procedure(steps=steps, arg_names=arg_names)


def test_steps_from_the_file_forms():
    proc = make(
        [
            {"pump.dispense": {"volume_ul": "{(1 - cs) * 100}", "rate_ul_min": 500}},
            {"hotplate.set_temperature": "{temp}"},
            {"wait": "{minutes} min"},
            {"spectrometer.measure": {"integration_ms": 100}, "as": "pl"},
            "stage.home",
        ]
    )
    assert proc.parameter_names == {"cs", "temp", "minutes"}
    steps = proc.steps({"cs": 0.25, "temp": 150.0, "minutes": 2.5})
    assert steps == [
        Action("pump", "dispense", {"volume_ul": 75.0, "rate_ul_min": 500}),
        Action("hotplate", "set_temperature", {"temp_c": 150.0}),
        Wait(150.0),
        Action("spectrometer", "measure", {"integration_ms": 100}, "pl"),
        Action("stage", "home", {}),
    ]


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([], "empty"),
        ([42], "not int"),
        (["nodot"], "instrument.action"),
        ([{"a.b": 1, "c.d": 2}], "one 'instrument.action"),
        ([{"wait": None}], "wait needs a duration"),
        ([{"pump.dispense": {"volume_ul": "{__import__('os')}"}}], "not allowed"),
    ],
)
def test_malformed_steps_name_the_step(steps, message):
    with pytest.raises(ProcedureError, match=message):
        make(steps)


def test_errors_at_render_name_the_step():
    proc = make([{"hotplate.set_temperature": 20}, {"wait": "{t} fortnights"}])
    with pytest.raises(ProcedureError, match=r"procedure.steps\[1\].*not a duration"):
        proc.steps({"t": 1.0})
    with pytest.raises(ProcedureError, match="takes no arguments"):
        make([{"stage.home": 1}]).steps({})


def film_procedure(conditions):
    return [Action("hotplate", "set_temperature", {"temp_c": conditions["temp"]}), Wait(60.0)]


def not_steps(conditions):
    return ["hotplate.set_temperature"]


def test_python_procedures_return_typed_steps():
    proc = Procedure(function="tests.orchestrator.test_procedures:film_procedure")
    assert proc.steps({"temp": 120.0}) == [Action("hotplate", "set_temperature", {"temp_c": 120.0}), Wait(60.0)]
    with pytest.raises(ProcedureError, match="must return a list"):
        Procedure(function="tests.orchestrator.test_procedures:not_steps").steps({})
    with pytest.raises(ProcedureError, match="cannot import"):
        Procedure(function="no_such_module_x:f")
    with pytest.raises(ProcedureError, match="has no function"):
        Procedure(function="tests.orchestrator.test_procedures:nope")
