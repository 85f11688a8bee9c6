"""The ledger as a flat table for spreadsheets and notebooks."""

from __future__ import annotations

import pandas as pd

from orchestrator.campaign import Campaign
from orchestrator.ledger import Ledger


def ledger_frame(ledger: Ledger, campaign: Campaign) -> pd.DataFrame:
    """One row per experiment: id, batch, state, generator, timestamps, error, then a column per
    parameter and per outcome (empty where an experiment has no measurement)."""
    params = [p.name for p in campaign.parameters]
    outcomes = [o.name for o in campaign.outcomes]
    rows = []
    for e in ledger.experiments():
        row = {
            "id": e.id,
            "batch": e.batch,
            "state": e.state,
            "generator": e.generator,
            "proposed_at": e.proposed_at,
            "started_at": e.started_at,
            "finished_at": e.finished_at,
            "error": e.error,
        }
        row.update({p: e.conditions.get(p) for p in params})
        row.update({o: (e.outcomes or {}).get(o) for o in outcomes})
        rows.append(row)
    columns = ["id", "batch", "state", "generator", "proposed_at", "started_at", "finished_at", "error", *params, *outcomes]
    frame = pd.DataFrame(rows, columns=columns)
    for o in outcomes:
        frame[o] = pd.to_numeric(frame[o])
    return frame
