"""The engine's speed-ups keep Rasa's behaviour: checked in the engine's own venv (Python 3.10)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from crm_backend.settings import PROJECT_ROOT

ENGINE_PYTHON = PROJECT_ROOT / ".venv-rasa" / "bin" / "python"

# Runs in the engine's venv: Rasa's own validation and ours on the same answers of an action server.
CHECK = r"""
import json
from jsonschema import ValidationError
from jsonschema.validators import Draft202012Validator, validator_for
from rasa.core.actions.action import RemoteAction

from bot import engine_speedups

ANSWERS = [
    {"events": [{"event": "slot", "name": "phone", "value": "13800000000"}], "responses": [{"text": "好的"}]},
    {"events": [], "responses": []},
    {"events": [{"event": "followup", "name": "report_form"}, {"event": "active_loop", "name": None}]},
    {"events": "not a list"},
    {"events": [{"event": "slot"}]},
    {"responses": [1, 2]},
    {"events": [{"event": "no_such_event", "name": "x"}]},
]


def outcome(validate, answer):
    try:
        return ["ok", validate(answer)]
    except ValidationError as error:
        return ["refused", error.message]


action = RemoteAction.__new__(RemoteAction)  # the method reads nothing of the instance but its schema
original = RemoteAction._validate_action_result
before = [outcome(lambda a: original(action, a), answer) for answer in ANSWERS]
engine_speedups.apply()
checks = []
cls = validator_for(RemoteAction.action_response_format_spec())
real_check = cls.check_schema
cls.check_schema = classmethod(lambda c, s, *a, **k: (checks.append(1), real_check.__func__(c, s, *a, **k))[1])
after = [outcome(lambda a: RemoteAction._validate_action_result(action, a), answer) for answer in ANSWERS * 20]
print(json.dumps({"before": before, "after": after[: len(ANSWERS)], "again": after, "schema_checks": len(checks)}))
"""


@pytest.mark.skipif(not ENGINE_PYTHON.exists(), reason="the engine's venv is built by bin/setup")
def test_action_answers_are_judged_as_rasa_judges_them_with_the_schema_checked_once() -> None:
    result = subprocess.run(
        [str(ENGINE_PYTHON), "-c", CHECK],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        cwd=PROJECT_ROOT,
        env={"PYTHONPATH": str(PROJECT_ROOT), "RASA_TELEMETRY_ENABLED": "false", "PATH": "/usr/bin:/bin"},
    )
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["after"] == figures["before"]
    assert [kind for kind, _ in figures["before"]] == ["ok", "ok", "ok", "refused", "refused", "refused", "refused"]
    assert all("Failed to validate Action server response" in message for kind, message in figures["before"][3:])
    assert figures["again"] == figures["before"] * 20
    assert figures["schema_checks"] <= 1  # built once (before the counter, or at the first call)


TRACKER_STORE = r"""
import json, sys
from rasa.core.tracker_store import SQLTrackerStore
from rasa.shared.core.domain import Domain

from bot import engine_speedups

def store_settings(path):
    store = SQLTrackerStore(Domain.empty(), dialect="sqlite", db=path)
    with store.engine.connect() as connection:
        mode = connection.exec_driver_sql("PRAGMA journal_mode").scalar()
        sync = connection.exec_driver_sql("PRAGMA synchronous").scalar()
    store.engine.dispose()
    return [mode, sync]

before = store_settings(sys.argv[1] + "/before.db")
engine_speedups.apply()
engine_speedups.apply()  # twice: one listener
after = store_settings(sys.argv[1] + "/after.db")
print(json.dumps({"before": before, "after": after}))
"""


@pytest.mark.skipif(not ENGINE_PYTHON.exists(), reason="the engine's venv is built by bin/setup")
def test_the_sqlite_tracker_store_gets_the_write_ahead_log(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(ENGINE_PYTHON), "-c", TRACKER_STORE, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        cwd=PROJECT_ROOT,
        env={"PYTHONPATH": str(PROJECT_ROOT), "RASA_TELEMETRY_ENABLED": "false", "PATH": "/usr/bin:/bin"},
    )
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["before"] == ["delete", 2]  # Rasa's own: rollback journal, synchronous=FULL
    assert figures["after"] == ["wal", 1]  # synchronous=NORMAL
