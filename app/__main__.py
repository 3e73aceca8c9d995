"""``python -m app``: run the app with settings from the environment.

The database must be migrated first (``python -m crm_backend migrate``; `bin/run` does it):
the app refuses to start on one that is not at the head revision (exit code 1).
"""

from __future__ import annotations

import logging
import os
import sys

from aiohttp import web

from app.factory import init_app
from app.settings import Settings, SettingsError
from crm_backend.schema import SchemaNotCurrent

EXIT_CONFIGURATION = 2
EXIT_NOT_MIGRATED = 1


def main() -> int:
    """Read the settings, build the app and serve it until SIGINT/SIGTERM; returns the exit code."""
    # The SQLite database (and anything else the app writes) holds citizens' data: owner only,
    # however the app was started.
    os.umask(0o077)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # httpx (under python-telegram-bot) logs every request URL, and Bot API URLs carry the bot token.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        settings = Settings.from_env()
        app = init_app(settings)
    except SettingsError as error:  # a setting, or a file read when building (city.yml), is malformed
        print(f"configuration error: {error}", file=sys.stderr)
        return EXIT_CONFIGURATION
    try:
        web.run_app(
            app,
            host=settings.app_host,
            port=settings.app_port,
            print=lambda _msg: None,
            access_log=None,
            shutdown_timeout=5,
        )
    except SchemaNotCurrent:  # logged by the database context, with the command to run
        return EXIT_NOT_MIGRATED
    return 0


if __name__ == "__main__":
    sys.exit(main())
