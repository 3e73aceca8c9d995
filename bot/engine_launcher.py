"""``.venv-rasa/bin/python -m bot.engine_launcher [rasa run options]``: start the engine with no
secret on its command line.

``rasa run --auth-token=…`` shows the token to every local user (``ps``, ``/proc/<pid>/cmdline``),
and Rasa accepts that token only in a URL query string, where proxies and access logs keep it.
This launcher reads ``ENGINE_TOKEN`` from the environment and hands it to Rasa's own entry point
as the JWT secret (HS256), so the HTTP API accepts only short-lived tokens signed with it, in an
``Authorization: Bearer`` header (see `bot.engine.engine_api_token`). The options go to Rasa
through ``sys.argv`` of this process, which ``/proc`` does not show: it shows the launcher's
original arguments. The engine's files (tracker store, log) are created readable by the owner only.

Runs inside the engine's venv (Python 3.10): keep it free of app imports.
"""

from __future__ import annotations

import os
import sys

SECRET_OPTIONS = ("--auth-token", "--jwt-secret", "--jwt-private-key")
MIN_SECRET_CHARS = 16


def rasa_argv(options: list[str], secret: str) -> list[str]:
    """The argument vector for ``rasa run``: the given options plus the JWT secret.

    Raises:
        SystemExit: if a secret is passed as an option (it would be visible in ``ps``) or
            the secret is too short.
    """
    for option in options:
        if option.split("=", 1)[0] in SECRET_OPTIONS:
            raise SystemExit(
                f"engine_launcher: {option.split('=', 1)[0]} is read from ENGINE_TOKEN, not the command line"
            )
    if len(secret) < MIN_SECRET_CHARS:
        raise SystemExit(f"engine_launcher: ENGINE_TOKEN must be set, at least {MIN_SECRET_CHARS} characters")
    # "=" form: a secret starting with "-" would otherwise be taken for an option.
    return ["rasa", "run", *options, f"--jwt-secret={secret}", "--jwt-method=HS256"]


def main() -> None:
    """Start ``rasa run`` with the given options and the secret from the environment."""
    argv = rasa_argv(sys.argv[1:], os.environ.get("ENGINE_TOKEN", ""))
    os.umask(0o077)  # the tracker store and the log hold citizens' messages
    from rasa.__main__ import main as rasa_main

    sys.argv = argv
    rasa_main()


if __name__ == "__main__":
    main()
