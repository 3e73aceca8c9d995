"""A throwaway Redis server on a free loopback port, for tests and benchmarks.

Uses Debian's `redis-server` (`bin/test` installs it when missing); nothing is saved to disk.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from tests.support.stack import free_port, wait_until


class RedisServer:
    """`redis-server` in a private temporary directory; `url` names database `db`."""

    def __init__(self) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server not found: apt-get install redis-server (bin/test does)")
        self.workdir = Path(tempfile.mkdtemp(prefix="crm-redis-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=self.workdir,
            stdout=open(self.workdir / "server.log", "ab"),
            stderr=subprocess.STDOUT,
        )
        wait_until(self.pings, timeout=20, what="redis start")

    def pings(self) -> bool:
        """Whether the server answers PING (the app's venv needs no Redis client for this)."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited; see {self.workdir / 'server.log'}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.terminate()
                self.proc.wait(timeout=20)
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)
