"""API clients: one key per integration calling /api/v1, each with a scope and its own audit name.

A key looks like ``c12345_1a2b3c4d_<43 random characters>``: a fixed mark, a short prefix that
finds the client's row and tells staff which key is which, and 256 random bits. The key is
shown once, when the client is made; the table keeps its SHA-256 only. A slow password hash
(argon2) would add nothing here: the key is random, not chosen by a person, so there is no
dictionary to slow down, and it is checked on every call.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_backend.errors import Forbidden, InvalidInput, NotFound, Unauthenticated
from crm_backend.models import ApiClient, StaffUser, utcnow
from crm_backend.services import audit

KEY_MARK = "c12345"
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.-]{2,31}")
MAX_KEY_CHARS = 128
LAST_USED_RESOLUTION = timedelta(minutes=1)  # last_used_at is written at most this often per client
_KEY = re.compile(rf"({KEY_MARK}_[0-9a-f]{{8}})_[A-Za-z0-9_-]{{32,}}")
_NO_SUCH_KEY_HASH = hashlib.sha256(b"compared against when no client has the prefix").hexdigest()


class ApiScope(enum.StrEnum):
    """What a client may do: read, or read and change."""

    READ = "read"
    WRITE = "write"

    @property
    def label(self) -> str:
        return {ApiScope.READ: "只读", ApiScope.WRITE: "读写"}[self]


@dataclass(frozen=True)
class ApiCaller:
    """The client behind an API request, as the handlers see it."""

    client_id: int
    name: str
    scope: ApiScope

    @property
    def actor(self) -> str:
        """The name the audit log and case history give this client."""
        return f"api:{self.name}"

    def require(self, scope: ApiScope) -> None:
        """Raises Forbidden unless the client's scope covers `scope` (write covers read)."""
        if scope is ApiScope.WRITE and self.scope is not ApiScope.WRITE:
            raise Forbidden(f"API client {self.name} may only read")


@dataclass(frozen=True)
class IssuedKey:
    """A client just made and its key, which exists nowhere else: show it once, then drop it."""

    client: ApiClient
    key: str


def new_key() -> tuple[str, str]:
    """A fresh random key and its display prefix: ``(c12345_<8 hex>_<secret>, c12345_<8 hex>)``."""
    prefix = f"{KEY_MARK}_{secrets.token_hex(4)}"
    return f"{prefix}_{secrets.token_urlsafe(32)}", prefix


def key_hash(key: str) -> str:
    """The SHA-256 of a key, hex, as stored."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_prefix(key: str) -> str | None:
    """The display prefix of a well-formed key; None for anything else."""
    if len(key) > MAX_KEY_CHARS:
        return None
    found = _KEY.fullmatch(key)
    return found.group(1) if found else None


async def create_client(
    session: AsyncSession, *, name: str, scope: str, by: StaffUser | None = None, address: str = ""
) -> IssuedKey:
    """Make a client and its key, and audit it, in the caller's transaction.

    Args:
        by: the admin who makes it; None for the operator's command line (audited as ``cli``).

    Raises:
        InvalidInput: a bad or taken name, or an unknown scope.
    """
    name = name.strip().lower()
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidInput("bad_name", "名称为 3-32 位小写字母、数字、点、下划线或连字符")
    try:
        api_scope = ApiScope(scope)
    except ValueError as error:
        raise InvalidInput("bad_scope", "权限只能是 read 或 write") from error
    if await session.scalar(select(ApiClient.id).where(ApiClient.name == name)):
        raise InvalidInput("name_taken", f"名称 {name} 已被使用")
    key, prefix = new_key()
    while await session.scalar(select(ApiClient.id).where(ApiClient.key_prefix == prefix)):
        key, prefix = new_key()  # 32 bits of prefix: a clash is rare, but the column is unique
    client = ApiClient(
        name=name,
        scope=api_scope.value,
        key_prefix=prefix,
        key_hash=key_hash(key),
        created_by=_actor_name(by),
    )
    session.add(client)
    await session.flush()
    audit.record(
        session, by, "api_client.create", client.name, client.scope, address=address, actor_name=_actor_name(by)
    )
    return IssuedKey(client, key)


async def list_clients(session: AsyncSession) -> list[ApiClient]:
    """Every client, revoked ones too, by name."""
    return list((await session.scalars(select(ApiClient).order_by(ApiClient.name))).all())


async def client_named(session: AsyncSession, name: str) -> ApiClient:
    """A client by its name.

    Raises:
        NotFound: no such client.
    """
    client = await session.scalar(select(ApiClient).where(ApiClient.name == name.strip().lower()))
    if client is None:
        raise NotFound(f"api client {name}")
    return client


async def revoke_client(
    session: AsyncSession,
    client_id: int,
    *,
    by: StaffUser | None = None,
    address: str = "",
    now: datetime | None = None,
) -> ApiClient:
    """Refuse a client's key from now on, and audit it, in the caller's transaction.

    Args:
        by: the admin who revokes it; None for the operator's command line (audited as ``cli``).

    Raises:
        NotFound: no such client.
        InvalidInput: the client is revoked already.
    """
    client = await session.get(ApiClient, client_id)
    if client is None:
        raise NotFound("api client")
    if client.revoked_at is not None:
        raise InvalidInput("already_revoked", f"{client.name} 已被吊销")
    client.revoked_at = now or utcnow()
    audit.record(
        session, by, "api_client.revoke", client.name, client.key_prefix, address=address, actor_name=_actor_name(by)
    )
    return client


def _actor_name(by: StaffUser | None) -> str:
    return by.username[:64] if by is not None else "cli"


async def authenticate(session: AsyncSession, key: str, now: datetime | None = None) -> ApiCaller:
    """The live client holding this key; notes the use (at most once a minute per client).

    The row is found by the key's prefix and the key's hash compared in constant time.

    Raises:
        Unauthenticated: no key, a malformed or unknown key, or a revoked client's key.
    """
    prefix = key_prefix(key)
    client = await session.scalar(select(ApiClient).where(ApiClient.key_prefix == prefix)) if prefix else None
    stored = client.key_hash if client is not None else _NO_SUCH_KEY_HASH
    if not hmac.compare_digest(key_hash(key).encode(), stored.encode()) or client is None:
        raise Unauthenticated("missing or unknown API key")
    if client.revoked_at is not None:
        raise Unauthenticated("this API key has been revoked")
    now = now or utcnow()
    if client.last_used_at is None or now - client.last_used_at >= LAST_USED_RESOLUTION:
        client.last_used_at = now
    return ApiCaller(client.id, client.name, ApiScope(client.scope))
