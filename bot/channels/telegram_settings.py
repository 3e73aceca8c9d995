"""The Telegram channel's settings, read from the environment (present only with a bot token)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from crm_backend.settings import SettingsError

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
