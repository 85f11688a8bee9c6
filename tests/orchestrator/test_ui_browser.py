"""End to end in a real browser: `prefect server start` on 127.0.0.1, a short simulated campaign run against it
with `orchestrator run`, then the flow run and its artifacts opened in headless Chromium.

Skipped, saying why, where no Chromium is installed (`.ci/run` installs Debian's `chromium` first). The
screenshot of the convergence artifact is saved to ``$ORCHESTRATOR_UI_SCREENSHOT`` if set, else under the
test's temporary folder; its path is printed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.prefect_server import api

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium found (install Debian's 'chromium' package, as .ci/browser does)"
)


def _browse(url: str, screenshot: Path | None = None) -> str:
    """The page's DOM after its scripts ran (and a screenshot, if asked)."""
    args = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--virtual-time-budget=30000", "--window-size=1400,1000"]
    if screenshot is not None:
        subprocess.run([*args, f"--screenshot={screenshot}", url], capture_output=True, timeout=120, check=False)
    out = subprocess.run([*args, "--dump-dom", url], capture_output=True, timeout=120, check=False)
    return out.stdout.decode(errors="replace")


def _text(dom: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", dom).split())


def test_a_campaign_run_shows_its_artifacts_and_plot_in_the_prefect_ui(prefect_server, tmp_path):
    base, home = prefect_server
    data = yaml.safe_load((REPO / "campaigns" / "perovskite_film.yaml").read_text())
    data["name"] = "ui_film"
    data["budget"] = {"max_experiments": 4, "batch_size": 1, "initial_experiments": 3}
    path = tmp_path / "ui_film.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    env = {**os.environ, "PREFECT_API_URL": f"{base}/api", "PREFECT_HOME": str(home), "DO_NOT_TRACK": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "run", str(path), "-q", "-r", str(tmp_path / "results")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr

    (flow_run,) = [r for r in api(base, "/flow_runs/filter", {}) if r["name"] == "ui_film"]
    assert flow_run["state_type"] == "COMPLETED" and "campaign:ui_film" in flow_run["tags"]
    artifacts = api(base, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run["id"]]}}})
    latest = {}
    for a in sorted(artifacts, key=lambda a: a["created"]):
        latest[a["key"]] = a
    assert {"ui-film-progress", "ui-film-experiments", "ui-film-summary", "ui-film-convergence"} <= set(latest)

    # The flow run page: its name, tags and task runs named by experiment.
    page = _text(_browse(f"{base}/runs/flow-run/{flow_run['id']}"))
    assert "ui_film" in page and "campaign:ui_film" in page and "Completed" in page

    # Each artifact's page as a person would open it from the run.
    summary = _text(_browse(f"{base}/artifacts/artifact/{latest['ui-film-summary']['id']}"))
    assert "Best so far" in summary and "Model fit (leave-one-out)" in summary
    table = _text(_browse(f"{base}/artifacts/artifact/{latest['ui-film-experiments']['id']}"))
    assert "anneal_temp_c" in table and "band_gap_ev" in table
    progress = _text(_browse(f"{base}/artifacts/artifact/{latest['ui-film-progress']['id']}"))
    assert "4 of 4 experiments done" in progress

    shot = Path(os.environ.get("ORCHESTRATOR_UI_SCREENSHOT", tmp_path / "convergence_artifact.png"))
    shot.parent.mkdir(parents=True, exist_ok=True)
    plot_dom = _browse(f"{base}/artifacts/artifact/{latest['ui-film-convergence']['id']}", screenshot=shot)
    assert re.search(r'<img[^>]+src="data:image/png;base64,iVBORw0KGgo', plot_dom), "the plot is shown as an image"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    print(f"screenshot: {shot}")
