"""Where the process is assembled: `python -m crm_backend migrate` as its own step, the app
(`app.factory.init_app`) refusing a database that is not at head, and nothing connecting or
loading before the app starts."""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import stat
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from alembic import command

from app.components import desk_key, http_key, letters_key, sessions_key
from app.factory import init_app
from app.settings import Settings
from crm_backend import schema
from crm_backend.db import _alembic_config
from crm_backend.dispatch.classifier import ModelLoadError
from crm_backend.settings import normalise_database_url
from tests.support.cli import run_cli
from tests.support.models import letter_model
from tests.support.stack import DATA_KEY_SECRETS

ROOT = Path(__file__).resolve().parents[2]
PYTHON = ROOT / ".venv" / "bin" / "python"
SECRETS = {
    "ENGINE_TOKEN": "engine-token-0123456789abcdef",
    "ACTION_TOKEN": "action-token-0123456789abcdef",
    "REST_CHANNEL_TOKEN": "rest-token-0123456789abcdef",
    **DATA_KEY_SECRETS,
}
# Nothing listens here (TEST-NET-1, RFC 5737): a connection attempt would hang, then fail.
UNREACHABLE_DATABASE = "postgresql://app:secret@192.0.2.1:5432/crm"


@functools.cache
def letter_model_path() -> str:
    """The letter gate's model `bin/setup` trained, else one trained once for this test run."""
    return str(letter_model(Path(tempfile.mkdtemp(prefix="letter-model-"))))


def settings_for(database: Path, **env: str) -> Settings:
    return Settings.from_env(
        {
            **SECRETS,
            "DATABASE_URL": f"sqlite:///{database}",
            "LETTER_MODEL_PATH": letter_model_path(),
            "RASA_URL": "http://127.0.0.1:9",  # no engine: /healthz says so
            "FOLLOWUP_CHECK_SECONDS": "0",
            "ENGINE_REPLAY_SECONDS": "0",
            "HOT_ISSUES_REFRESH_SECONDS": "0",
            **env,
        }
    )


def dump(database: Path) -> list[str]:
    """Every statement that rebuilds the database: schema and rows."""
    with sqlite3.connect(database) as connection:
        return list(connection.iterdump())


def tables(database: Path) -> set[str]:
    with sqlite3.connect(database) as connection:
        return {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


async def start(app: web.Application) -> TestClient[web.Request, web.Application]:
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


# --- migrate as its own step -----------------------------------------------------------------


def run_snippet(code: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`code` in a fresh interpreter of the app's venv, with only `env`."""
    return subprocess.run(
        [str(PYTHON), "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_migrate_twice_changes_nothing_the_second_time(tmp_path: Path) -> None:
    database = tmp_path / "crm.db"
    first = run_cli("migrate", database=database)
    assert first.returncode == 0, first.stderr
    head = schema.head_revision()
    assert first.stdout.strip() == (f"database at revision {head} (was empty); routing loaded, knowledge base loaded")
    after_first = dump(database)
    with sqlite3.connect(database) as connection:
        departments = connection.execute("SELECT count(*) FROM department").fetchone()[0]
        entries = connection.execute("SELECT count(*) FROM knowledge_entry").fetchone()[0]
    assert departments > 0 and entries > 0  # the seeds the app used to load at start

    second = run_cli("migrate", database=database)

    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == f"database at revision {head} (was {head}); routing kept, knowledge base kept"
    assert dump(database) == after_first


async def test_migrate_reports_no_change_when_run_again(tmp_path: Path) -> None:
    url = normalise_database_url(f"sqlite:///{tmp_path / 'crm.db'}")
    first = await schema.migrate(url)
    again = await schema.migrate(url)
    assert (first.before, first.changed) == (None, True)
    assert (again.before, again.after, again.changed) == (first.after, first.after, False)


def test_migrate_creates_the_database_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    database = tmp_path / "crm.db"
    done = run_cli("migrate", database=database, umask=0o022)
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(database.stat().st_mode) == 0o600


def test_bin_run_migrates_before_it_starts_the_app() -> None:
    lines = (ROOT / "bin" / "run").read_text().splitlines()
    migrate = lines.index(".venv/bin/python -m crm_backend migrate")
    app = next(i for i, line in enumerate(lines) if line.startswith(".venv/bin/python -m app"))
    umask = next(i for i, line in enumerate(lines) if line.startswith("umask 077"))
    assert umask < migrate < app


# --- the app refuses a database that is not at head ------------------------------------------


async def test_the_app_refuses_to_start_on_an_unmigrated_database(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    database = tmp_path / "crm.db"
    app = init_app(settings_for(database))
    with caplog.at_level(logging.ERROR, logger="app.components"), pytest.raises(schema.SchemaNotCurrent):
        await start(app)
    assert [record.getMessage() for record in caplog.records] == [
        f"refusing to start: the database has no schema, not {schema.head_revision()}: "
        "run python -m crm_backend migrate"
    ]
    assert tables(database) == set()  # it migrated nothing itself


async def test_the_app_refuses_a_database_left_at_an_older_revision(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = normalise_database_url(f"sqlite:///{tmp_path / 'crm.db'}")
    await asyncio.to_thread(command.upgrade, _alembic_config(url), "0017")
    app = init_app(settings_for(tmp_path / "crm.db"))
    with caplog.at_level(logging.ERROR, logger="app.components"), pytest.raises(schema.SchemaNotCurrent) as refused:
        await start(app)
    assert refused.value.current == "0017"
    assert "is at revision 0017" in caplog.text and "run python -m crm_backend migrate" in caplog.text
    with sqlite3.connect(tmp_path / "crm.db") as connection:
        assert connection.execute("SELECT version_num FROM alembic_version").fetchone() == ("0017",)


async def test_the_app_starts_after_migrate_and_closes_what_it_opened(tmp_path: Path) -> None:
    database = tmp_path / "crm.db"
    await schema.migrate(normalise_database_url(f"sqlite:///{database}"))
    app = init_app(settings_for(database))
    client = await start(app)
    try:
        health = await client.get("/healthz")
        assert health.status == 503
        assert await health.json() == {
            "status": "down",
            "checks": {"app": "ok", "database": "ok", "engine": "down", "shared_state": "ok"},
            "down": ["engine"],
        }
        assert app[desk_key].districts  # the models context loaded the dispatcher…
        assert app[letters_key].steer("/greet") is None  # …and the letter gate
        # The bundled category model is the first version, and the one served.
        with sqlite3.connect(database) as connection:
            assert connection.execute("SELECT id, status FROM category_model_version").fetchall() == [
                (app[desk_key].classifier.model_version, "current")
            ]
        http = app[http_key]
    finally:
        await client.close()
    assert http.closed


async def test_the_app_loads_the_letter_gates_model_and_refuses_to_start_without_it(tmp_path: Path) -> None:
    database = tmp_path / "crm.db"
    await schema.migrate(normalise_database_url(f"sqlite:///{database}"))
    app = init_app(settings_for(database, LETTER_MODEL_PATH=str(tmp_path / "no-letter-model.joblib")))

    with pytest.raises(ModelLoadError, match=r"python -m bot\.letters train"):
        await start(app)
    await app.cleanup()  # what the contexts before `models` opened


BUILD_WITHOUT_TELEGRAM = textwrap.dedent(
    """
    import sys

    from app.factory import init_app
    from app.settings import Settings

    init_app(Settings.from_env())
    print(sorted({name.split(".")[0] for name in sys.modules} & {"telegram", "httpx", "spacy"}))
    """
)


def test_an_app_without_telegram_never_imports_python_telegram_bot(tmp_path: Path) -> None:
    # python-telegram-bot brings httpx (and its command line's rich and pygments): about 20 MB per
    # app process that has no Telegram channel. (cryptography is the app's own now: encryption at rest.)
    env = {**SECRETS, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "DATABASE_URL": UNREACHABLE_DATABASE}
    done = run_snippet(BUILD_WITHOUT_TELEGRAM, env, tmp_path)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# --- nothing connects or loads before the app starts ------------------------------------------

IMPORT_AND_BUILD = textwrap.dedent(
    """
    import sys

    seen = []


    def audit(event, args):
        if event == "socket.connect":
            seen.append(f"connect {args[1]!r}")
        elif event == "open" and isinstance(args[0], str) and args[0].endswith((".joblib", ".db", ".tar.gz")):
            seen.append(f"open {args[0]}")


    sys.addaudithook(audit)
    import app
    import app.settings
    import app.components
    from app.factory import init_app

    built = init_app(app.settings.Settings.from_env())
    assert not seen, seen
    print("built", len(built.router.routes()), "routes")
    """
)


def test_importing_the_app_and_building_it_connects_to_nothing_and_loads_no_model(tmp_path: Path) -> None:
    env = {
        **SECRETS,
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": UNREACHABLE_DATABASE,
        "CATEGORY_MODEL_PATH": str(tmp_path / "no-such-model.joblib"),
    }
    started = time.monotonic()
    done = run_snippet(IMPORT_AND_BUILD, env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("built ")
    assert time.monotonic() - started < 30  # imports only: no connection attempt hung on the address


def test_the_app_process_exits_with_the_migrate_hint_on_an_unmigrated_database(tmp_path: Path) -> None:
    env = {
        **SECRETS,
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'crm.db'}",
        "APP_PORT": "9",  # never bound: the app stops before it listens
    }
    done = subprocess.run(
        [str(PYTHON), "-m", "app"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 1
    assert "refusing to start" in done.stderr and "run python -m crm_backend migrate" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_session_factory_is_bound_only_when_the_app_starts(tmp_path: Path) -> None:
    app = init_app(settings_for(tmp_path / "crm.db"))
    assert app[sessions_key].kw.get("bind") is None
    assert not (tmp_path / "crm.db").exists()  # built without an event loop, and without the database
