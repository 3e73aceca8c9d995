"""The settings the domain and its operator tools read from the environment.

The app-wide `Settings` (ports, secrets, every knob of the running server) live in the
composition root, `app/settings.py`; the domain never imports `app`. What stays here is
what `crm_backend` itself needs without the app: the error type, the database URL and the
model paths the CLI reads, the trusted proxies the HTTP boundary believes, the limits the
rate-limit service and the actions enforce.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class SettingsError(RuntimeError):
    """A required setting is missing or malformed."""


Network = IPv4Network | IPv6Network


def parse_trusted_proxies(raw: str) -> tuple[Network, ...]:
    """The reverse proxies whose ``X-Forwarded-For`` the app believes.

    Args:
        raw: comma-separated addresses or CIDR networks, e.g. ``127.0.0.1, 10.0.0.0/8``;
            empty trusts nobody.

    Raises:
        SettingsError: an entry is not an IP address or network.
    """
    networks: list[Network] = []
    for entry in (part.strip() for part in raw.split(",")):
        if not entry:
            continue
        try:
            networks.append(ip_network(entry, strict=False))
        except ValueError as error:
            raise SettingsError(f"TRUSTED_PROXIES: {entry!r} is not an IP address or network") from error
    return tuple(networks)


def normalise_database_url(url: str) -> str:
    """Turn a plain database URL into the async-driver URL SQLAlchemy needs.

    Args:
        url: e.g. ``sqlite:///var/crm.db`` or ``postgresql://user:pw@host/db``.

    Returns:
        The same URL with the async driver named (``aiosqlite``, ``asyncpg``).
    """
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url.removeprefix("sqlite:///")
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url.removeprefix(prefix)
    return url


@dataclass(frozen=True)
class LimitSettings:
    """How much one address, sender or citizen may ask of the public entry points.

    Set high enough that a real citizen never meets them: they stop floods, not people.
    A count of 0 turns that limit off.
    """

    # New web chat sessions (a hello without a known session) per client address: a citizen
    # opens one per browser; 30 leaves room for an office or a carrier NAT behind one address.
    web_sessions_per_address: int = 30
    web_sessions_window_seconds: float = 600.0
    # Messages per sender (a web session, a REST sender id, a Telegram chat) through the
    # pipeline: a person types or taps a few a minute.
    messages_per_sender: int = 20
    messages_window_seconds: float = 60.0
    # Cases a citizen (all their linked channels) may file through the assistant per Beijing
    # calendar day; staff filing for a citizen in the console are not limited.
    cases_per_citizen_per_day: int = 10
    # Public Open311 reads (/open311/v2/ GETs) per client address: a partner's sync polls, a
    # browser or an open-data harvester reads a page a second at most.
    open311_reads_per_address: int = 120
    open311_reads_window_seconds: float = 60.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "LimitSettings":
        """Limits from ``WEB_SESSIONS_PER_ADDRESS``, ``MESSAGES_PER_SENDER``, ``CASES_PER_CITIZEN_PER_DAY``,
        ``OPEN311_READS_PER_ADDRESS`` and the three ``*_WINDOW_SECONDS``.

        Raises:
            SettingsError: a count that is not a whole number >= 0, or a window that is not > 0.
        """
        defaults = cls()

        def count(name: str, default: int) -> int:
            raw = env.get(name, "").strip() or str(default)
            if not (raw.isascii() and raw.isdigit()):
                raise SettingsError(f"{name} must be a whole number >= 0 (0 turns the limit off), got {raw!r}")
            return int(raw)

        def window(name: str, default: float) -> float:
            raw = env.get(name, "").strip() or str(default)
            try:
                seconds = float(raw)
            except ValueError as exc:
                raise SettingsError(f"{name} must be a number of seconds, got {raw!r}") from exc
            if not seconds > 0:
                raise SettingsError(f"{name} must be more than 0 seconds, got {raw!r}")
            return seconds

        return cls(
            web_sessions_per_address=count("WEB_SESSIONS_PER_ADDRESS", defaults.web_sessions_per_address),
            web_sessions_window_seconds=window("WEB_SESSIONS_WINDOW_SECONDS", defaults.web_sessions_window_seconds),
            messages_per_sender=count("MESSAGES_PER_SENDER", defaults.messages_per_sender),
            messages_window_seconds=window("MESSAGES_WINDOW_SECONDS", defaults.messages_window_seconds),
            cases_per_citizen_per_day=count("CASES_PER_CITIZEN_PER_DAY", defaults.cases_per_citizen_per_day),
            open311_reads_per_address=count("OPEN311_READS_PER_ADDRESS", defaults.open311_reads_per_address),
            open311_reads_window_seconds=window("OPEN311_READS_WINDOW_SECONDS", defaults.open311_reads_window_seconds),
        )


@dataclass(frozen=True)
class RetentionSettings:
    """How long each kind of personal data is kept (days); the daily retention job enforces them
    (`crm_backend.services.retention`) and the privacy notice states them to citizens.

    Defaults: a case's personal data (contact phone, place, description, replies) is kept for
    three years after the case is archived, then pseudonymised; what the dashboard counts
    (category, district, department, dates, status) stays. Conversation logs are kept 180 days,
    progress-lookup attempts 30, staff sign-in failures 180 (the 6 months the Cybersecurity Law
    asks of security logs), unused link codes 7 days past their expiry, processed Telegram
    updates and sent notices 30.
    """

    case_days: int = 1095
    conversation_days: int = 180
    lookup_days: int = 30
    login_failure_days: int = 180
    link_code_days: int = 7
    telegram_days: int = 30

    def stated(self) -> dict[str, str]:
        """The periods as citizens are told them (``conversation_days``: 180; ``case_years``: 3年,
        or a number of days when the period is not whole years), for the privacy texts."""
        years = self.case_days / 365
        whole = years >= 1 and abs(years - round(years)) < 0.01
        return {
            "conversation_days": str(self.conversation_days),
            "case_years": f"{round(years)}年" if whole else f"{self.case_days}天",
        }

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "RetentionSettings":
        """Periods from ``RETENTION_CASE_DAYS``, ``RETENTION_CONVERSATION_DAYS``, ``RETENTION_LOOKUP_DAYS``,
        ``RETENTION_LOGIN_FAILURE_DAYS``, ``RETENTION_LINK_CODE_DAYS`` and ``RETENTION_TELEGRAM_DAYS``.

        Raises:
            SettingsError: a period that is not a whole number of days of at least 1, or sign-in
                failures kept less than 180 days (security logs are kept at least 6 months).
        """
        defaults = cls()

        def days(name: str, default: int) -> int:
            raw = env.get(name, "").strip() or str(default)
            if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
                raise SettingsError(f"{name} must be a whole number of days of at least 1, got {raw!r}")
            return int(raw)

        settings = cls(
            case_days=days("RETENTION_CASE_DAYS", defaults.case_days),
            conversation_days=days("RETENTION_CONVERSATION_DAYS", defaults.conversation_days),
            lookup_days=days("RETENTION_LOOKUP_DAYS", defaults.lookup_days),
            login_failure_days=days("RETENTION_LOGIN_FAILURE_DAYS", defaults.login_failure_days),
            link_code_days=days("RETENTION_LINK_CODE_DAYS", defaults.link_code_days),
            telegram_days=days("RETENTION_TELEGRAM_DAYS", defaults.telegram_days),
        )
        if settings.login_failure_days < 180:
            raise SettingsError("RETENTION_LOGIN_FAILURE_DAYS must be at least 180: security logs are kept 6 months")
        return settings


def redis_url_from_env(env: Mapping[str, str]) -> str | None:
    """``REDIS_URL`` (``redis://``, ``rediss://`` or ``unix://``), or None when unset.

    Raises:
        SettingsError: a URL of another scheme.
    """
    url = env.get("REDIS_URL", "").strip()
    if not url:
        return None
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise SettingsError(f"REDIS_URL must be a redis://, rediss:// or unix:// URL, got {url.split(':', 1)[0]!r}")
    return url


def database_url_from_env(env: Mapping[str, str] | None = None) -> str:
    """The async database URL alone, for tools that need nothing else (CLI, Alembic)."""
    env = os.environ if env is None else env
    default_db = f"sqlite:///{PROJECT_ROOT / 'var' / 'crm.db'}"
    return normalise_database_url(env.get("DATABASE_URL") or default_db)


def category_model_path_from_env(env: Mapping[str, str] | None = None) -> Path:
    """Where the category classifier is: ``CATEGORY_MODEL_PATH``, else ``models/category_classifier.joblib``."""
    env = os.environ if env is None else env
    return Path(env.get("CATEGORY_MODEL_PATH", str(PROJECT_ROOT / "models" / "category_classifier.joblib")))


def case_type_model_path_from_env(env: Mapping[str, str] | None = None) -> Path:
    """Where the case-type recogniser is: ``CASE_TYPE_MODEL_PATH``, else ``models/case_type_classifier.joblib``."""
    env = os.environ if env is None else env
    return Path(env.get("CASE_TYPE_MODEL_PATH", "").strip() or PROJECT_ROOT / "models" / "case_type_classifier.joblib")


def letter_model_path_from_env(env: Mapping[str, str] | None = None) -> Path:
    """Where the letter gate's model is: ``LETTER_MODEL_PATH``, else ``models/letter_kind.joblib``."""
    env = os.environ if env is None else env
    return Path(env.get("LETTER_MODEL_PATH", "").strip() or PROJECT_ROOT / "models" / "letter_kind.joblib")


def tracker_store_url_from_env(env: Mapping[str, str] | None = None) -> str:
    """The engine's tracker store: ``TRACKER_STORE_URL``, else what ``bin/env.sh`` derives.

    That is the CRM's own PostgreSQL database when ``DATABASE_URL`` names one, and
    ``var/tracker.db`` beside the embedded SQLite default otherwise. Returned as given (the
    engine's plain ``sqlite:///`` or ``postgresql://`` form), not with an async driver.
    """
    env = os.environ if env is None else env
    explicit = env.get("TRACKER_STORE_URL", "").strip()
    if explicit:
        return explicit
    database_url = env.get("DATABASE_URL", "").strip()
    for prefix in ("postgresql://", "postgres://"):
        if database_url.startswith(prefix):
            return "postgresql://" + database_url.removeprefix(prefix)
    return f"sqlite:///{PROJECT_ROOT / 'var' / 'tracker.db'}"


BACKUP_KEY_BYTES = 32


def backup_key_from_env(env: Mapping[str, str] | None = None) -> bytes:
    """The 32-byte key of ``backup``/``restore``: ``BACKUP_KEY``, as 64 hex digits or base64.

    Raises:
        SettingsError: unset, or not 32 bytes in either spelling.
    """
    env = os.environ if env is None else env
    raw = env.get("BACKUP_KEY", "").strip()
    if not raw:
        raise SettingsError("BACKUP_KEY must be set (32 random bytes as 64 hex digits or base64)")
    if len(raw) == 2 * BACKUP_KEY_BYTES and all(c in "0123456789abcdefABCDEF" for c in raw):
        return bytes.fromhex(raw)
    try:
        key = base64.b64decode(raw.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != BACKUP_KEY_BYTES:
        raise SettingsError("BACKUP_KEY must be 32 bytes as 64 hex digits or base64 (e.g. `openssl rand -base64 32`)")
    return key
