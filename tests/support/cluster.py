"""The production shape on loopback for tests: PostgreSQL, Redis, two engines, two apps, nginx.

As `bin/cluster` starts it (one migration before any app, the engines' action calls and every
citizen through nginx, nginx's configuration from the same template via `app.nginx_conf`),
but on free ports, in a temporary directory, with the test stack's fixed secrets. Each app
and engine is a `Stack`; `kill_app`/`kill_engine` SIGKILL one, `restart_*` start it again on
its port.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import requests

from app.nginx_conf import render
from tests.support.postgres import PostgresServer
from tests.support.redis_server import RedisServer
from tests.support.stack import Stack, free_port, stop_process_group, wait_until


def start_nginx(root: Path, *, port: int, actions_port: int, app_ports: list[int]) -> subprocess.Popen[bytes]:
    """nginx from bin/cluster's template in `root`, in front of `app_ports`; returns once it listens."""
    # As root nginx's workers run as nobody, who must reach its temporary files: they live in
    # a directory of their own (pytest's are private to root), passable but not listable.
    (root / "nginx" / "tmp").mkdir(parents=True, exist_ok=True)
    (root / "log").mkdir(exist_ok=True)
    user_line = ""
    if os.geteuid() == 0:
        user_line = "user nobody nogroup;"
        root.chmod(0o711)
        shutil.chown(root / "nginx" / "tmp", "nobody", "nogroup")
    conf = root / "nginx.conf"
    conf.write_text(
        render(cluster_dir=root, port=port, actions_port=actions_port, app_ports=app_ports, user_line=user_line),
        encoding="utf-8",
    )
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = subprocess.Popen(
        [binary, "-p", str(root / "nginx"), "-c", str(conf), "-g", "daemon off;"],
        stdout=(root / "log" / "nginx.out").open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_until(lambda: _listening(actions_port), timeout=30, interval=0.1, what="nginx")
    return proc


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


class Cluster:
    """`apps` apps and `engines` engines sharing one PostgreSQL and one Redis, behind nginx."""

    def __init__(
        self, workdir: Path, *, apps: int = 2, engines: int = 2, app_env: dict[str, str] | None = None
    ) -> None:
        self.workdir = workdir
        self.postgres = PostgresServer()
        self.redis = RedisServer()
        self.port = free_port()
        self.actions_port = free_port()
        self._app_count = apps
        self._engine_count = engines
        self._app_env = dict(app_env or {})
        self.apps: list[Stack] = []
        self.engines: list[Stack] = []
        self.nginx: subprocess.Popen[bytes] | None = None
        self.nginx_dir = Path(tempfile.mkdtemp(prefix="crm-nginx-"))

    @property
    def url(self) -> str:
        """nginx's public address: what citizens and staff reach."""
        return f"http://127.0.0.1:{self.port}"

    def _stack(self, name: str, database_url: str, tracker_url: str) -> Stack:
        stack = Stack(
            workdir=self.workdir / name,
            database_url=database_url,
            tracker_store_url=tracker_url,
            redis_url=self.redis.url,
            # Thirty conversations on one engine while the other restarts, on a shared machine.
            engine_timeout_seconds=30.0,
        )
        stack.app_env.update(
            # The engines call the actions through nginx's internal listener, as in bin/cluster.
            ACTION_ENDPOINT_URL=f"http://127.0.0.1:{self.actions_port}/webhook",
            TRUSTED_PROXIES="127.0.0.1/32",
            **self._app_env,
        )
        return stack

    def start(self) -> None:
        self.postgres.start()
        self.redis.start()
        database_url = self.postgres.create_database("crm")
        tracker_url = self.postgres.create_database("tracker")
        self.engines = [self._stack(f"engine-{i}", database_url, tracker_url) for i in range(self._engine_count)]
        self.apps = [self._stack(f"app-{i}", database_url, tracker_url) for i in range(self._app_count)]
        for engine in self.engines:  # their models load in parallel
            engine.launch_engine()
        for engine in self.engines:
            engine.wait_for_engine()
        rasa_urls = ",".join(engine.engine_url for engine in self.engines)
        self.apps[0].migrate()  # once, before any app starts
        for app in self.apps:
            app.migrated = True
            app.app_env["RASA_URLS"] = rasa_urls
            app.start_app()
        self._start_nginx()

    def _start_nginx(self) -> None:
        ports = [app.app_port for app in self.apps]
        self.nginx = start_nginx(self.nginx_dir, port=self.port, actions_port=self.actions_port, app_ports=ports)
        wait_until(
            lambda: requests.get(f"{self.url}/healthz", timeout=2).status_code in (200, 503),
            timeout=30,
            interval=0.1,
            what="nginx",
        )

    # --- faults -------------------------------------------------------------------------------
    @staticmethod
    def _kill(proc: subprocess.Popen[bytes] | None) -> None:
        assert proc is not None and proc.poll() is None, "the process to kill is not running"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def kill_app(self, index: int) -> None:
        """SIGKILL an app: no clean-up, its sockets and Redis locks left as a crash leaves them."""
        self._kill(self.apps[index].app_proc)

    def restart_app(self, index: int) -> None:
        self.apps[index].start_app()

    def kill_engine(self, index: int) -> None:
        self._kill(self.engines[index].engine_proc)

    def restart_engine(self, index: int) -> None:
        self.engines[index].start_engine()

    def heal(self) -> None:
        """Start again any app or engine a fault left dead (a test after a failed one starts whole)."""
        for index, engine in enumerate(self.engines):
            if engine.engine_proc is None or engine.engine_proc.poll() is not None:
                self.restart_engine(index)
        for index, app in enumerate(self.apps):
            if app.app_proc is None or app.app_proc.poll() is not None:
                self.restart_app(index)

    def stop(self) -> None:
        try:
            stop_process_group(self.nginx)
            for stack in [*self.apps, *self.engines]:
                stack.stop()
        finally:
            self.redis.stop()
            self.postgres.stop()
            shutil.rmtree(self.nginx_dir, ignore_errors=True)

    def tails(self, lines: int = 15) -> str:
        """The end of every app's and engine's log, for a failing test's output."""
        out = []
        for stack in [*self.apps, *self.engines]:
            for name in ("app.log", "engine.log"):
                log = stack.workdir / name
                if log.exists():
                    tail = log.read_text(errors="replace").splitlines()[-lines:]
                    out.append(f"--- tail of {log} ---\n" + "\n".join(tail))
        errors = self.nginx_dir / "log" / "nginx-error.log"
        if errors.exists():
            out.append("--- tail of nginx's error log ---\n" + "\n".join(errors.read_text().splitlines()[-lines:]))
        return "\n".join(out)
