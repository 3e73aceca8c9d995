"""The engine is started with its secret in the environment and called with short-lived JWTs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest

from bot.engine import engine_api_token
from bot.engine_launcher import rasa_argv

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
