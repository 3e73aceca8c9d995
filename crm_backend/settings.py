"""Settings read from the environment, once, by the process entry points.

Nothing here has a default for a secret: a missing secret is an error at start, so
no committed value can ever work in production. `bin/setup` generates local
development secrets into `var/secrets.env` for the embedded default.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
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
class Settings:
    """Everything the app needs to know about its environment."""

    app_host: str
    app_port: int
    rasa_url: str
    database_url: str
    engine_token: str
    action_token: str
    rest_channel_token: str
    engine_timeout_seconds: float
    allowed_origins: tuple[str, ...]
    domain_path: Path
    category_model_path: Path
    # The 12345 case-type recogniser (`bin/setup` trains it); loaded at start beside the category model.
    case_type_model_path: Path = PROJECT_ROOT / "models" / "case_type_classifier.joblib"
    # The city's own facts (addresses, hours, sites) the knowledge base's answers name; read at start.
    city_facts_path: Path = PROJECT_ROOT / "city.yml"
    console_secure_cookies: bool = False
    followup_remind_hours: float = 24.0  # 回访 unanswered this long: one reminder
    followup_archive_hours: float = 48.0  # reminder unanswered this long: archived as 未回访
    followup_check_seconds: float = 60.0  # how often the 回访 loop looks
    engine_replay_seconds: float = 5.0  # how often messages the engine missed are replayed (0: loop off)
    hot_issues_refresh_seconds: float = 900.0  # how often the hot-issue ranking is recomputed (0: job off)
    hot_issues_window_days: int = 30  # the job ranks the cases of this many days up to today
    max_message_chars: int = 2000
    max_logged_chars: int = 10000
    proof_failures_alert_per_hour: int = 100  # failed proofs city-wide in an hour that alert supervisors
    # Reverse proxies whose X-Forwarded-For names the client (sign-in throttling, audit log);
    # empty: the TCP peer is the client.
    trusted_proxies: tuple[Network, ...] = ()
    telegram: TelegramSettings | None = None  # None: no TELEGRAM_BOT_TOKEN, the app runs without Telegram
    # What app processes share in the moment (sender locks, live fan-out, leases of background
    # work): None keeps it in this process (the embedded default, one app process); a
    # ``redis://`` URL shares it through Redis between several (`crm_backend.shared`).
    redis_url: str | None = None
    limits: LimitSettings = field(default_factory=lambda: LimitSettings())

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """Build settings from environment variables.

        Raises:
            SettingsError: when a secret is missing or a number is malformed.
        """
        env = os.environ if env is None else env

        def secret(name: str) -> str:
            value = env.get(name, "").strip()
            if len(value) < 16:
                raise SettingsError(f"{name} must be set to a random string of at least 16 characters")
            return value

        def number(name: str, default: str) -> float:
            raw = env.get(name, default)
            try:
                return float(raw)
            except ValueError as exc:
                raise SettingsError(f"{name} must be a number, got {raw!r}") from exc

        def positive_int(name: str, default: str) -> int:
            value = number(name, default)
            if value < 1 or value != int(value):
                raise SettingsError(f"{name} must be a whole number of at least 1, got {env.get(name)!r}")
            return int(value)

        rasa_port = int(number("RASA_PORT", "5005"))
        origins = tuple(o.strip() for o in env.get("ALLOWED_ORIGINS", "").split(",") if o.strip())
        return cls(
            app_host=env.get("APP_HOST", "127.0.0.1"),
            app_port=int(number("APP_PORT", "8000")),
            rasa_url=env.get("RASA_URL", f"http://127.0.0.1:{rasa_port}").rstrip("/"),
            database_url=database_url_from_env(env),
            engine_token=secret("ENGINE_TOKEN"),
            action_token=secret("ACTION_TOKEN"),
            rest_channel_token=secret("REST_CHANNEL_TOKEN"),
            engine_timeout_seconds=number("ENGINE_TIMEOUT_SECONDS", "5"),
            allowed_origins=origins,
            domain_path=Path(env.get("DOMAIN_PATH", str(PROJECT_ROOT / "domain.yml"))),
            console_secure_cookies=env.get("CONSOLE_SECURE_COOKIES", "") in ("1", "true", "yes"),
            followup_remind_hours=number("FOLLOWUP_REMIND_HOURS", "24"),
            followup_archive_hours=number("FOLLOWUP_ARCHIVE_HOURS", "48"),
            followup_check_seconds=number("FOLLOWUP_CHECK_SECONDS", "60"),
            proof_failures_alert_per_hour=positive_int("PROOF_FAILURES_ALERT_PER_HOUR", "100"),
            engine_replay_seconds=number("ENGINE_REPLAY_SECONDS", "5"),
            hot_issues_refresh_seconds=number("HOT_ISSUES_REFRESH_SECONDS", "900"),
            hot_issues_window_days=positive_int("HOT_ISSUES_WINDOW_DAYS", "30"),
            category_model_path=category_model_path_from_env(env),
            case_type_model_path=case_type_model_path_from_env(env),
            city_facts_path=Path(env.get("CITY_FACTS_FILE", "").strip() or PROJECT_ROOT / "city.yml"),
            trusted_proxies=parse_trusted_proxies(env.get("TRUSTED_PROXIES", "")),
            telegram=TelegramSettings.from_env(env),
            redis_url=redis_url_from_env(env),
            limits=LimitSettings.from_env(env),
        )


# --- limits on the public entry points -----------------------------------------------------


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

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "LimitSettings":
        """Limits from ``WEB_SESSIONS_PER_ADDRESS``, ``MESSAGES_PER_SENDER``, ``CASES_PER_CITIZEN_PER_DAY``
        and the two ``*_WINDOW_SECONDS``.

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
        )


# --- Telegram ------------------------------------------------------------------------------

TELEGRAM_DEFAULT_API_BASE_URL = "https://api.telegram.org/bot"
# Telegram allows 1-256 of these in a webhook's secret token; we ask for at least 16.
_TELEGRAM_SECRET = re.compile(r"[A-Za-z0-9_-]{16,256}")


@dataclass(frozen=True)
class TelegramSettings:
    """The Telegram channel, present only when ``TELEGRAM_BOT_TOKEN`` is set."""

    bot_token: str
    mode: str  # "webhook": Telegram posts to /webhooks/telegram | "polling": the app asks Telegram
    webhook_secret: str | None
    webhook_url: str | None  # if set, registered with setWebhook at start (webhook mode)
    api_base_url: str = TELEGRAM_DEFAULT_API_BASE_URL

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "TelegramSettings | None":
        """Telegram settings, or None when no bot token is set.

        Raises:
            SettingsError: on an unknown mode, or webhook mode without a usable secret.
        """
        token = env.get("TELEGRAM_BOT_TOKEN", "").strip()
        if not token:
            return None
        mode = env.get("TELEGRAM_MODE", "webhook").strip() or "webhook"
        if mode not in ("webhook", "polling"):
            raise SettingsError(f"TELEGRAM_MODE must be webhook or polling, got {mode!r}")
        secret = env.get("TELEGRAM_WEBHOOK_SECRET", "").strip() or None
        if mode == "webhook" and (secret is None or not _TELEGRAM_SECRET.fullmatch(secret)):
            raise SettingsError("TELEGRAM_WEBHOOK_SECRET must be 16-256 letters, digits, _ or - in webhook mode")
        webhook_url = env.get("TELEGRAM_WEBHOOK_URL", "").strip() or None
        if webhook_url is not None and not webhook_url.startswith("https://"):
            raise SettingsError("TELEGRAM_WEBHOOK_URL must be an https:// URL (Telegram posts only over TLS)")
        return cls(
            bot_token=token,
            mode=mode,
            webhook_secret=secret,
            webhook_url=webhook_url,
            api_base_url=env.get("TELEGRAM_API_BASE_URL", "").strip() or TELEGRAM_DEFAULT_API_BASE_URL,
        )


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
