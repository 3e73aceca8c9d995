"""Settings from the environment, and the operator CLI run as operators run it."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.settings import Settings
from crm_backend.services.conversations import current_conversation, log_incoming, resolve_identity
from crm_backend.services.intake import Report, file_case
from crm_backend.settings import PROJECT_ROOT, SettingsError, database_url_from_env, normalise_database_url
from tests.support.cli import run_cli
from tests.support.stack import DATA_KEY_SECRETS

ROOT = Path(__file__).resolve().parents[2]
PYTHON = ROOT / ".venv" / "bin" / "python"
SECRET_NAMES = ("ENGINE_TOKEN", "ACTION_TOKEN", "REST_CHANNEL_TOKEN")
STATUSES = ("received", "dispatched", "accepted", "in_progress", "resolved", "reviewed", "archived", "returned")


def make_env(**overrides: str | None) -> dict[str, str]:
    """A complete environment with distinct 16+ character secrets; `None` removes a variable."""
    env = {name: f"{name.lower()}-0123456789abcdef" for name in SECRET_NAMES} | DATA_KEY_SECRETS
    env.update({key: value for key, value in overrides.items() if value is not None})
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
    return env


def tables(database: Path) -> set[str]:
    with sqlite3.connect(database) as connection:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {name for (name,) in rows}


# --- Settings ----------------------------------------------------------------


def test_settings_read_secrets_and_defaults() -> None:
    settings = Settings.from_env(make_env())
    assert settings.engine_token == "engine_token-0123456789abcdef"
    assert settings.action_token == "action_token-0123456789abcdef"
    assert settings.rest_channel_token == "rest_channel_token-0123456789abcdef"
    assert (settings.app_host, settings.app_port) == ("127.0.0.1", 8000)
    assert settings.rasa_url == "http://127.0.0.1:5005"
    assert settings.database_url == f"sqlite+aiosqlite:///{PROJECT_ROOT / 'var' / 'crm.db'}"
    assert settings.engine_timeout_seconds == 5.0
    assert settings.engine_replay_seconds == 5.0
    assert settings.allowed_origins == ()
    assert settings.domain_path == PROJECT_ROOT / "domain.yml"
    assert settings.trusted_proxies == ()  # the TCP peer is the client unless proxies are named


def test_trusted_proxies_are_read_and_a_bad_entry_refused() -> None:
    settings = Settings.from_env(make_env(TRUSTED_PROXIES="127.0.0.1, 10.0.0.0/8"))
    assert [str(network) for network in settings.trusted_proxies] == ["127.0.0.1/32", "10.0.0.0/8"]
    with pytest.raises(SettingsError, match="TRUSTED_PROXIES"):
        Settings.from_env(make_env(TRUSTED_PROXIES="localhost"))


def test_redis_is_unset_by_default_read_from_redis_url_and_a_foreign_scheme_refused() -> None:
    assert Settings.from_env(make_env()).redis_url is None  # one process: shared state stays in it
    assert Settings.from_env(make_env(REDIS_URL=" redis://127.0.0.1:6379/0 ")).redis_url == "redis://127.0.0.1:6379/0"
    with pytest.raises(SettingsError, match="REDIS_URL"):
        Settings.from_env(make_env(REDIS_URL="http://127.0.0.1:6379"))


@pytest.mark.parametrize("name", SECRET_NAMES)
def test_a_missing_secret_is_refused(name: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env(make_env(**{name: None}))


@pytest.mark.parametrize("name", SECRET_NAMES)
@pytest.mark.parametrize("value", ["", "short", "x" * 15, "   " + "y" * 15 + "   "])
def test_a_short_secret_is_refused(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env(make_env(**{name: value}))


@pytest.mark.parametrize("name", ["DATA_KEYS", "DATA_HMAC_KEY"])
def test_the_app_refuses_to_start_without_a_data_key(name: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env(make_env(**{name: None}))


def test_the_settings_carry_the_key_ring_the_environment_names() -> None:
    ring = Settings.from_env(
        make_env(DATA_KEYS=f"old:{'A' * 22}==,test1:{'B' * 22}==", DATA_KEY_CURRENT="test1")
    ).key_ring
    assert ring is not None and ring.current == "test1" and set(ring.keys) == {"old", "test1"}


def test_a_secret_of_exactly_sixteen_characters_is_accepted_and_stripped() -> None:
    settings = Settings.from_env(make_env(REST_CHANNEL_TOKEN="  " + "k" * 16 + "\n"))
    assert settings.rest_channel_token == "k" * 16


def test_no_shared_api_token_is_needed_or_kept() -> None:
    """/api/v1 takes per-client keys; a left-over API_TOKEN opens nothing."""
    settings = Settings.from_env(make_env(API_TOKEN="left-over-0123456789abcdef"))
    assert "left-over-0123456789abcdef" not in repr(settings)
    assert not hasattr(settings, "api_token")


def test_ports_hosts_and_origins_are_read() -> None:
    settings = Settings.from_env(
        make_env(
            APP_HOST="0.0.0.0",
            APP_PORT="9100",
            RASA_PORT="5999",
            ENGINE_TIMEOUT_SECONDS="2.5",
            ENGINE_REPLAY_SECONDS="0",
            ALLOWED_ORIGINS=" https://a.example , https://b.example ,,",
        )
    )
    assert settings.engine_replay_seconds == 0.0
    assert (settings.app_host, settings.app_port) == ("0.0.0.0", 9100)
    assert settings.rasa_url == "http://127.0.0.1:5999"
    assert settings.engine_timeout_seconds == 2.5
    assert settings.allowed_origins == ("https://a.example", "https://b.example")


def test_an_explicit_rasa_url_wins_without_its_trailing_slash() -> None:
    settings = Settings.from_env(make_env(RASA_URL="http://engine:5005/", RASA_PORT="5999"))
    assert settings.rasa_url == "http://engine:5005"


def test_one_engine_is_the_default_and_rasa_urls_names_several() -> None:
    assert Settings.from_env(make_env(RASA_URL="http://engine:5005/")).rasa_urls == ("http://engine:5005",)
    settings = Settings.from_env(make_env(RASA_URLS=" http://e1:5005/, http://e2:5005 ,,", RASA_URL="http://e0:5005"))
    assert settings.rasa_urls == ("http://e1:5005", "http://e2:5005")
    assert settings.rasa_url == "http://e0:5005"  # the single-engine setting is left as it was


def test_an_engine_named_twice_in_rasa_urls_is_refused() -> None:
    with pytest.raises(SettingsError, match="RASA_URLS"):
        Settings.from_env(make_env(RASA_URLS="http://e1:5005,http://e1:5005/"))


@pytest.mark.parametrize("name", ["APP_PORT", "RASA_PORT", "ENGINE_TIMEOUT_SECONDS", "ENGINE_REPLAY_SECONDS"])
def test_a_malformed_number_is_refused(name: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env(make_env(**{name: "eighty"}))


def test_the_ceiling_of_failed_proofs_defaults_to_a_hundred_an_hour_and_is_read() -> None:
    assert Settings.from_env(make_env()).proof_failures_alert_per_hour == 100
    assert Settings.from_env(make_env(PROOF_FAILURES_ALERT_PER_HOUR="25")).proof_failures_alert_per_hour == 25


@pytest.mark.parametrize("value", ["0", "-3", "2.5", "many"])
def test_a_ceiling_of_failed_proofs_that_is_not_a_positive_whole_number_is_refused(value: str) -> None:
    with pytest.raises(SettingsError, match="PROOF_FAILURES_ALERT_PER_HOUR"):
        Settings.from_env(make_env(PROOF_FAILURES_ALERT_PER_HOUR=value))


@pytest.mark.parametrize(
    ("url", "normalised"),
    [
        ("sqlite:///var/crm.db", "sqlite+aiosqlite:///var/crm.db"),
        ("sqlite:////srv/crm/crm.db", "sqlite+aiosqlite:////srv/crm/crm.db"),
        ("postgresql://crm:pw@db:5432/crm", "postgresql+asyncpg://crm:pw@db:5432/crm"),
        ("postgres://crm:pw@db/crm", "postgresql+asyncpg://crm:pw@db/crm"),
        ("sqlite+aiosqlite:///var/crm.db", "sqlite+aiosqlite:///var/crm.db"),
        ("postgresql+asyncpg://crm@db/crm", "postgresql+asyncpg://crm@db/crm"),
    ],
)
def test_database_urls_are_normalised_to_async_drivers(url: str, normalised: str) -> None:
    assert normalise_database_url(url) == normalised
    assert Settings.from_env(make_env(DATABASE_URL=url)).database_url == normalised
    assert database_url_from_env({"DATABASE_URL": url}) == normalised


def test_an_empty_database_url_falls_back_to_the_local_file() -> None:
    assert database_url_from_env({"DATABASE_URL": ""}) == f"sqlite+aiosqlite:///{PROJECT_ROOT / 'var' / 'crm.db'}"


# --- CLI ---------------------------------------------------------------------


def test_stats_json_on_an_empty_database_is_one_object_of_zeros(tmp_path: Path) -> None:
    result = run_cli("stats", "--json", database=tmp_path / "x.db")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0]) == {
        "citizens": 0,
        "conversations": 0,
        "messages": 0,
        "cases": 0,
        "cases_by_status": dict.fromkeys(STATUSES, 0),
    }


def test_stats_as_text_lists_every_status_with_its_label(tmp_path: Path) -> None:
    result = run_cli("stats", database=tmp_path / "x.db")
    assert result.returncode == 0, result.stderr
    assert "cases          0" in result.stdout.splitlines()
    assert "  已受理 (received)  0" in result.stdout.splitlines()
    assert "  退回 (returned)  0" in result.stdout.splitlines()


async def test_stats_json_counts_what_the_database_holds(
    sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    async with sessions.begin() as session:
        identity = await resolve_identity(session, "web", "abc")
        conversation = await current_conversation(session, identity)
        log_incoming(session, conversation, "路灯坏了", max_chars=100)
        await file_case(
            session, identity, Report(description="路灯坏了三天", location="朝阳区", contact_phone="13812345678")
        )
    result = await asyncio.to_thread(run_cli, "stats", "--json", database=tmp_path / "crm.db")
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert (stats["citizens"], stats["conversations"], stats["messages"], stats["cases"]) == (1, 1, 1, 1)
    assert stats["cases_by_status"]["received"] == 1


def test_migrate_exits_zero_builds_the_schema_and_can_run_again(tmp_path: Path) -> None:
    database = tmp_path / "nested" / "x.db"
    first = run_cli("migrate", database=database)
    assert first.returncode == 0, first.stderr
    assert {"alembic_version", "citizen", "channel_identity", "conversation", "message", "service_case"} <= tables(
        database
    )
    assert {"case_event", "lookup_attempt"} <= tables(database)
    again = run_cli("migrate", database=database)
    assert again.returncode == 0, again.stderr


def test_an_unknown_command_exits_non_zero(tmp_path: Path) -> None:
    result = run_cli("explode", database=tmp_path / "x.db")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr
    assert not (tmp_path / "x.db").exists()


def test_create_user_reads_the_password_from_stdin_and_stores_only_a_hash(tmp_path: Path) -> None:
    database = tmp_path / "crm.db"
    done = run_cli(
        "create-user", "--username", "chief", "--role", "admin", "--display-name", "王主任",
        database=database, stdin="a long enough password\n",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "created admin chief" in done.stdout
    with sqlite3.connect(database) as connection:
        ((username, display_name, role, password_hash),) = connection.execute(
            "SELECT username, display_name, role, password_hash FROM staff_user"
        ).fetchall()
        audited = connection.execute("SELECT actor, action, target FROM audit_entry").fetchall()
    assert (username, display_name, role) == ("chief", "王主任", "admin")
    assert password_hash.startswith("$argon2id$") and "a long enough password" not in password_hash
    assert audited == [("cli", "user.create", "chief")]


def test_create_user_refuses_a_weak_password_and_an_agent_without_department(tmp_path: Path) -> None:
    database = tmp_path / "crm.db"
    weak = run_cli("create-user", "--username", "chief", "--role", "admin", database=database, stdin="short\n")
    assert weak.returncode == 1 and "密码至少需要" in weak.stderr
    common = run_cli("create-user", "--username", "chief", "--role", "admin", database=database, stdin="1q2w3e4r5t6y\n")
    assert common.returncode == 1 and "常见密码" in common.stderr
    named = run_cli(
        "create-user", "--username", "chief", "--role", "admin", database=database, stdin="chief-of-staff\n"
    )
    assert named.returncode == 1 and "包含用户名" in named.stderr
    homeless = run_cli(
        "create-user", "--username", "li.ming", "--role", "agent", database=database, stdin="a long enough password\n"
    )
    assert homeless.returncode == 1 and "部门" in homeless.stderr
    placed = run_cli(
        "create-user", "--username", "li.ming", "--role", "agent", "--department", "A-hotline",
        database=database, stdin="a long enough password\n",
    )  # fmt: skip
    assert placed.returncode == 0, placed.stderr


def test_create_user_makes_an_auditor(tmp_path: Path) -> None:
    database = tmp_path / "crm.db"
    done = run_cli(
        "create-user", "--username", "shen.ji", "--role", "auditor", database=database, stdin="a long enough password\n"
    )
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(database) as connection:
        assert connection.execute("SELECT role FROM staff_user").fetchall() == [("auditor",)]


def test_create_user_has_no_password_argument(tmp_path: Path) -> None:
    done = run_cli(
        "create-user", "--username", "x1x", "--role", "admin", "--password", "secret-in-history",
        database=tmp_path / "crm.db", stdin="",
    )  # fmt: skip
    assert done.returncode == 2 and "unrecognized arguments" in done.stderr


async def test_create_api_client_prints_a_key_once_that_authenticates_and_revoke_refuses_it(
    tmp_path: Path, sessions: async_sessionmaker[AsyncSession]
) -> None:
    from crm_backend.errors import Unauthenticated
    from crm_backend.services import api_clients

    database = tmp_path / "crm.db"  # the `sessions` fixture's database
    done = await asyncio.to_thread(
        run_cli, "create-api-client", "--name", "ticket-sync", "--scope", "write", database=database
    )
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip()
    assert key.startswith("c12345_") and "\n" not in key and "shown only this once" in done.stderr
    async with sessions.begin() as session:
        caller = await api_clients.authenticate(session, key)
    assert (caller.name, caller.scope) == ("ticket-sync", "write")
    with sqlite3.connect(database) as connection:
        stored = connection.execute("SELECT key_hash, created_by FROM api_client").fetchall()
    assert stored == [(api_clients.key_hash(key), "cli")] and key not in str(stored)

    taken = await asyncio.to_thread(
        run_cli, "create-api-client", "--name", "ticket-sync", "--scope", "read", database=database
    )
    assert taken.returncode == 1 and "已被使用" in taken.stderr and not taken.stdout
    revoked = await asyncio.to_thread(run_cli, "revoke-api-client", "--name", "ticket-sync", database=database)
    assert revoked.returncode == 0, revoked.stderr
    with pytest.raises(Unauthenticated):
        async with sessions.begin() as session:
            await api_clients.authenticate(session, key)
    with sqlite3.connect(database) as connection:
        audited = connection.execute("SELECT actor, action, target FROM audit_entry ORDER BY id").fetchall()
    assert audited == [("cli", "api_client.create", "ticket-sync"), ("cli", "api_client.revoke", "ticket-sync")]


def test_create_api_client_refuses_an_unknown_scope(tmp_path: Path) -> None:
    done = run_cli("create-api-client", "--name", "x-sync", "--scope", "admin", database=tmp_path / "crm.db")
    assert done.returncode == 2 and "invalid choice" in done.stderr
