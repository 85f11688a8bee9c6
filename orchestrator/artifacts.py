"""The campaign as Prefect artifacts, for people watching a run in the Prefect UI.

Four artifacts per campaign, under keys stable per campaign so the UI's artifact pages keep their
history across runs and resumes:

- ``<campaign>-progress``: experiments done of the budget (a progress artifact, updated as each finishes);
- ``<campaign>-experiments``: a table of every experiment (conditions, state, outcomes, error);
- ``<campaign>-summary``: markdown with the best so far, the Pareto front, the transfer method in use and
  the models' leave-one-out fit quality (``orchestrator.summary``);
- ``<campaign>-convergence``: the convergence plot (best objective value per experiment, the Sobol phase
  shaded) as an image artifact whose URL is the PNG itself (a ``data:`` URL), so it needs no file server.

The table, summary and plot are published once per batch, right after the loop's refit (whose models the
summary scores, so nothing is fitted twice), and at the end. Publishing never stops a
campaign: a failure is logged and the run goes on (the ledger, not the UI, is the record).
"""

from __future__ import annotations

import base64
import logging
import re
import threading
from typing import TYPE_CHECKING, Any

from prefect.artifacts import (
    create_image_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from orchestrator.summary import campaign_summary, convergence_png, experiments_table, summary_markdown

if TYPE_CHECKING:
    from orchestrator.ledger import Experiment
    from orchestrator.loop import CampaignRunner

log = logging.getLogger(__name__)
FINISHED = ("completed", "failed", "unknown")


def artifact_key(campaign_name: str, what: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) for one of the campaign's artifacts."""
    slug = re.sub(r"[^a-z0-9]+", "-", campaign_name.lower()).strip("-") or "campaign"
    return f"{slug}-{what}"


class CampaignArtifacts:
    """Publishes one campaign run's artifacts; call :meth:`start`, pass :meth:`on_event` to the runner as
    (part of) its listener, and call :meth:`publish` after each batch and at the end."""

    def __init__(self, runner: "CampaignRunner"):
        self.runner = runner
        self.name = runner.campaign.name
        self._progress_id: Any = None
        self._lock = threading.Lock()

    def key(self, what: str) -> str:
        return artifact_key(self.name, what)

    def _fraction(self) -> tuple[float, str]:
        counts = self.runner.ledger.counts()
        done = sum(counts[s] for s in FINISHED)
        budget = self.runner.campaign.budget.max_experiments
        detail = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        return min(100.0, 100.0 * done / max(1, budget)), f"{done} of {budget} experiments done ({detail or 'none yet'})"

    def start(self) -> None:
        percent, text = self._fraction()
        self._guard("progress", lambda: setattr(self, "_progress_id", create_progress_artifact(
            progress=percent, key=self.key("progress"), description=text
        )))

    def on_event(self, kind: str, exp: "Experiment", runner: "CampaignRunner") -> None:
        if kind not in FINISHED or self._progress_id is None:
            return
        percent, text = self._fraction()
        with self._lock:
            self._guard("progress", lambda: update_progress_artifact(self._progress_id, percent, description=text))

    def publish(self, surrogate: Any = None, *, fit_quality: bool = True) -> None:
        """Publishes the experiments table, the summary and the convergence plot.

        Args:
            surrogate: the loop's surrogate just fitted to the ledger as it is; the summary scores it
                instead of fitting the models a second time.
            fit_quality: include the models' leave-one-out fit (without a surrogate: fitted here).
        """
        with self._lock:
            self._guard("experiments table", self._table)
            self._guard("summary", lambda: self._summary(surrogate, fit_quality))
            self._guard("convergence plot", self._plot)

    def _table(self) -> None:
        rows = experiments_table(self.runner)
        if rows:
            create_table_artifact(rows, key=self.key("experiments"), description=f"Experiments of campaign {self.name}")

    def _summary(self, surrogate: Any, fit_quality: bool) -> None:
        markdown = summary_markdown(campaign_summary(self.runner, fit_quality=fit_quality, surrogate=surrogate))
        create_markdown_artifact(markdown, key=self.key("summary"), description=f"Campaign {self.name} at a glance")

    def _plot(self) -> None:
        png = convergence_png(self.runner)
        url = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        create_image_artifact(url, key=self.key("convergence"), description=f"Convergence of campaign {self.name}")

    def _guard(self, what: str, action: Any) -> None:
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - the UI is a view; the campaign must go on without it
            log.warning("could not publish the %s artifact of %s: %s", what, self.name, exc)
