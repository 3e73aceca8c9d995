"""``.venv-rasa/bin/python -m bot.engine_launcher [rasa run options]``: start the engine with no
secret on its command line.

``rasa run --auth-token=…`` shows the token to every local user (``ps``, ``/proc/<pid>/cmdline``),
and Rasa accepts that token only in a URL query string, where proxies and access logs keep it.
This launcher reads ``ENGINE_TOKEN`` from the environment and hands it to Rasa's own entry point
as the JWT secret (HS256), so the HTTP API accepts only short-lived tokens signed with it, in an
``Authorization: Bearer`` header (see `bot.engine.engine_api_token`). The options go to Rasa
through ``sys.argv`` of this process, which ``/proc`` does not show: it shows the launcher's
original arguments. The engine's files (tracker store, log) are created readable by the owner only.

When ``REDIS_URL`` names a Redis server, several engines share one conversation store, and
Rasa's default in-memory lock store would let two of them work on one conversation at once: the
launcher then starts Rasa on a copy of the endpoints file with a ``lock_store`` of ``type: redis``
(Rasa's `RedisLockStore`) added, written under ``var/``. An endpoints file cannot be
conditional, and Rasa expands only ``${VAR}``, without defaults; so the copy names environment
variables the launcher sets from ``REDIS_URL`` (the password stays off the disk), and the
embedded default (no ``REDIS_URL``) runs on ``endpoints.yml`` as it is.

Runs inside the engine's venv (Python 3.10): keep it free of app imports (`crm_backend.crypto`, standard
library and cryptography only, is meant for both).
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import unquote, urlsplit

from crm_backend.crypto import KeyRing, KeyRingError

SECRET_OPTIONS = ("--auth-token", "--jwt-secret", "--jwt-private-key")
MIN_SECRET_CHARS = 16
VAR_DIR = Path(__file__).resolve().parent.parent / "var"
# Alphanumeric, as Rasa requires: the engines' keys ("engine:lock:<sender>") stay apart from the app's.
LOCK_KEY_PREFIX = "engine"
REDIS_SCHEMES = {"redis": False, "rediss": True}  # scheme -> TLS


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


def _endpoints_option(options: list[str]) -> tuple[int | None, str]:
    """Where ``--endpoints`` is among the options (None: absent) and the file it names."""
    for index, option in enumerate(options):
        if option == "--endpoints" and index + 1 < len(options):
            return index, options[index + 1]
        if option.startswith("--endpoints="):
            return index, option.split("=", 1)[1]
    return None, "endpoints.yml"  # Rasa's own default


def with_redis_lock_store(
    options: list[str], env: Mapping[str, str], var_dir: Path = VAR_DIR
) -> tuple[list[str], dict[str, str]]:
    """The ``rasa run`` options with Rasa's `RedisLockStore` when ``REDIS_URL`` is set.

    Args:
        options: the options given to the launcher.
        env: the environment (``REDIS_URL``: ``redis://[user:password@]host[:port][/db]``,
            ``rediss://`` for TLS).
        var_dir: where the endpoints file with the lock store is written.

    Returns:
        The options (``--endpoints`` pointing at the copy with a ``lock_store``) and the
        environment variables its placeholders name; unchanged options and no variables
        without ``REDIS_URL``, or when the endpoints file configures a lock store itself.

    Raises:
        SystemExit: ``REDIS_URL`` is not a ``redis://`` or ``rediss://`` URL with a host.
    """
    redis_url = env.get("REDIS_URL", "").strip()
    index, endpoints = _endpoints_option(options)
    if not redis_url or not Path(endpoints).is_file():
        return options, {}
    text = Path(endpoints).read_text(encoding="utf-8")
    if re.search(r"^lock_store\s*:", text, flags=re.MULTILINE):
        return options, {}
    url = urlsplit(redis_url)
    if url.scheme not in REDIS_SCHEMES or not url.hostname:
        raise SystemExit("engine_launcher: REDIS_URL must be redis://host[:port][/db] or rediss://…")
    db = url.path.strip("/") or "0"
    values = {
        "ENGINE_LOCK_REDIS_HOST": url.hostname,
        "ENGINE_LOCK_REDIS_PORT": str(url.port or 6379),
        "ENGINE_LOCK_REDIS_DB": db,
    }
    lines = [
        "",
        "# Added by bot.engine_launcher because REDIS_URL is set: engines share conversations.",
        "lock_store:",
        "  type: redis",
        "  url: ${ENGINE_LOCK_REDIS_HOST}",
        "  port: ${ENGINE_LOCK_REDIS_PORT}",
        "  db: ${ENGINE_LOCK_REDIS_DB}",
        f"  key_prefix: {LOCK_KEY_PREFIX}",
    ]
    if url.username:
        values["ENGINE_LOCK_REDIS_USERNAME"] = unquote(url.username)
        lines.append("  username: ${ENGINE_LOCK_REDIS_USERNAME}")
    if url.password:
        values["ENGINE_LOCK_REDIS_PASSWORD"] = unquote(url.password)
        lines.append("  password: ${ENGINE_LOCK_REDIS_PASSWORD}")
    if REDIS_SCHEMES[url.scheme]:
        lines.append("  use_ssl: true")
    content = text.rstrip("\n") + "\n" + "\n".join(lines) + "\n"
    # Named by its content and replaced atomically: engines started together write the same file.
    var_dir.mkdir(parents=True, exist_ok=True)
    target = var_dir / f"endpoints-redis-lock-{hashlib.sha256(content.encode()).hexdigest()[:12]}.yml"
    partial = target.with_name(f"{target.name}.{os.getpid()}")
    partial.write_text(content, encoding="utf-8")
    os.replace(partial, target)
    if index is None:
        return [*options, f"--endpoints={target}"], values
    if options[index] == "--endpoints":
        return [*options[: index + 1], str(target), *options[index + 2 :]], values
    return [*options[:index], f"--endpoints={target}", *options[index + 1 :]], values


def main() -> None:
    """Start ``rasa run`` with the given options and the secret from the environment."""
    options, lock_env = with_redis_lock_store(sys.argv[1:], os.environ)
    os.environ.update(lock_env)
    argv = rasa_argv(options, os.environ.get("ENGINE_TOKEN", ""))
    try:  # the tracker store encrypts citizens' words with these: stop now rather than in Rasa's start-up
        KeyRing.from_env()
    except KeyRingError as error:
        raise SystemExit(f"engine_launcher: {error}") from error
    os.umask(0o077)  # the tracker store and the log hold citizens' messages
    from rasa.__main__ import main as rasa_main

    from bot import engine_speedups

    engine_speedups.apply()

    sys.argv = argv
    rasa_main()


if __name__ == "__main__":
    main()
