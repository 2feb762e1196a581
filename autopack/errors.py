"""Typed errors, in one place.

``RetryableError`` is what Celery's ``autoretry_for`` retries; everything else is
either a user error (answered 4xx by the API) or a decision the engine records.
"""

from __future__ import annotations


class AutopackError(Exception):
    """Base of every error Autopack raises on purpose."""


class RetryableError(AutopackError):
    """A passing fault (broker, provider outage, lock contention): try the step again."""


class ConfigError(AutopackError):
    """A configuration file or setting is missing or wrong."""


class PlanError(AutopackError):
    """A plan failed validation. ``field`` is a dotted path to the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class InvalidRequest(AutopackError):
    """A request's body or argument is not acceptable. ``field`` names the offending part."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class NotFound(AutopackError):
    """An id or name that does not exist."""


class Conflict(AutopackError):
    """A request that contradicts the current state (answered 409)."""


class IllegalTransition(Conflict):
    """A state-machine transition that is not allowed."""

    def __init__(self, entity: str, current: str, target: str) -> None:
        super().__init__(f"illegal {entity} transition {current} -> {target}")
        self.entity = entity
        self.current = current
        self.target = target


class EditParseError(AutopackError):
    """The Builder's answer could not be parsed into edits."""


class EditApplyError(AutopackError):
    """An edit did not match the file it targets.

    ``closest`` holds the lines of the file that came closest to what the edit
    looked for, so the model can be told exactly what is there.
    """

    def __init__(self, path: str, message: str, closest: str = "") -> None:
        text = f"{path}: {message}"
        if closest:
            text += f"\nclosest lines in {path}:\n{closest}"
        super().__init__(text)
        self.path = path
        self.message = message
        self.closest = closest


class EditRefused(AutopackError):
    """Governance refused one or more edits; ``reasons`` is a list of (path, reason)."""

    def __init__(self, reasons: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{p}: {r}" for p, r in reasons))
        self.reasons = reasons


class GitError(AutopackError):
    """A git command failed."""


class RefMoved(GitError):
    """A compare-and-set on a ref found another value than expected."""


class SandboxUnavailable(AutopackError):
    """The sandbox cannot start on this machine; the message says how to fix it."""


class ProviderError(AutopackError):
    """A model provider failed in a way retries did not cure.

    ``maybe_billed``: the request reached the provider and its answer was lost (a read timeout, a
    dropped connection), so the provider may have generated, and billed, the whole answer. An
    answer with an error status, or a connection never made, is not billed."""

    def __init__(self, provider: str, message: str, status: int | None = None, *, maybe_billed: bool = False) -> None:
        super().__init__(f"{provider}: {message}" + (f" (HTTP {status})" if status else ""))
        self.provider = provider
        self.status = status
        self.maybe_billed = maybe_billed


class ProviderUnavailable(ProviderError, RetryableError):
    """Outage, overload (529), rate limit (429) or connection error after the adapter's retries."""


class CassetteMiss(AutopackError):
    """A replayed cassette holds no exchange for the request; the message names what was looked for."""


class BudgetExceeded(AutopackError):
    """A model call would not fit in a token or cost cap. ``kind`` is 'tokens' or 'cost'."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class UnsafePath(GitError):
    """A path given for a workspace write would leave the worktree, pass through a
    symlink, enter ``.git`` or a submodule, or is otherwise not a plain repository path."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path!r}: {reason}")
        self.path = path
        self.reason = reason


class DoctorVerdictError(AutopackError, ValueError):
    """The Doctor's answer is not a usable decision (no JSON, unknown action, confidence out of 0..1…)."""

