"""Exactly-once dispatch on instruments: the step log written while an experiment runs, and what a run
resumed after a crash decides from it.

While an experiment runs, :class:`LedgerStepLog` writes each step to the ledger as ``started`` before its
first byte and ``done`` after the instrument answered, saving the step's reading to the raw folder first.
After a crash :func:`decide` reads that log:

1. every action done (and its readings on disk): **finish** the experiment from the saved readings;
2. nothing irreversible started (only set points, moves, measurements, which are harmless to send again):
   **dispatch again** with the same idempotency key;
3. an irreversible step (a dispense) had started: **ask** the lab where it can (the simulated bench keeps a
   journal by key); where it confirms nothing was dispensed, dispatch again;
4. otherwise the experiment's fate is **unknown**: it is never sent again; a person settles it with
   ``orchestrator resolve``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from instruments.readings import Reading
from orchestrator.crashpoints import crash_point
from orchestrator.ledger import Ledger, StepRecord
from orchestrator.procedures import Action, Step

Verdict = Literal["finish", "redispatch", "unknown", "continue"]


class LabAccount(Protocol):
    """A lab's own record of what it did for one key (the simulated bench's journal provides one)."""

    material_samples: int

    def describe(self) -> str: ...


Inquire = Callable[[str], LabAccount | None]


@dataclass(frozen=True)
class Decision:
    """What to do with an experiment found ``running`` when a run starts.

    Attributes:
        verdict: ``finish`` (analyse the saved readings), ``redispatch`` (send again, same key), ``unknown``, or
            ``continue`` (run the same attempt on: its parts are found again by their keys, none sent twice).
        reason: one sentence for the event log and the user.
        readings: for ``finish``, the saved reading files by label.
    """

    verdict: Verdict
    reason: str
    readings: dict[str, str] | None = None


class LedgerStepLog:
    """The executor's :class:`~orchestrator.executor.StepLog` for one attempt, written to the ledger.

    Args:
        ledger: the campaign's ledger.
        exp_id: the experiment.
        attempt: its dispatch attempt (the ledger's ``attempts``).
        save: ``save(label, reading) -> path``, called before the step is logged ``done`` so that a step
            marked done always has its reading on disk.
        reading_of: ``reading_of(step, result) -> (label, reading) | None``, which results are readings.
    """

    def __init__(
        self,
        ledger: Ledger,
        exp_id: int,
        attempt: int,
        save: Callable[[str, Reading], str],
        reading_of: Callable[[Action, Any], tuple[str, Reading] | None],
    ):
        self.ledger = ledger
        self.exp_id = exp_id
        self.attempt = attempt
        self.save = save
        self.reading_of = reading_of
        self.saved: dict[str, str] = {}

    def started(self, index: int, step: Action, repeatable: bool) -> None:
        self.ledger.step_started(self.exp_id, self.attempt, index, str(step), repeatable)
        crash_point("step_started")

    def done(self, index: int, step: Action, result: Any) -> None:
        reading = self.reading_of(step, result)
        if reading is None:
            self.ledger.step_done(self.exp_id, self.attempt, index)
        else:
            path = self.save(*reading)
            self.saved[reading[0]] = path
            self.ledger.step_done(self.exp_id, self.attempt, index, reading[0], path)
        crash_point("step_done")


def decide(planned: Sequence[Step], log: Sequence[StepRecord], account: LabAccount | None, can_ask: bool) -> Decision:
    """Decides the fate of an interrupted experiment from its step log.

    Args:
        planned: the experiment's steps as its procedure gives them now.
        log: the step log of its latest attempt.
        account: the lab's record for the experiment's key, if the lab was asked and knew it.
        can_ask: whether the lab keeps such records at all (``account=None`` then means "nothing done").
    """
    actions = [i for i, s in enumerate(planned) if isinstance(s, Action)]
    by_index = {r.index: r for r in log}
    if actions and all(i in by_index and by_index[i].state == "done" for i in actions):
        readings = {r.label: r.reading for r in log if r.label and r.reading}
        return Decision("finish", "every step had been done and its readings saved; finished from them", readings)
    irreversible = [r for r in log if not r.repeatable]
    if not log:
        return Decision("redispatch", "no step had been sent")
    if not irreversible:
        last = log[-1]
        return Decision(
            "redispatch",
            f"only steps that are harmless to repeat had been sent (the last: {last.step}, {last.state})",
        )
    if can_ask and (account is None or account.material_samples == 0):
        what = account.describe() if account is not None else "the lab has no record of this key"
        return Decision("redispatch", f"an irreversible step had started ({irreversible[0].step}), but {what}")
    done = [r.step for r in log if r.state == "done"]
    pending = [r.step for r in log if r.state == "started"]
    parts = [f"the run stopped after {len(done)} confirmed step(s)"]
    if pending:
        parts.append(f"while {pending[0]} was unconfirmed")
    if account is not None:
        parts.append(account.describe())
    elif not can_ask:
        parts.append("the instruments keep no record to ask")
    return Decision(
        "unknown",
        "; ".join(parts)
        + ". It was not sent again: check the sample, then record it with `orchestrator resolve ID --result "
        "outcome=value ...` or `--failed REASON`",
    )
