"""The app-wide settings, read from the environment once by the process entry point (`python -m app`).

Nothing here has a default for a secret: a missing secret is an error at start, so
no committed value can ever work in production. `bin/setup` generates local
development secrets into `var/secrets.env` for the embedded default.

The pieces the domain reads on its own (the database URL, the model paths, the limits, the
trusted proxies) stay in `crm_backend/settings.py` and are used here; the Telegram channel's
own settings are in `bot/channels/telegram_settings.py`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bot.channels.telegram_settings import TelegramSettings
from bot.engine import DEFAULT_MAX_IN_FLIGHT
from crm_backend.crypto import KeyRing, KeyRingError
from crm_backend.settings import (
    PROJECT_ROOT,
    LimitSettings,
    Network,
    RetentionSettings,
    SettingsError,
    case_type_model_path_from_env,
    category_model_path_from_env,
    database_url_from_env,
    letter_model_path_from_env,
    parse_trusted_proxies,
    redis_url_from_env,
    tracker_store_url_from_env,
)

__all__ = ["PROJECT_ROOT", "Settings", "SettingsError"]


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
    engine_max_in_flight: int  # turns one app lets each engine work on at once (0: no limit)
    allowed_origins: tuple[str, ...]
    domain_path: Path
    category_model_path: Path
    # The 12345 case-type recogniser (`bin/setup` trains it); loaded at start beside the category model.
    case_type_model_path: Path = PROJECT_ROOT / "models" / "case_type_classifier.joblib"
    # The letter gate's report/question model (`bin/setup` trains it: python -m bot.letters train).
    letter_model_path: Path = PROJECT_ROOT / "models" / "letter_kind.joblib"
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
    limits: LimitSettings = field(default_factory=lambda: LimitSettings())
    # Who answers partners' questions about /open311/v2/ (discovery's `contact`).
    open311_contact: str = "12345 市民服务热线"
    # The engines the app spreads conversations over (RASA_URLS); just `rasa_url` unless it names several.
    rasa_urls: tuple[str, ...] = ()
    # Where several app processes share locks, live delivery and leases; None: one process keeps
    # them in memory (the embedded default). A ``redis://`` URL shares them (`crm_backend.shared`).
    redis_url: str | None = None
    # The keys of personal data at rest (crm_backend.crypto); None only for settings a test
    # builds by hand, whose encrypted columns then use the ring the environment names.
    key_ring: KeyRing | None = None
    # How long each kind of personal data is kept; the retention job runs every
    # `retention_run_seconds` (0: off) and reaches the engine's tracker store at `tracker_store_url`.
    retention: RetentionSettings = field(default_factory=lambda: RetentionSettings())
    retention_run_seconds: float = 86400.0
    tracker_store_url: str | None = None
    # The category model: retrained from staff labels every `category_retrain_seconds` (0: off;
    # one process at a time), and each process checks the current version every
    # `category_model_check_seconds` (0: never switches after start).
    category_retrain_seconds: float = 604800.0
    category_model_check_seconds: float = 30.0

    def __post_init__(self) -> None:
        if not self.rasa_urls:
            object.__setattr__(self, "rasa_urls", (self.rasa_url,))

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

        def whole(name: str, default: str) -> int:
            value = number(name, default)
            if value < 0 or value != int(value):
                raise SettingsError(f"{name} must be a whole number (0 or more), got {env.get(name)!r}")
            return int(value)

        def positive_int(name: str, default: str) -> int:
            value = number(name, default)
            if value < 1 or value != int(value):
                raise SettingsError(f"{name} must be a whole number of at least 1, got {env.get(name)!r}")
            return int(value)

        rasa_port = int(number("RASA_PORT", "5005"))
        rasa_urls = tuple(url.strip().rstrip("/") for url in env.get("RASA_URLS", "").split(",") if url.strip())
        if len(set(rasa_urls)) != len(rasa_urls):
            raise SettingsError(f"RASA_URLS names an engine twice: {env.get('RASA_URLS')!r}")
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
            engine_max_in_flight=whole("ENGINE_MAX_IN_FLIGHT", str(DEFAULT_MAX_IN_FLIGHT)),
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
            letter_model_path=letter_model_path_from_env(env),
            city_facts_path=Path(env.get("CITY_FACTS_FILE", "").strip() or PROJECT_ROOT / "city.yml"),
            trusted_proxies=parse_trusted_proxies(env.get("TRUSTED_PROXIES", "")),
            telegram=TelegramSettings.from_env(env),
            limits=LimitSettings.from_env(env),
            open311_contact=env.get("OPEN311_CONTACT", "").strip() or "12345 市民服务热线",
            rasa_urls=rasa_urls,
            redis_url=redis_url_from_env(env),
            key_ring=key_ring_from_env(env),
            retention=RetentionSettings.from_env(env),
            retention_run_seconds=number("RETENTION_RUN_SECONDS", "86400"),
            tracker_store_url=tracker_store_url_from_env(env),
            category_retrain_seconds=number("CATEGORY_RETRAIN_SECONDS", "604800"),
            category_model_check_seconds=number("CATEGORY_MODEL_CHECK_SECONDS", "30"),
        )


def key_ring_from_env(env: Mapping[str, str]) -> KeyRing:
    """The data key ring (``DATA_KEYS``, ``DATA_KEY_CURRENT``, ``DATA_HMAC_KEY`` or ``DATA_KEYS_FILE``).

    Raises:
        SettingsError: no key, or a malformed one: the app does not start without one.
    """
    try:
        return KeyRing.from_env(env)
    except KeyRingError as error:
        raise SettingsError(str(error)) from error
