"""Changes to Rasa's own code that keep its behaviour and cut its cost, applied by
`bot.engine_launcher` in the engine's process (Python 3.10, the engine's venv: no app imports).

**The action server's answer is checked against a schema compiled once.** Rasa 3.6 checks each
answer of the action endpoint with ``jsonschema.validate(answer, schema)``
(``RemoteAction._validate_action_result``), which first validates the schema itself against
its meta-schema and builds a new validator, on every action call. The schema is Rasa's event
schema, large and fixed. Profiling the engine at 20 concurrent conversations
(``benchmarks.engine_profile``) put about a fifth of its busy samples under that one call.
Here the validator is built and the schema checked once; each answer is then validated exactly
as ``validate`` does it (``best_match`` of the validator's errors), and an invalid answer
raises the same ``ValidationError`` with Rasa's own hint appended.

**The SQLite tracker store commits without waiting for the disk.** Rasa's ``SQLTrackerStore`` is
synchronous: every turn's ``COMMIT`` runs on the engine's event loop, and SQLite's default
rollback journal with ``synchronous=FULL`` waits for the disk on each. The engine's SQLite
connections get the settings the app's own SQLite database has (`crm_backend.db`): write-ahead
log and ``synchronous=NORMAL`` (a commit survives the process dying; only a power cut may lose
the last turns before a checkpoint). PostgreSQL, the production tracker store, is untouched.
"""

from __future__ import annotations

import sqlite3
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def _action_result_validator() -> Any:
    from jsonschema.validators import validator_for
    from rasa.core.actions.action import RemoteAction

    schema = RemoteAction.action_response_format_spec()
    cls = validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _validate_action_result(self: Any, result: dict[str, Any]) -> bool:
    from jsonschema.exceptions import best_match
    from rasa.shared.constants import DOCS_BASE_URL

    error = best_match(_action_result_validator().iter_errors(result))
    if error is not None:
        error.message += (
            f". Failed to validate Action server response from API, "
            f"make sure your response from the Action endpoint is valid. "
            f"For more information about the format visit "
            f"{DOCS_BASE_URL}/custom-actions"
        )
        raise error
    return True


def _sqlite_without_waiting(dbapi_connection: Any, _record: Any) -> None:
    if isinstance(dbapi_connection, sqlite3.Connection):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()


def apply() -> None:
    """Install the changes (call before Rasa starts)."""
    from rasa.core.actions.action import RemoteAction
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    RemoteAction._validate_action_result = _validate_action_result
    if not event.contains(Engine, "connect", _sqlite_without_waiting):
        event.listen(Engine, "connect", _sqlite_without_waiting)
