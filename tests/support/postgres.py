"""A throwaway PostgreSQL server on a free loopback port, for tests and benchmarks.

Uses the Debian server binaries (`bin/test` installs `postgresql` when missing). As root,
the server runs as the `postgres` user, since PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.stack import free_port


def _bindir() -> Path:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if os.environ.get("PG_BINDIR"):
        return Path(os.environ["PG_BINDIR"])
    if not candidates:
        raise RuntimeError("PostgreSQL server binaries not found: apt-get install postgresql (bin/test does)")
    return Path(candidates[-1]).parent


class PostgresServer:
    """initdb + pg_ctl in a private temporary directory; `url` names its `postgres` database."""

    def __init__(self) -> None:
        self.bindir = _bindir()
        self.workdir = Path(tempfile.mkdtemp(prefix="crm-pg-"))
        self.port = free_port()
        self._as_owner: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.workdir, "postgres", "postgres")
            self._as_owner = ["runuser", "-u", "postgres", "--"]

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://crm@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as_owner, *args], check=True, capture_output=True, cwd=self.workdir)

    def start(self) -> None:
        data = self.workdir / "data"
        self._run(str(self.bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "crm", "-E", "UTF8", "--no-locale")
        self.pg_ctl("start")

    def restart(self) -> None:
        """Stop the server (fast: open transactions roll back, clients are cut off) and start it again on its port."""
        self.pg_ctl("restart")

    def pg_ctl(self, action: str) -> None:
        """``pg_ctl <action>`` (start, stop, restart), waiting for it to finish; stop is fast."""
        subprocess.run(self.pg_ctl_command(action), check=True, capture_output=True, cwd=self.workdir)

    def pg_ctl_command(self, action: str) -> list[str]:
        """The command that runs ``pg_ctl <action>`` (start, stop, restart) on this server, as its owner."""
        data = self.workdir / "data"
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.workdir} -c fsync=off -c max_connections=200"
        return [
            *self._as_owner,
            str(self.bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(self.workdir / "server.log"),
            "-o",
            options,
            "-m",
            "fast",
            "-w",
            action,
        ]

    def create_database(self, name: str) -> str:
        """A new empty database; returns its URL."""
        self._run(
            str(self.bindir / "psql"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "crm",
            "-d",
            "postgres",
            "-c",
            f'CREATE DATABASE "{name}"',
        )
        return self.url(name)

    @classmethod
    @contextmanager
    def running(cls) -> Iterator[PostgresServer]:
        """A started server, stopped (and its files removed) when the block ends."""
        server = cls()
        server.start()
        try:
            yield server
        finally:
            server.stop()

    def stop(self) -> None:
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.workdir / "data"), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)
