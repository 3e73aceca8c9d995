"""var/ (databases, logs, secrets, the tracker store) is private to its owner."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def setup_var_lines() -> str:
    """The lines of bin/setup that prepare var/, from its `umask 077` to the chmod of old files."""
    lines = (ROOT / "bin" / "setup").read_text().splitlines()
    start = lines.index("umask 077")
    end = lines.index("chmod -R go-rwx var")
    return "\n".join(lines[start : end + 1])


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_setup_makes_var_private_and_old_files_owner_only(tmp_path: Path) -> None:
    var = tmp_path / "var"
    var.mkdir(mode=0o755)
    var.chmod(0o755)
    old = var / "crm.db"
    old.write_text("")
    old.chmod(0o644)
    script = f"set -euo pipefail\numask 022\n{setup_var_lines()}\n: > var/created-after.log\n"
    subprocess.run(["bash", "-c", script], cwd=tmp_path, check=True)
    assert mode(var) == 0o700
    assert mode(old) == 0o600
    assert mode(var / "created-after.log") == 0o600


def test_run_starts_the_engine_and_the_app_under_umask_077() -> None:
    run = (ROOT / "bin" / "run").read_text().splitlines()
    umask = next(i for i, line in enumerate(run) if line.startswith("umask 077"))
    assert umask < min(i for i, line in enumerate(run) if "bot.engine_launcher" in line)
