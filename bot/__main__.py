"""``python -m bot``: run the app with settings from the environment."""

from __future__ import annotations

import logging
import os
import sys

from aiohttp import web

from bot.app import init_app
from crm_backend.settings import Settings, SettingsError


def main() -> int:
    # The SQLite database (and anything else the app writes) holds citizens' data: owner only,
    # however the app was started.
    os.umask(0o077)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # httpx (under python-telegram-bot) logs every request URL, and Bot API URLs carry the bot token.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return 2
    try:
        web.run_app(
            init_app(settings),
            host=settings.app_host,
            port=settings.app_port,
            print=lambda _msg: None,
            access_log=None,
            shutdown_timeout=5,
        )
    except SettingsError as error:  # a file read at start (city.yml) is malformed
        print(f"configuration error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
