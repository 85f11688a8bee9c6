"""One writer per campaign: an advisory lock file next to the ledger, held for a run's lifetime.

``orchestrator run`` (and the Prefect flow) take ``results/<campaign>/run.lock`` with a non-blocking
``fcntl.flock`` before writing the ledger; a second run of the same campaign is refused with
:class:`~orchestrator.errors.CampaignBusyError` naming the holder (pid, host, start time, written into
the file). The kernel drops the lock when the holder's process ends, however it ends (a SIGKILL
included), so a stale file never blocks the next run: its old contents are simply overwritten.
Readers (``status``, ``export``) never take it; SQLite's WAL lets them read while the run writes.

The lock is re-entrant within one process (the CLI takes it, then the flow it starts in-process takes
it again without deadlocking on its own ``flock``). Where ``fcntl`` does not exist (Windows, not a
target) the lock does nothing.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

from orchestrator.errors import CampaignBusyError

LOCK_NAME = "run.lock"

# Locks this process holds: resolved lock path -> [fd, depth]. flock() locks belong to the open file, so a
# second open() of the same file in this process would conflict with the first; nesting reuses it instead.
_held: dict[Path, list[int]] = {}
_held_guard = threading.Lock()


class RunLock:
    """Context manager holding ``<campaign dir>/run.lock`` exclusively; raises ``CampaignBusyError`` if taken.

    Args:
        campaign_dir: the folder holding the campaign's ``ledger.sqlite`` (created if missing).
        campaign_name: named in the refusal message.
    """

    def __init__(self, campaign_dir: str | Path, campaign_name: str):
        self.path = Path(campaign_dir) / LOCK_NAME
        self.campaign_name = campaign_name
        self._key: Path | None = None

    @classmethod
    def for_campaign(cls, campaign_name: str, results_dir: str | Path) -> "RunLock":
        """The lock of ``results_dir/<campaign name>/ledger.sqlite``."""
        return cls(Path(results_dir) / campaign_name, campaign_name)

    def acquire(self) -> None:
        if fcntl is None or self._key is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        key = self.path.resolve()
        with _held_guard:
            if key in _held:
                _held[key][1] += 1
                self._key = key
                return
            # No O_TRUNC: the holder's details must survive our failed attempt. The fd is not inherited by
            # child processes (PEP 446), so a Prefect server or instrument helper cannot keep the lock alive.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _read_holder(fd)
                os.close(fd)
                raise CampaignBusyError(
                    f"campaign '{self.campaign_name}' is already running ({holder}); wait for it or stop it "
                    f"(lock {self.path}). 'orchestrator status' works meanwhile"
                ) from None
            info = {"pid": os.getpid(), "host": socket.gethostname(), "since": _now()}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
            _held[key] = [fd, 1]
            self._key = key

    def release(self) -> None:
        if self._key is None:
            return
        with _held_guard:
            entry = _held[self._key]
            entry[1] -= 1
            if entry[1] == 0:
                fd = entry[0]
                del _held[self._key]
                try:
                    os.ftruncate(fd, 0)  # a file left behind names nobody; the next run overwrites it anyway
                finally:
                    os.close(fd)  # closing the last descriptor drops the flock
            self._key = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {info['pid']} on host {info['host']} since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder still starting"  # it took the lock but has not written its details yet


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
