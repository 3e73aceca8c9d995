"""The operator's CLI (`python -m crm_backend …`) run as a subprocess on an SQLite file."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support.stack import APP_PYTHON, ROOT


def run_cli(
    *args: str, database: Path, stdin: str | None = None, umask: int | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m crm_backend …` on the given SQLite file, as an operator runs it (under `umask` if given)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("DATABASE_URL")}
    env["DATABASE_URL"] = f"sqlite:///{database}"
    return subprocess.run(
        [str(APP_PYTHON), "-m", "crm_backend", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        input=stdin,
        text=True,
        timeout=120,
        check=False,
        preexec_fn=None if umask is None else (lambda: os.umask(umask)),
    )
