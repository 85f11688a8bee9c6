"""One exception root for the orchestrator; every message says what to do about the problem."""

from __future__ import annotations


class OrchestratorError(Exception):
    """Root of every error this project raises on purpose."""


class UserInputError(OrchestratorError, ValueError):
    """Something the user wrote (a campaign file, a CLI option) is wrong; the CLI exits with code 2."""


class CampaignFileError(UserInputError):
    """A campaign file cannot be read or does not validate.

    Attributes:
        path: the file.
        problems: one human-readable line per problem, each naming the field path and YAML line.
    """

    def __init__(self, path: str, problems: list[str]):
        self.path = path
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{path}: {len(self.problems)} problem(s)\n{lines}")


class LedgerError(OrchestratorError):
    """The ledger cannot be opened or does not match the campaign."""


class CampaignMismatchError(LedgerError, UserInputError):
    """The ledger on disk belongs to a campaign whose search space or outcomes differ from the file."""


class CampaignBusyError(LedgerError, UserInputError):
    """Another live process is running the same campaign (holds its run lock); the message names it."""


class SimulatorError(OrchestratorError):
    """A simulator is misconfigured or returned something that is not a set of outcomes."""


class ExperimentFailed(OrchestratorError):
    """An experiment ran but produced no usable measurement (e.g. the film did not form).

    A failed experiment is data, not a crash: the loop records it as ``failed`` with ``reason``, and with
    ``raw`` (reading label → file) where raw readings were taken (a flat spectrum is data too).
    """

    def __init__(self, reason: str, raw: dict[str, str] | None = None):
        self.reason = reason
        self.raw = raw
        super().__init__(reason)


class ExperimentUnknown(OrchestratorError):
    """What became of a dispatched experiment cannot be told (a station died while an irreversible step ran).

    The loop records it as ``unknown`` with ``reason``: never sent again, settled by a person with
    ``orchestrator resolve``.
    """

    def __init__(self, reason: str, raw: dict[str, str] | None = None):
        self.reason = reason
        self.raw = raw
        super().__init__(reason)
