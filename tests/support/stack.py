"""Start the real engine and the real app on free loopback ports, for tests and benchmarks.

Each `Stack` has its own database, tracker store and secrets under a temporary
directory, so it never touches `var/` and runs beside a developer's own instance. As
`bin/run` does, the database is migrated (``python -m crm_backend migrate``) before the
app (``python -m app``) is started.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from bot.engine import engine_api_token

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "current.tar.gz"
RASA = ROOT / ".venv-rasa" / "bin" / "rasa"
RASA_PYTHON = ROOT / ".venv-rasa" / "bin" / "python"
# Fixed, valid secrets: nothing a test checks may hang on a random value (one starting with "-"
# once broke an argv). Each stack still has its own ports, database and tracker store.
TEST_SECRETS = {
    "ENGINE_TOKEN": "test-engine-token-0123456789abcdefghij",
    "ACTION_TOKEN": "test-action-token-0123456789abcdefghij",
    "REST_CHANNEL_TOKEN": "test-rest-channel-token-0123456789abcd",
    # The data key ring (crm_backend.crypto): one SM4 key and the blind-index key, fixed.
    "DATA_KEYS": "test1:AAECAwQFBgcICQoLDA0ODw==",
    "DATA_KEY_CURRENT": "test1",
    "DATA_HMAC_KEY": "yMnKy8zNzs/Q0dLT1NXW19jZ2tvc3d7f4OHi4+Tl5uc=",
}
APP_PYTHON = ROOT / ".venv" / "bin" / "python"
# The key ring's settings alone, for tests that build an environment of their own.
DATA_KEY_SECRETS = {name: TEST_SECRETS[name] for name in ("DATA_KEYS", "DATA_KEY_CURRENT", "DATA_HMAC_KEY")}


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate, timeout: float, interval: float = 0.25, what: str = "condition") -> float:  # type: ignore[no-untyped-def]
    """Poll until `predicate()` is truthy; returns the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if predicate():
                return time.monotonic() - started
        except requests.RequestException:
            pass
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached within {timeout}s")


def stop_process_group(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM the process group of a process we started, SIGKILL if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@dataclass
class Stack:
    """An engine and an app wired to each other, with their own state directory."""

    workdir: Path
    app_port: int = field(default_factory=free_port)
    rasa_port: int = field(default_factory=free_port)
    database_url: str | None = None
    tracker_store_url: str | None = None
    engine_timeout_seconds: float = 5.0
    # Redis for the engines' lock store (and the app's shared state): several engines share conversations.
    redis_url: str | None = None
    engine_options: tuple[str, ...] = ()  # more `rasa run` options (a logging config, say)
    secrets: dict[str, str] = field(default_factory=lambda: dict(TEST_SECRETS))
    api_key: str | None = None  # a write client's key for `api()`, made on first use
    # Settings for this stack beyond the defaults below (a test's small limits, say).
    app_env: dict[str, str] = field(default_factory=dict)
    # The module `python -m` runs as the app (tests.support.frozen_clock_app fixes its clock).
    app_module: str = "app"
    migrated: bool = False  # `migrate()` ran (once per stack; siblings sharing the database run it again, a no-op)
    engine_proc: subprocess.Popen[bytes] | None = None
    app_proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.database_url is None:
            self.database_url = f"sqlite:///{self.workdir / 'crm.db'}"

    @property
    def app_url(self) -> str:
        return f"http://127.0.0.1:{self.app_port}"

    @property
    def engine_url(self) -> str:
        return f"http://127.0.0.1:{self.rasa_port}"

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RASA_", "DATABASE_URL"))}
        env.update(self.secrets)
        env.update(
            APP_PORT=str(self.app_port),
            RASA_PORT=str(self.rasa_port),
            DATABASE_URL=str(self.database_url),
            ENGINE_TIMEOUT_SECONDS=str(self.engine_timeout_seconds),
            ACTION_ENDPOINT_URL=f"{self.app_url}/webhook",
            TRACKER_STORE_URL=self.tracker_store_url or f"sqlite:///{self.workdir / 'tracker.db'}",
            RASA_TELEMETRY_ENABLED="false",
            # The 回访 loop off: several test apps share one database, and a loop in one would
            # answer for the others. Tests of the loop start an app with it on.
            FOLLOWUP_CHECK_SECONDS="0",
            # Every test's browser connects from 127.0.0.1: the per-address limit on new web chat
            # sessions would refuse the suite's hundreds. tests/integration/test_limits.py lowers it.
            WEB_SESSIONS_PER_ADDRESS="100000",
            # Likewise the replay of messages the engine missed; the outage tests turn it on.
            ENGINE_REPLAY_SECONDS="0",
            PYTHONPATH=str(ROOT),
        )
        if self.redis_url is not None:
            env["REDIS_URL"] = self.redis_url
        env.update(self.app_env)
        return env

    def engine_command(self) -> list[str]:
        """How `bin/run` starts the engine: `rasa run` through the launcher, the secret in the environment."""
        return [
            str(RASA_PYTHON),
            "-m",
            "bot.engine_launcher",
            "--enable-api",
            "-i",
            "127.0.0.1",
            "-p",
            str(self.rasa_port),
            "--model",
            str(MODEL),
            "--endpoints",
            "endpoints.yml",
            "--credentials",
            "credentials.yml",
            *self.engine_options,
        ]

    def start_engine(self) -> float:
        """Start the engine and wait until its model is loaded; returns start-up seconds."""
        self.launch_engine()
        return self.wait_for_engine()

    def launch_engine(self) -> None:
        """Start the engine without waiting (engines of several stacks load their models in parallel)."""
        log = open(self.workdir / "engine.log", "ab")
        self.engine_proc = subprocess.Popen(
            self.engine_command(),
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_for_engine(self) -> float:
        """Wait until the launched engine has its model loaded; returns the seconds waited."""
        return wait_until(self.engine_ready, timeout=240, what="engine start")

    def engine_ready(self) -> bool:
        assert self.engine_proc is not None
        if self.engine_proc.poll() is not None:
            raise RuntimeError(f"engine exited; see {self.workdir / 'engine.log'}")
        resp = requests.get(f"{self.engine_url}/status", headers=self.engine_api_headers(), timeout=2)
        return resp.status_code == 200 and bool(resp.json().get("model_file"))

    def migrate(self) -> str:
        """``python -m crm_backend migrate`` on this stack's database, as `bin/run` runs it; returns its output.

        Raises:
            RuntimeError: the command failed (its output is in the message).
        """
        done = subprocess.run(
            [str(APP_PYTHON), "-m", "crm_backend", "migrate"],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"migrate failed: {done.stdout}{done.stderr}")
        self.migrated = True
        return done.stdout

    def start_app(self, extra_env: dict[str, str] | None = None) -> float:
        """Migrate the database (first time only), start the app and wait until it serves; returns start-up seconds."""
        if not self.migrated:
            self.migrate()
        log = open(self.workdir / "app.log", "ab")
        self.app_proc = subprocess.Popen(
            [str(APP_PYTHON), "-m", self.app_module],
            cwd=ROOT,
            env={**self.env, **(extra_env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return wait_until(self.app_ready, timeout=60, interval=0.05, what="app start")

    def app_ready(self) -> bool:
        assert self.app_proc is not None
        if self.app_proc.poll() is not None:
            raise RuntimeError(f"app exited; see {self.workdir / 'app.log'}")
        return requests.get(f"{self.app_url}/healthz", timeout=2).status_code in (200, 503)

    def sibling(self, name: str) -> Stack:
        """Another app on this stack's engine and database (own port, own log), not started yet.

        The engine still calls its actions on this stack's app, which writes the same database.
        """
        return Stack(
            workdir=self.workdir / name,
            app_port=free_port(),
            rasa_port=self.rasa_port,
            database_url=self.database_url,
            secrets=self.secrets,
            api_key=self.api_key,
            app_env=dict(self.app_env),
        )

    def engine_twin(self, name: str) -> Stack:
        """Another engine for this stack's app (own port, own log), not started yet.

        It shares the tracker store, the Redis lock store and the secrets, and calls its actions
        on this stack's app; the app reaches both when ``RASA_URLS`` names them (`engine_urls`).
        """
        return Stack(
            workdir=self.workdir / name,
            app_port=self.app_port,
            database_url=self.database_url,
            tracker_store_url=self.tracker_store_url or f"sqlite:///{self.workdir / 'tracker.db'}",
            engine_timeout_seconds=self.engine_timeout_seconds,
            secrets=self.secrets,
            redis_url=self.redis_url,
            engine_options=self.engine_options,
        )

    def start(self) -> None:
        self.start_engine()
        self.start_app()

    def stop_engine(self) -> None:
        stop_process_group(self.engine_proc)

    def stop_app(self) -> None:
        stop_process_group(self.app_proc)

    def stop(self) -> None:
        self.stop_app()
        self.stop_engine()

    # --- talking to it ------------------------------------------------------
    def rest(self, sender: str, message: str) -> list[dict]:  # type: ignore[type-arg]
        """One message through the app's REST channel; the bot's replies."""
        resp = requests.post(
            f"{self.app_url}/webhooks/rest/webhook",
            json={"sender": sender, "message": message},
            headers={"Authorization": f"Bearer {self.secrets['REST_CHANNEL_TOKEN']}"},
            timeout=30,
        )
        resp.raise_for_status()
        return resp.json()

    def engine_api_headers(self) -> dict[str, str]:
        """Credentials for the engine's HTTP API, as the app sends them (a short-lived JWT)."""
        return {"Authorization": f"Bearer {engine_api_token(self.secrets['ENGINE_TOKEN'])}"}

    def parse(self, text: str) -> dict:  # type: ignore[type-arg]
        """What the engine's NLU makes of a text (its /model/parse answer)."""
        resp = requests.post(
            f"{self.engine_url}/model/parse",
            headers=self.engine_api_headers(),
            json={"text": text},
            timeout=30,
        )
        resp.raise_for_status()
        return resp.json()

    def create_api_client(self, name: str, scope: str = "write") -> str:
        """A new /api/v1 client made with the operator's command; returns its key."""
        done = subprocess.run(
            [str(APP_PYTHON), "-m", "crm_backend", "create-api-client", "--name", name, "--scope", scope],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"create-api-client failed: {done.stderr}")
        return done.stdout.strip().splitlines()[-1]

    def api(self, method: str, path: str, *, key: str | None = None, **kwargs) -> requests.Response:  # type: ignore[no-untyped-def]
        """A call to /api/v1 with `key`, or else with this stack's own write client."""
        if key is None:
            if self.api_key is None:
                self.api_key = self.create_api_client(f"stack-{self.app_port}")
            key = self.api_key
        headers = {"Authorization": f"Bearer {key}", **kwargs.pop("headers", {})}
        return requests.request(method, f"{self.app_url}/api/v1{path}", headers=headers, timeout=30, **kwargs)
