"""Prefect for the flow tests: the test harness's temporary API, or a real `prefect server start`."""

from __future__ import annotations

import pytest

from tests.prefect_server import running_server


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    """Prefect's test harness (a temporary API server in a subprocess) as the current API."""
    home = tmp_path_factory.mktemp("prefect-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PREFECT_HOME", str(home))
        mp.setenv("DO_NOT_TRACK", "1")
        mp.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
        from prefect.testing.utilities import prefect_test_harness

        with prefect_test_harness(server_startup_timeout=120), temporary_settings(
            {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
        ):
            yield


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """A real `prefect server start` on a free 127.0.0.1 port: ``(base URL, PREFECT_HOME)``."""
    with running_server(tmp_path_factory.mktemp("prefect-server")) as server:
        yield server
