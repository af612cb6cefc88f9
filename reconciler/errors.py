"""The exceptions the reconciler raises for conditions a user can fix."""

from __future__ import annotations


class ReconcilerError(Exception):
    """A known failure, reported to the user without a traceback."""


class ManifestError(ReconcilerError):
    """One or more problems in the manifest files, each with its location."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class ConfigError(ReconcilerError):
    """A missing or invalid setting: domain, credentials or command-line value."""


class ApiError(ReconcilerError):
    """A request to the Management API failed or returned an unusable response.

    `ambiguous` is true when the portal may have acted although the request
    failed: a timeout, a dropped connection or a 5xx response.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        error_key: str | None = None,
        ambiguous: bool = False,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error_key = error_key
        self.ambiguous = ambiguous


class StateError(ReconcilerError):
    """The state file cannot be read or written."""


class PlanFileError(ReconcilerError):
    """A saved plan cannot be read, or was changed after it was made."""


class GuardError(ReconcilerError):
    """A plan does more damage than allowed without an explicit flag."""


class StalePlanError(PlanFileError):
    """A saved plan no longer matches its manifest; it must be made again."""
