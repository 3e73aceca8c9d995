"""The engine is started with its secret in the environment and called with short-lived JWTs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bot.engine import engine_api_token
from bot.engine_launcher import rasa_argv, with_redis_lock_store

SECRET = "-starts-with-a-dash-0123456789abcdef"


def test_the_secret_reaches_rasa_as_jwt_secret_in_the_equals_form() -> None:
    argv = rasa_argv(["--enable-api", "-p", "5005"], SECRET)
    assert argv == ["rasa", "run", "--enable-api", "-p", "5005", f"--jwt-secret={SECRET}", "--jwt-method=HS256"]


@pytest.mark.parametrize("option", ["--auth-token=abc", "--auth-token", "--jwt-secret=abc", "--jwt-private-key"])
def test_a_secret_on_the_launchers_own_command_line_is_refused(option: str) -> None:
    with pytest.raises(SystemExit):
        rasa_argv(["--enable-api", option], SECRET)


@pytest.mark.parametrize("secret", ["", "short"])
def test_a_missing_or_short_secret_is_refused(secret: str) -> None:
    with pytest.raises(SystemExit):
        rasa_argv(["--enable-api"], secret)


def _part(segment: str) -> dict[str, object]:
    decoded: dict[str, object] = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    return decoded


def test_the_api_token_is_an_hs256_jwt_for_the_admin_role_valid_for_a_minute() -> None:
    token = engine_api_token(SECRET, now=1_800_000_000)
    header, payload, signature = token.split(".")
    assert _part(header) == {"alg": "HS256", "typ": "JWT"}
    assert _part(payload) == {"user": {"username": "app", "role": "admin"}, "iat": 1_800_000_000, "exp": 1_800_000_060}
    expected = hmac.new(SECRET.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    assert base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)) == expected


# --- the lock store: Rasa's RedisLockStore when REDIS_URL names a server -------------------

ENDPOINTS = "tracker_store:\n  type: SQL\n  url: ${TRACKER_STORE_URL}\n"


def _endpoints_file(tmp_path: Path, text: str = ENDPOINTS) -> Path:
    path = tmp_path / "endpoints.yml"
    path.write_text(text)
    return path


def test_without_redis_url_the_engine_keeps_its_endpoints_and_the_in_memory_lock_store(tmp_path: Path) -> None:
    endpoints = _endpoints_file(tmp_path)
    options = ["--enable-api", "--endpoints", str(endpoints)]
    assert with_redis_lock_store(options, {}, tmp_path / "var") == (options, {})


def test_with_redis_url_the_engine_reads_endpoints_with_a_redis_lock_store(tmp_path: Path) -> None:
    endpoints = _endpoints_file(tmp_path)
    options, env = with_redis_lock_store(
        ["--enable-api", f"--endpoints={endpoints}", "-p", "5005"],
        {"REDIS_URL": "redis://:s3cret-pass@10.0.0.7:6380/2"},
        tmp_path / "var",
    )
    assert options[0] == "--enable-api" and options[2:] == ["-p", "5005"]
    written = Path(options[1].removeprefix("--endpoints="))
    assert written.parent == tmp_path / "var"
    config = yaml.safe_load(written.read_text())
    # The engine's other endpoints are untouched (placeholders left for Rasa to expand).
    assert config["tracker_store"] == {"type": "SQL", "url": "${TRACKER_STORE_URL}"}
    lock_store = config["lock_store"]
    assert lock_store["type"] == "redis" and lock_store["key_prefix"].isalnum()
    # The file names environment variables only: the password never lands on disk.
    assert "s3cret-pass" not in written.read_text()
    expanded = {key: env.get(str(value)[2:-1], value) for key, value in lock_store.items()}
    assert (expanded["url"], expanded["port"], expanded["db"], expanded["password"]) == (
        "10.0.0.7",
        "6380",
        "2",
        "s3cret-pass",
    )


def test_a_redis_url_without_password_or_database_uses_redis_defaults(tmp_path: Path) -> None:
    endpoints = _endpoints_file(tmp_path)
    options, env = with_redis_lock_store(
        ["--endpoints", str(endpoints)], {"REDIS_URL": "redis://127.0.0.1"}, tmp_path / "var"
    )
    config = yaml.safe_load(Path(options[1]).read_text())
    assert "password" not in config["lock_store"]
    assert sorted(env.values()) == ["0", "127.0.0.1", "6379"]


def test_an_endpoints_file_that_names_its_own_lock_store_is_left_alone(tmp_path: Path) -> None:
    endpoints = _endpoints_file(tmp_path, ENDPOINTS + "lock_store:\n  type: in_memory\n")
    options = ["--endpoints", str(endpoints)]
    assert with_redis_lock_store(options, {"REDIS_URL": "redis://127.0.0.1"}, tmp_path / "var") == (options, {})


def test_a_redis_url_the_lock_store_cannot_use_stops_the_engine(tmp_path: Path) -> None:
    endpoints = _endpoints_file(tmp_path)
    with pytest.raises(SystemExit):
        with_redis_lock_store(["--endpoints", str(endpoints)], {"REDIS_URL": "unix:///run/redis.sock"}, tmp_path)


def test_the_engine_does_not_start_without_the_data_keys(tmp_path: Path) -> None:
    """Its tracker store encrypts citizens' words with them: without, it stops before Rasa loads."""
    root = Path(__file__).resolve().parents[2]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root), "ENGINE_TOKEN": "e" * 32}
    result = subprocess.run(
        [sys.executable, "-m", "bot.engine_launcher", "run"], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert result.returncode != 0 and "DATA_KEYS is not set" in result.stderr
