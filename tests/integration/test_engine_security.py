"""The engine's secret stays off command lines and URLs; its API refuses callers without it;
the files the app and the engine create are readable by their owner only."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import requests

from bot.engine import EngineClient, engine_api_token
from tests.support.proxy import EngineSwitch
from tests.support.stack import Stack, free_port


def process_group_cmdlines(pgid: int) -> list[bytes]:
    """The command lines of every process in a process group (the engine and anything it started)."""
    cmdlines = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                cmdlines.append((proc / "cmdline").read_bytes())
        except (OSError, IndexError, ValueError):
            continue  # the process ended meanwhile
    return cmdlines


@pytest.fixture
def relay(stack: Stack) -> Iterator[EngineSwitch]:
    """A recording relay in front of the real engine."""
    switch = EngineSwitch(port=free_port(), target_port=stack.rasa_port)
    switch.start()
    try:
        yield switch
    finally:
        switch.close()


def test_the_engine_secret_is_not_on_any_engine_command_line(stack: Stack) -> None:
    assert stack.engine_proc is not None
    cmdlines = process_group_cmdlines(stack.engine_proc.pid)
    assert any(b"--enable-api" in cmdline for cmdline in cmdlines)  # the engine itself is among them
    for cmdline in cmdlines:
        assert stack.secrets["ENGINE_TOKEN"].encode() not in cmdline
        assert b"--auth-token" not in cmdline


@pytest.mark.parametrize(
    "how",
    ["no credentials", "the token as a query string", "the token as a bearer", "a JWT signed with another secret"],
)
def test_the_engine_api_refuses_callers_without_a_jwt_signed_with_the_secret(stack: Stack, how: str) -> None:
    token = stack.secrets["ENGINE_TOKEN"]
    params, headers = {}, {}
    if how == "the token as a query string":
        params = {"token": token}
    elif how == "the token as a bearer":
        headers = {"Authorization": f"Bearer {token}"}
    elif how == "a JWT signed with another secret":
        headers = {"Authorization": f"Bearer {engine_api_token('another-secret-0123456789abcdefghij')}"}
    for path in ("/status", "/conversations/rest:someone/tracker"):
        resp = requests.get(f"{stack.engine_url}{path}", params=params, headers=headers, timeout=10)
        assert resp.status_code in (401, 403), (path, resp.status_code)


def test_an_expired_jwt_is_refused(stack: Stack) -> None:
    expired = engine_api_token(stack.secrets["ENGINE_TOKEN"], now=0)
    resp = requests.get(f"{stack.engine_url}/status", headers={"Authorization": f"Bearer {expired}"}, timeout=10)
    assert resp.status_code == 401


async def test_the_apps_calls_to_the_engine_carry_no_secret_in_the_url(
    stack: Stack, relay: EngineSwitch, sender: str
) -> None:
    token = stack.secrets["ENGINE_TOKEN"]
    async with aiohttp.ClientSession() as http:
        client = EngineClient(http, f"http://127.0.0.1:{relay.port}", token, timeout_seconds=30)
        assert (await client.status())["model_file"]
        assert await client.send(f"rest:{sender}", "你好", channel="rest")
        assert isinstance(await client.slots(f"rest:{sender}"), dict)
        assert await client.active_form(f"rest:{sender}") is None
        assert await client.trigger_intent(f"rest:{sender}", "greet", {})
    lines = relay.request_lines()
    assert len(lines) >= 5
    for line in lines:
        assert "token" not in line
        assert token not in line


def test_the_app_and_the_engine_create_their_files_for_the_owner_only(stack: Stack) -> None:
    for name in ("crm.db", "tracker.db"):
        mode = stat.S_IMODE((stack.workdir / name).stat().st_mode)
        assert mode == 0o600, f"{name} has mode {mode:o}"
