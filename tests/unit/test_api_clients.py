"""API clients: keys made, hashed and checked; scopes; revocation; the once-a-minute last use."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crm_backend.errors import Forbidden, InvalidInput, NotFound, Unauthenticated
from crm_backend.models import ApiClient, utcnow
from crm_backend.services import api_clients
from crm_backend.services.api_clients import ApiCaller, ApiScope

Sessions = async_sessionmaker[AsyncSession]


async def issue(sessions: Sessions, name: str = "ticket-sync", scope: str = "write") -> api_clients.IssuedKey:
    async with sessions.begin() as session:
        return await api_clients.create_client(session, name=name, scope=scope)


async def authenticate(sessions: Sessions, key: str, **kwargs: object) -> ApiCaller:
    async with sessions.begin() as session:
        return await api_clients.authenticate(session, key, **kwargs)  # type: ignore[arg-type]


def test_a_new_key_is_random_marked_and_carries_its_prefix() -> None:
    key, prefix = api_clients.new_key()
    other, _ = api_clients.new_key()
    assert key != other
    assert key.startswith(prefix + "_") and prefix.startswith("c12345_")
    assert api_clients.key_prefix(key) == prefix
    assert len(key.removeprefix(prefix + "_")) >= 43  # 32 random bytes, base64url


@pytest.mark.parametrize(
    "key",
    [
        "",
        "Bearer",
        "c12345_1a2b3c4d",
        "c12345_1a2b3c4d_short",
        "x12345_1a2b3c4d_" + "a" * 43,
        "c12345_ZZZZ_" + "a" * 43,
    ],
)
def test_malformed_keys_have_no_prefix(key: str) -> None:
    assert api_clients.key_prefix(key) is None


def test_the_stored_hash_is_the_keys_sha256() -> None:
    key = "c12345_1a2b3c4d_" + "k" * 43
    assert api_clients.key_hash(key) == hashlib.sha256(key.encode()).hexdigest()


async def test_only_the_hash_and_prefix_are_stored_and_the_key_authenticates(sessions: Sessions) -> None:
    issued = await issue(sessions)
    async with sessions() as session:
        row = await session.scalar(select(ApiClient).where(ApiClient.name == "ticket-sync"))
    assert row is not None
    assert row.key_hash == api_clients.key_hash(issued.key) and issued.key not in row.key_hash
    assert issued.key.startswith(row.key_prefix + "_")
    caller = await authenticate(sessions, issued.key)
    assert caller == ApiCaller(row.id, "ticket-sync", ApiScope.WRITE)
    assert caller.actor == "api:ticket-sync"


async def test_a_wrong_secret_with_a_real_prefix_is_refused(sessions: Sessions) -> None:
    issued = await issue(sessions)
    prefix = api_clients.key_prefix(issued.key)
    assert prefix is not None
    with pytest.raises(Unauthenticated):
        await authenticate(sessions, prefix + "_" + "x" * 43)


@pytest.mark.parametrize("key", ["", "c12345_00000000_" + "a" * 43, "not a key at all", "c" * 5000])
async def test_missing_and_unknown_keys_are_refused(sessions: Sessions, key: str) -> None:
    await issue(sessions)
    with pytest.raises(Unauthenticated):
        await authenticate(sessions, key)


async def test_a_revoked_clients_key_is_refused(sessions: Sessions) -> None:
    issued = await issue(sessions)
    async with sessions.begin() as session:
        revoked = await api_clients.revoke_client(session, issued.client.id)
    assert revoked.revoked_at is not None
    with pytest.raises(Unauthenticated, match="revoked"):
        await authenticate(sessions, issued.key)


async def test_revoking_twice_or_an_unknown_client_is_an_error(sessions: Sessions) -> None:
    issued = await issue(sessions)
    async with sessions.begin() as session:
        await api_clients.revoke_client(session, issued.client.id)
    with pytest.raises(InvalidInput):
        async with sessions.begin() as session:
            await api_clients.revoke_client(session, issued.client.id)
    with pytest.raises(NotFound):
        async with sessions.begin() as session:
            await api_clients.revoke_client(session, 999)


async def test_a_read_client_may_read_but_not_write(sessions: Sessions) -> None:
    reader = await authenticate(sessions, (await issue(sessions, "dashboard", "read")).key)
    reader.require(ApiScope.READ)
    with pytest.raises(Forbidden):
        reader.require(ApiScope.WRITE)
    writer = await authenticate(sessions, (await issue(sessions, "ticket-sync", "write")).key)
    writer.require(ApiScope.READ)
    writer.require(ApiScope.WRITE)


@pytest.mark.parametrize(
    ("name", "scope", "reason"),
    [("x", "read", "bad_name"), ("Has Space", "read", "bad_name"), ("dashboard", "admin", "bad_scope")],
)
async def test_bad_names_and_scopes_are_refused(sessions: Sessions, name: str, scope: str, reason: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        await issue(sessions, name, scope)
    assert refused.value.reason == reason


async def test_names_are_unique(sessions: Sessions) -> None:
    await issue(sessions, "dashboard")
    with pytest.raises(InvalidInput) as refused:
        await issue(sessions, "Dashboard")
    assert refused.value.reason == "name_taken"


async def test_last_used_is_written_at_most_once_a_minute(sessions: Sessions) -> None:
    issued = await issue(sessions)
    first = utcnow()

    async def last_used() -> object:
        async with sessions() as session:
            return await session.scalar(select(ApiClient.last_used_at).where(ApiClient.id == issued.client.id))

    assert await last_used() is None
    await authenticate(sessions, issued.key, now=first)
    assert await last_used() == first
    await authenticate(sessions, issued.key, now=first + timedelta(seconds=59))
    assert await last_used() == first
    await authenticate(sessions, issued.key, now=first + timedelta(seconds=61))
    assert await last_used() == first + timedelta(seconds=61)


def test_a_transition_body_may_not_name_its_actor() -> None:
    from crm_backend.api import TransitionRequest

    assert TransitionRequest.parse({"action": "accept"}) == TransitionRequest("accept", "", None)
    with pytest.raises(InvalidInput) as refused:
        TransitionRequest.parse({"action": "accept", "actor": "王局长"})
    assert refused.value.reason == "actor_not_accepted"


def test_a_long_case_list_is_audited_in_rows_that_each_fit() -> None:
    from crm_backend.api import _chunks

    numbers = [f"20261204-{n:04d}" for n in range(1, 201)]
    runs = _chunks(numbers, 1900)
    assert len(runs) == 2 and all(len(run) <= 1900 for run in runs)
    assert " ".join(runs).split() == numbers
    assert _chunks([], 1900) == []
