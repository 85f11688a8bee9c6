"""A real `prefect server start` for tests: on 127.0.0.1 at a free port, with its own PREFECT_HOME, and a
small JSON client for its REST API (what the UI's own scripts call)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import pytest


class PrefectServer(NamedTuple):
    base: str  # http://127.0.0.1:PORT
    home: Path  # its PREFECT_HOME


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# What Prefect's own client retries: the server answers 503 when its SQLite database is briefly locked (seen
# on a loaded 2-core CI machine) and rolls the request back, so sending it again is safe.
RETRY_CODES = {429, 502, 503}
RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0, 8.0)


def api(base: str, path: str, body: dict | None = None) -> Any:
    """GET (or POST ``body`` to) ``{base}/api{path}``; the JSON reply. Busy answers are retried."""
    for delay_s in (*RETRY_DELAYS_S, None):
        request = urllib.request.Request(
            f"{base}/api{path}",
            data=json.dumps(body).encode() if body is not None else None,
            headers={"content-type": "application/json"},
            method="POST" if body is not None else "GET",
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                return json.loads(reply.read())
        except urllib.error.HTTPError as exc:
            if exc.code not in RETRY_CODES or delay_s is None:
                raise
            time.sleep(delay_s)


def wait_for(what: str, check: Callable[[], Any], timeout: float, process: subprocess.Popen | None = None) -> Any:
    """Polls ``check`` until it returns something truthy (connection errors count as not yet)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except OSError:
            value = None
        if value:
            return value
        if process is not None and process.poll() is not None:
            pytest.fail(f"{what}: the process ended with {process.returncode}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.5)


@contextmanager
def running_server(home: Path) -> Iterator[PrefectServer]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_API_URL": f"{base}/api",  # the UI's own scripts call the API here
    }
    env.pop("PREFECT_API_URL", None)
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(f"prefect server on {base}", lambda: api(base, "/health") is True, 180, server)
        yield PrefectServer(base, home)
    finally:
        server.terminate()
        server.wait(timeout=30)
