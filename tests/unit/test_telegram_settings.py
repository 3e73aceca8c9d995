"""Telegram settings: off without a token; webhook mode needs a usable secret."""

from __future__ import annotations

import pytest

from bot.channels.telegram_settings import TELEGRAM_DEFAULT_API_BASE_URL, TelegramSettings
from crm_backend.settings import SettingsError

SECRET = "s3cret-token_of-20chars"


def test_without_a_token_there_is_no_telegram_channel() -> None:
    assert TelegramSettings.from_env({"TELEGRAM_WEBHOOK_SECRET": SECRET}) is None


def test_webhook_mode_is_the_default_and_telegrams_api_the_default_server() -> None:
    settings = TelegramSettings.from_env({"TELEGRAM_BOT_TOKEN": "1:abc", "TELEGRAM_WEBHOOK_SECRET": SECRET})
    assert settings is not None
    assert (settings.mode, settings.webhook_secret, settings.webhook_url) == ("webhook", SECRET, None)
    assert settings.api_base_url == TELEGRAM_DEFAULT_API_BASE_URL


def test_polling_mode_needs_no_secret_and_the_api_server_can_be_another() -> None:
    env = {"TELEGRAM_BOT_TOKEN": "1:abc", "TELEGRAM_MODE": "polling", "TELEGRAM_API_BASE_URL": "http://127.0.0.1:9/bot"}
    settings = TelegramSettings.from_env(env)
    assert settings is not None and settings.mode == "polling" and settings.api_base_url == "http://127.0.0.1:9/bot"


@pytest.mark.parametrize(
    "env",
    [
        {"TELEGRAM_MODE": "webhook"},
        {"TELEGRAM_WEBHOOK_SECRET": "short"},
        {"TELEGRAM_WEBHOOK_SECRET": "has spaces in it, not allowed"},
        {"TELEGRAM_WEBHOOK_SECRET": SECRET, "TELEGRAM_MODE": "push"},
        {"TELEGRAM_WEBHOOK_SECRET": SECRET, "TELEGRAM_WEBHOOK_URL": "http://insecure.example/webhooks/telegram"},
    ],
)
def test_a_misconfigured_channel_stops_the_app_at_start(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        TelegramSettings.from_env({"TELEGRAM_BOT_TOKEN": "1:abc", **env})
