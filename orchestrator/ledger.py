"""The ledger: the durable record of a campaign, one SQLite file per campaign.

Every state change is its own committed transaction (WAL journal, ``synchronous=FULL``) before the
loop takes its next action, so a crash loses nothing that was measured. Experiments move
``proposed → running → completed | failed`` (``proposed → failed`` when refused before starting);
every change is also appended to ``events``. The ledger, not Prefect, is the source of truth: a
resumed run reads it to know where it stands.

Exactly-once dispatch: each experiment gets an idempotency key when proposed. It is recorded ``running``
(dispatched, with the key and an attempt number) before anything is sent, and on instruments every step
is written to ``steps`` as ``started`` before its first byte and ``done`` (with its reading's file) after
the instrument answered. A run that finds an experiment still ``running`` after a crash reads that log
(and asks the backend) to decide: finish it from its saved readings, dispatch it again where nothing
irreversible had started, or mark it ``unknown`` for a person to settle with ``orchestrator resolve``
(``unknown → completed | failed``). Nothing is ever silently sent twice.

An experiment a person ran by hand enters already finished (``orchestrator add``, :meth:`Ledger.add_manual`):
generator ``manual``, events ``proposed → completed | failed`` in one transaction, counted in the budget.
"""

from __future__ import annotations

import json
import re
import secrets
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from orchestrator.campaign import Campaign
from orchestrator.errors import CampaignMismatchError, LedgerError

SCHEMA_VERSION = 2
STATES = ("proposed", "running", "completed", "failed", "unknown")
_ALLOWED = {
    "proposed": {"running", "failed"},
    "running": {"completed", "failed", "unknown"},
    "unknown": {"completed", "failed"},  # only by a person's decision (``orchestrator resolve``)
    "completed": set(),
    "failed": set(),
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS experiments (
    id INTEGER PRIMARY KEY,
    batch INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('proposed', 'running', 'completed', 'failed', 'unknown')),
    conditions TEXT NOT NULL,
    outcomes TEXT,
    error TEXT,
    generator TEXT NOT NULL,
    proposal_info TEXT NOT NULL DEFAULT '{}',
    raw TEXT,
    proposed_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    dispatch_key TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    approved_by TEXT
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    experiment_id INTEGER NOT NULL REFERENCES experiments(id),
    at TEXT NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    detail TEXT
);
CREATE TABLE IF NOT EXISTS steps (
    experiment_id INTEGER NOT NULL REFERENCES experiments(id),
    attempt INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    step TEXT NOT NULL,
    repeatable INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('started', 'done')),
    label TEXT,
    reading TEXT,
    started_at TEXT NOT NULL,
    done_at TEXT,
    PRIMARY KEY (experiment_id, attempt, idx)
);
"""
_EXPERIMENT_COLUMNS = (
    "id, batch, state, conditions, outcomes, error, generator, proposal_info, raw, proposed_at, started_at, finished_at"
)


@dataclass(frozen=True)
class Experiment:
    """One row of the ledger."""

    id: int
    batch: int
    state: str
    conditions: dict[str, Any]
    outcomes: dict[str, float] | None
    error: str | None
    generator: str
    proposal_info: dict[str, Any]
    proposed_at: str
    raw: dict[str, str] | None
    started_at: str | None
    finished_at: str | None
    dispatch_key: str | None = None
    attempts: int = 0
    approved_by: str | None = None


@dataclass(frozen=True)
class StepRecord:
    """One step of one dispatch attempt, as the executor logged it.

    Attributes:
        index: the step's position in the procedure.
        step: the step as text (``pump_a.dispense(volume_ul=40.0, …)``).
        repeatable: sending it again does no harm (a set point, a move to a station, a measurement).
        state: ``started`` (logged before its first byte) or ``done`` (the instrument answered).
        label: its reading's label, if it took one.
        reading: the file its reading was saved to.
    """

    index: int
    step: str
    repeatable: bool
    state: str
    label: str | None
    reading: str | None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Ledger:
    """A campaign's SQLite ledger. Thread-safe: experiment tasks of a batch write concurrently."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.RLock()
        try:
            if str(path) != ":memory:":
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
            with self._tx():
                for statement in _split(_SCHEMA):
                    self._db.execute(statement)
                columns = {r["name"] for r in self._db.execute("PRAGMA table_info(experiments)")}
                if "approved_by" not in columns:  # ledgers written before approval existed
                    self._db.execute("ALTER TABLE experiments ADD COLUMN approved_by TEXT")
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{path}: cannot open the ledger ({exc}); is it a campaign ledger file?") from None

    def _migrate(self) -> None:
        """Brings a ledger written by an older version to this schema, keeping every row.

        The ``unknown`` state needs the table's CHECK constraint rewritten, which SQLite does only by
        copying the table; it happens once, in one transaction.
        """
        row = self._db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'experiments'").fetchone()
        if row is None or "'unknown'" in row["sql"]:
            return
        columns = {r["name"] for r in self._db.execute("PRAGMA table_info(experiments)")}
        keep = [c.strip() for c in _EXPERIMENT_COLUMNS.split(",") if c.strip() in columns]
        create = next(s for s in _split(_SCHEMA) if "TABLE IF NOT EXISTS experiments" in s)
        self._db.execute("PRAGMA foreign_keys=OFF")  # events point at experiments while the table is swapped
        try:
            with self._tx():
                self._db.execute(create.replace("IF NOT EXISTS experiments", "experiments_v2"))
                names = ", ".join(keep)
                self._db.execute(f"INSERT INTO experiments_v2 ({names}) SELECT {names} FROM experiments")
                self._db.execute("DROP TABLE experiments")
                self._db.execute("ALTER TABLE experiments_v2 RENAME TO experiments")
        finally:
            self._db.execute("PRAGMA foreign_keys=ON")

    @classmethod
    def for_campaign(cls, campaign: Campaign, results_dir: str | Path) -> "Ledger":
        """Opens (or creates) ``results_dir/<campaign name>/ledger.sqlite`` and binds it to the campaign.

        Raises:
            CampaignMismatchError: the ledger holds a campaign with other parameters or outcomes.
        """
        ledger = cls(Path(results_dir) / campaign.name / "ledger.sqlite")
        ledger.bind(campaign)
        return ledger

    def bind(self, campaign: Campaign) -> None:
        """Records the campaign on first use; afterwards checks the search space still matches."""
        meta = self.meta()
        fingerprint = campaign.space_fingerprint()
        if "space_fingerprint" in meta and meta["space_fingerprint"] != fingerprint:
            raise CampaignMismatchError(
                f"{self.path}: this ledger belongs to campaign '{meta.get('campaign_name')}' with different parameters "
                "or outcomes; give the changed campaign a new name, or use another --results-dir"
            )
        with self._tx():
            for key, value in {
                "schema_version": str(SCHEMA_VERSION),
                "campaign_name": campaign.name,
                "space_fingerprint": fingerprint,
                "campaign": campaign.model_dump_json(),
            }.items():
                self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def meta(self) -> dict[str, str]:
        with self._lock:
            return {r["key"]: r["value"] for r in self._db.execute("SELECT key, value FROM meta")}

    @contextmanager
    def _tx(self) -> Iterator[None]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def add_proposed(
        self, conditions: Sequence[Mapping[str, Any]], generator: str, info: Mapping[str, Any] | None = None
    ) -> list[Experiment]:
        """Records a batch of proposals atomically; returns them with their new ids."""
        at = _now()
        prefix = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.meta().get("campaign_name", "exp"))[:40]
        with self._tx():
            batch = self._db.execute("SELECT COALESCE(MAX(batch), 0) + 1 FROM experiments").fetchone()[0]
            ids = []
            for cond in conditions:
                cur = self._db.execute(
                    "INSERT INTO experiments (batch, state, conditions, generator, proposal_info, proposed_at) "
                    "VALUES (?, 'proposed', ?, ?, ?, ?)",
                    (batch, json.dumps(dict(cond)), generator, json.dumps(dict(info or {})), at),
                )
                # Unique beyond this file: a ledger recreated from scratch reuses ids, never keys.
                key = f"{prefix}-{cur.lastrowid:05d}-{secrets.token_hex(4)}"
                self._db.execute("UPDATE experiments SET dispatch_key = ? WHERE id = ?", (key, cur.lastrowid))
                ids.append(cur.lastrowid)
                self._event(cur.lastrowid, at, None, "proposed", None)
        return [self.get(i) for i in ids]

    def mark_running(self, exp_id: int) -> Experiment:
        """Records the experiment as dispatched (attempt 1) before anything is sent for it."""
        return self._transition(exp_id, "running", started_at=_now(), attempts=1)

    def redispatch(self, exp_id: int, reason: str) -> Experiment:
        """Starts a new attempt of a ``running`` experiment that provably never reached the hardware
        irreversibly (same idempotency key); the reason goes to the event log."""
        with self._tx():
            row = self._db.execute("SELECT state, attempts FROM experiments WHERE id = ?", (exp_id,)).fetchone()
            if row is None or row["state"] != "running":
                raise LedgerError(f"experiment {exp_id} is not running; only a running experiment is dispatched again")
            self._db.execute("UPDATE experiments SET attempts = ? WHERE id = ?", (row["attempts"] + 1, exp_id))
            self._event(exp_id, _now(), "running", "running", f"dispatched again (attempt {row['attempts'] + 1}): {reason}")
        return self.get(exp_id)

    def mark_unknown(self, exp_id: int, reason: str) -> Experiment:
        """The run cannot tell what became of a dispatched experiment; a person must resolve it."""
        return self._transition(exp_id, "unknown", error=reason)

    def resolve(
        self, exp_id: int, *, outcomes: Mapping[str, float] | None = None, failed: str | None = None, by: str = ""
    ) -> Experiment:
        """A person's verdict on an ``unknown`` experiment: its measured outcomes, or failed with a reason.

        Raises:
            LedgerError: the experiment is not ``unknown``, or neither/both of ``outcomes`` and ``failed``.
        """
        if (outcomes is None) == (failed is None):
            raise LedgerError("resolve needs either the outcomes or a failure reason")
        exp = self.get(exp_id)
        if exp.state != "unknown":
            raise LedgerError(
                f"experiment {exp_id} is {exp.state}, not unknown; only experiments whose fate the run could not "
                "tell are resolved by hand"
            )
        who = f" by {by}" if by else ""
        if outcomes is not None:
            return self._transition(
                exp_id, "completed", outcomes=json.dumps(dict(outcomes)), finished_at=_now(),
                _detail=f"resolved{who}: {json.dumps(dict(outcomes))}", _resolving=True,
            )
        return self._transition(exp_id, "failed", error=f"resolved{who}: {failed}", finished_at=_now(), _resolving=True)

    def approve(
        self, exp_id: int, by: str, comment: str = "", conditions: Mapping[str, Any] | None = None
    ) -> Experiment:
        """A person approved a proposed experiment for sending, possibly with edited ``conditions``.

        Raises:
            LedgerError: the experiment is no longer ``proposed`` or ``by`` is empty.
        """
        if not by.strip():
            raise LedgerError("an approval names who decided")
        with self._tx():
            row = self._db.execute("SELECT state, conditions FROM experiments WHERE id = ?", (exp_id,)).fetchone()
            if row is None or row["state"] != "proposed":
                raise LedgerError(f"experiment {exp_id} is not proposed; only a proposal waiting to be sent is approved")
            detail = f"approved by {by}" + (f": {comment}" if comment else "")
            if conditions is not None and dict(conditions) != json.loads(row["conditions"]):
                detail = f"edited and approved by {by}: {row['conditions']} -> {json.dumps(dict(conditions))}" + (
                    f" ({comment})" if comment else ""
                )
                self._db.execute("UPDATE experiments SET conditions = ? WHERE id = ?", (json.dumps(dict(conditions)), exp_id))
            self._db.execute("UPDATE experiments SET approved_by = ? WHERE id = ?", (by, exp_id))
            self._event(exp_id, _now(), "proposed", "proposed", detail)
        return self.get(exp_id)

    def add_manual(
        self,
        conditions: Mapping[str, Any],
        outcomes: Mapping[str, float] | None = None,
        by: str = "",
        note: str | None = None,
        *,
        failed: str | None = None,
    ) -> Experiment:
        """Records an experiment a person ran by hand, already finished: its outcomes, or failed with a reason.

        One transaction inserts it as its own batch (generator ``manual``, ``proposal_info`` ``{"added_by",
        "note"}``), with a dispatch key like any other, ``started_at``/``finished_at`` set and ``attempts`` 0
        (nothing was dispatched), and the events ``proposed`` and ``completed``/``failed`` saying who added it.
        It counts in the budget like any experiment, and the next proposal learns from it. The conditions are
        stored as given: check them against the campaign first (``orchestrator.manual.parse_conditions``).

        Raises:
            LedgerError: neither or both of ``outcomes`` and ``failed``, or an outcome that is not a finite number.
        """
        import math

        if (outcomes is None) == (failed is None):
            raise LedgerError("a manual experiment needs either its outcomes or a failure reason")
        if outcomes is not None:
            outcomes = {str(k): float(v) for k, v in outcomes.items()}
            bad = [k for k, v in outcomes.items() if not math.isfinite(v)]
            if bad:
                raise LedgerError(f"outcome(s) {', '.join(bad)} must be finite numbers")
        at = _now()
        who = f" by {by}" if by else ""
        info = {"added_by": by or None, "note": note}
        prefix = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.meta().get("campaign_name", "exp"))[:40]
        state = "completed" if outcomes is not None else "failed"
        with self._tx():
            batch = self._db.execute("SELECT COALESCE(MAX(batch), 0) + 1 FROM experiments").fetchone()[0]
            cur = self._db.execute(
                "INSERT INTO experiments (batch, state, conditions, outcomes, error, generator, proposal_info, "
                "proposed_at, started_at, finished_at) VALUES (?, ?, ?, ?, ?, 'manual', ?, ?, ?, ?)",
                (
                    batch,
                    state,
                    json.dumps(dict(conditions)),
                    json.dumps(outcomes) if outcomes is not None else None,
                    failed,
                    json.dumps(info),
                    at,
                    at,
                    at,
                ),
            )
            exp_id = cur.lastrowid
            key = f"{prefix}-{exp_id:05d}-{secrets.token_hex(4)}"
            self._db.execute("UPDATE experiments SET dispatch_key = ? WHERE id = ?", (key, exp_id))
            self._event(exp_id, at, None, "proposed", f"added by hand{who}" + (f" ({note})" if note else ""))
            result = json.dumps(outcomes) if outcomes is not None else f"failed: {failed}"
            self._event(exp_id, at, "proposed", state, f"added by hand{who}: {result}")
        return self.get(exp_id)

    def note(self, exp_id: int, detail: str) -> None:
        """Appends an event that changes no state (e.g. why a resumed experiment was finished)."""
        with self._tx():
            state = self.get(exp_id).state
            self._event(exp_id, _now(), state, state, detail)

    # --- the step log of a dispatch ------------------------------------------------------------------
    def step_started(self, exp_id: int, attempt: int, index: int, step: str, repeatable: bool) -> None:
        """Logs a step as started; committed before the step's first byte is sent."""
        with self._tx():
            self._db.execute(
                "INSERT OR REPLACE INTO steps (experiment_id, attempt, idx, step, repeatable, state, started_at) "
                "VALUES (?, ?, ?, ?, ?, 'started', ?)",
                (exp_id, attempt, index, step, int(repeatable), _now()),
            )

    def step_done(
        self, exp_id: int, attempt: int, index: int, label: str | None = None, reading: str | None = None
    ) -> None:
        """Logs a step as done (the instrument answered), with its reading's label and file, if it took one."""
        with self._tx():
            self._db.execute(
                "UPDATE steps SET state = 'done', label = ?, reading = ?, done_at = ? "
                "WHERE experiment_id = ? AND attempt = ? AND idx = ?",
                (label, reading, _now(), exp_id, attempt, index),
            )

    def steps(self, exp_id: int, attempt: int | None = None) -> list[StepRecord]:
        """The step log of one attempt (default: the experiment's latest), in step order."""
        if attempt is None:
            attempt = self.get(exp_id).attempts
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM steps WHERE experiment_id = ? AND attempt = ? ORDER BY idx", (exp_id, attempt)
            ).fetchall()
        return [
            StepRecord(r["idx"], r["step"], bool(r["repeatable"]), r["state"], r["label"], r["reading"]) for r in rows
        ]

    def mark_completed(
        self, exp_id: int, outcomes: Mapping[str, float], raw: Mapping[str, str] | None = None
    ) -> Experiment:
        """Records the outcomes and, where instruments took them, the raw readings' files (label → path)."""
        return self._transition(
            exp_id, "completed", outcomes=json.dumps(dict(outcomes)), raw=_raw(raw), finished_at=_now()
        )

    def mark_failed(self, exp_id: int, reason: str, raw: Mapping[str, str] | None = None) -> Experiment:
        return self._transition(exp_id, "failed", error=reason, raw=_raw(raw), finished_at=_now())

    def _transition(self, exp_id: int, to_state: str, **columns: Any) -> Experiment:
        with self._tx():
            row = self._db.execute("SELECT state FROM experiments WHERE id = ?", (exp_id,)).fetchone()
            if row is None:
                raise LedgerError(f"no experiment {exp_id} in {self.path}")
            resolving = columns.pop("_resolving", False)
            if to_state not in _ALLOWED[row["state"]] or (row["state"] == "unknown" and not resolving):
                raise LedgerError(f"experiment {exp_id} is {row['state']}; it cannot become {to_state}")
            detail = columns.pop("_detail", None) or columns.get("error") or columns.get("outcomes")
            sets = ", ".join(f"{k} = ?" for k in ["state", *columns])
            self._db.execute(f"UPDATE experiments SET {sets} WHERE id = ?", (to_state, *columns.values(), exp_id))
            self._event(exp_id, _now(), row["state"], to_state, detail)
        return self.get(exp_id)

    def _event(self, exp_id: int, at: str, from_state: str | None, to_state: str, detail: str | None) -> None:
        self._db.execute(
            "INSERT INTO events (experiment_id, at, from_state, to_state, detail) VALUES (?, ?, ?, ?, ?)",
            (exp_id, at, from_state, to_state, detail),
        )

    def get(self, exp_id: int) -> Experiment:
        with self._lock:
            row = self._db.execute("SELECT * FROM experiments WHERE id = ?", (exp_id,)).fetchone()
        if row is None:
            raise LedgerError(f"no experiment {exp_id} in {self.path}")
        return _experiment(row)

    def experiments(self, states: Sequence[str] | None = None) -> list[Experiment]:
        """All experiments in id order, optionally only those in ``states``."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM experiments ORDER BY id").fetchall()
        exps = [_experiment(r) for r in rows]
        return [e for e in exps if states is None or e.state in states]

    def events(self, exp_id: int | None = None) -> list[dict[str, Any]]:
        with self._lock:
            if exp_id is None:
                rows = self._db.execute("SELECT * FROM events ORDER BY seq").fetchall()
            else:
                rows = self._db.execute("SELECT * FROM events WHERE experiment_id = ? ORDER BY seq", (exp_id,)).fetchall()
        return [dict(r) for r in rows]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) AS n FROM experiments GROUP BY state").fetchall()
        out = dict.fromkeys(STATES, 0)
        out.update({r["state"]: r["n"] for r in rows})
        return out

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _raw(raw: Mapping[str, str] | None) -> str | None:
    return json.dumps(dict(raw)) if raw else None


def _split(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def _experiment(row: sqlite3.Row) -> Experiment:
    return Experiment(
        id=row["id"],
        batch=row["batch"],
        state=row["state"],
        conditions=json.loads(row["conditions"]),
        outcomes=json.loads(row["outcomes"]) if row["outcomes"] else None,
        error=row["error"],
        generator=row["generator"],
        proposal_info=json.loads(row["proposal_info"]),
        proposed_at=row["proposed_at"],
        raw=json.loads(row["raw"]) if row["raw"] else None,
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        dispatch_key=row["dispatch_key"],
        attempts=row["attempts"],
        approved_by=row["approved_by"],
    )
