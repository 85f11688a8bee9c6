"""Human approval of a batch before it is sent to the instruments (campaign ``approval: required``).

The decision logic is here, free of Prefect: :func:`pending_approval` says which experiments about to be
sent still need a person's decision, :func:`batch_markdown` shows them, and :func:`apply_decision` records a
decision in the ledger (approve as proposed, approve with edited conditions, or reject). ``flows.py``
asks for the decision with Prefect's pause-with-input, so the person decides in the Prefect UI.

A rejected experiment is recorded ``failed`` ("rejected before sending by …"): it used a slot of the
budget, and the proposer treats the region like a failure and steers away from it. Edited conditions are
checked like ``orchestrator add`` checks them (bounds, choices, constraints); an invalid edit changes
nothing and the batch is asked about again, with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from orchestrator.errors import UserInputError
from orchestrator.report import fmt

if TYPE_CHECKING:
    from orchestrator.ledger import Experiment
    from orchestrator.loop import CampaignRunner


@dataclass(frozen=True)
class BatchDecision:
    """What a person decided about a batch.

    Attributes:
        decision: ``approve`` (as proposed), ``edit`` (approve with ``conditions``) or ``reject``.
        decided_by: who decided (required).
        comment: why, kept in the ledger.
        conditions: for ``edit``, every experiment's conditions, in the batch's order.
    """

    decision: Literal["approve", "edit", "reject"]
    decided_by: str
    comment: str = ""
    conditions: Sequence[Mapping[str, Any]] | None = None


def pending_approval(runner: "CampaignRunner", ids: Sequence[int]) -> list["Experiment"]:
    """The experiments among ``ids`` still waiting for a decision (``proposed`` and not approved)."""
    if runner.campaign.approval != "required":
        return []
    exps = [runner.ledger.get(i) for i in ids]
    return [e for e in exps if e.state == "proposed" and not e.approved_by]


def batch_markdown(runner: "CampaignRunner", exps: Sequence["Experiment"], problem: str | None = None) -> str:
    """The batch as the person deciding sees it: conditions per experiment, what proposed them, how to answer."""
    names = [p.name for p in runner.campaign.parameters]
    units = {p.name: getattr(p, "unit", None) for p in runner.campaign.parameters}
    head = " | ".join(["id", "proposed by", *(f"{n} [{units[n]}]" if units[n] else n for n in names)])
    lines = [
        f"## Campaign {_md(runner.campaign.name)}: approve batch {exps[0].batch if exps else ''} before it is sent",
        "",
        f"| {head} |",
        "| " + " | ".join(["---"] * (len(names) + 2)) + " |",
    ]
    for e in exps:
        lines.append("| " + " | ".join([f"#{e.id}", _md(e.generator), *(_md(fmt(e.conditions[n])) for n in names)]) + " |")
    lines += [
        "",
        "Answer with **decision** `approve` (send as proposed), `edit` (change **conditions** below, one entry per "
        "experiment in this order, then send) or `reject` (record them as rejected; nothing is sent), and your "
        "name in **decided_by**.",
    ]
    if problem:
        lines += ["", f"**The last answer was not applied:** {_md(problem)}"]
    return "\n".join(lines)


def apply_decision(runner: "CampaignRunner", exps: Sequence["Experiment"], decision: BatchDecision) -> list[int]:
    """Records ``decision`` for the batch ``exps``; returns the ids now approved for sending.

    Raises:
        UserInputError: no name, an unknown decision, or edited conditions that are missing, of the wrong
            count, or break the campaign's bounds, choices or constraints; nothing is recorded then.
    """
    from orchestrator.manual import parse_conditions

    who = (decision.decided_by or "").strip()
    if not who:
        raise UserInputError("decided_by is empty: say who decided")
    comment = (decision.comment or "").strip()
    if decision.decision == "reject":
        for e in exps:
            exp = runner.ledger.mark_failed(e.id, f"rejected before sending by {who}" + (f": {comment}" if comment else ""))
            runner._emit(exp.state, exp)
        return []
    if decision.decision == "approve":
        for e in exps:
            runner.ledger.approve(e.id, who, comment)
        return [e.id for e in exps]
    if decision.decision != "edit":
        raise UserInputError(f"decision {decision.decision!r}: answer approve, edit or reject")
    edited = list(decision.conditions or [])
    if len(edited) != len(exps):
        raise UserInputError(f"edit: give conditions for each of the {len(exps)} experiments, in order (got {len(edited)})")
    checked = []
    for i, (e, cond) in enumerate(zip(exps, edited)):
        if not isinstance(cond, Mapping):
            raise UserInputError(f"edit: conditions[{i}] must be a mapping of parameter to value")
        try:
            checked.append(parse_conditions([f"{k}={v}" for k, v in cond.items()], runner.campaign, option=f"conditions[{i}]"))
        except UserInputError as exc:
            raise UserInputError(f"experiment #{e.id}: {exc}") from None
    for e, cond in zip(exps, checked):
        runner.ledger.approve(e.id, who, comment, conditions=cond)
    return [e.id for e in exps]


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("<", "&lt;")
