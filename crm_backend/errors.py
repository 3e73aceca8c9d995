"""Domain exceptions. The HTTP API and the actions turn them into replies in one place each."""

from __future__ import annotations

import traceback
from pathlib import Path


class CrmError(Exception):
    """Base of every error the CRM raises on purpose."""

    code = "crm_error"


class NotFound(CrmError):
    """The thing asked for does not exist, or the caller may not know that it does."""

    code = "not_found"


class InvalidInput(CrmError):
    """A value from outside failed validation; `reason` names the rule it broke."""

    code = "invalid_input"

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(message or reason)
        self.reason = reason


class MalformedRequest(CrmError):
    """A request body that is not the JSON it must be."""

    code = "bad_request"


class InvalidTransition(CrmError):
    """A case status change the life cycle does not allow."""

    code = "invalid_transition"


class LookupThrottled(CrmError):
    """Too many failed progress queries from one sender; try again later."""

    code = "throttled"


class Unauthenticated(CrmError):
    """A caller with no credential, or one that is unknown or revoked."""

    code = "unauthorized"


class Forbidden(CrmError):
    """A known caller asking for something its grant does not cover."""

    code = "forbidden"


class CaseProofLocked(LookupThrottled):
    """Too many failed digit proofs against this case number: closed to them for a while.

    Raised for a number whether or not a case has it, so the refusal tells nothing.
    """

    code = "case_locked"


class RateLimited(CrmError):
    """A limit on a public entry point was reached; the message says so to the citizen."""

    code = "rate_limited"


class TooManySessions(RateLimited):
    """Too many new web chat sessions from one address recently."""

    code = "too_many_sessions"


class TooManyMessages(RateLimited):
    """Too many messages from one sender recently; this one was not processed."""

    code = "too_many_messages"


class CaseLimitReached(RateLimited):
    """The citizen filed as many cases today as one citizen may."""

    code = "case_limit_reached"


class BackupRefused(CrmError):
    """A backup file, or its target, that `restore` (or `backup`) will not use; nothing was changed."""

    code = "backup_refused"


def describe_error(error: BaseException) -> str:
    """An unexpected error for the log: its type and where it was raised, never its message.

    Messages can quote what a citizen sent (a database driver's error names the values it
    refused), and the log is read by more people than the conversation.
    """
    frames = traceback.extract_tb(error.__traceback__)
    where = " < ".join(f"{Path(frame.filename).name}:{frame.lineno} {frame.name}" for frame in reversed(frames[-6:]))
    return f"{type(error).__module__}.{type(error).__qualname__} at {where or 'unknown place'}"
