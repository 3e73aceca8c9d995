"""`app.nginx_conf` fills in the one nginx template that bin/cluster and the fault tests use."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from app.nginx_conf import render
from crm_backend.settings import PROJECT_ROOT


def test_every_field_is_filled_and_each_app_is_a_server() -> None:
    conf = render(
        cluster_dir=Path("/srv/cluster"),
        port=8080,
        actions_port=8081,
        app_ports=[8101, 8102],
        user_line="user nobody nogroup;",
    )
    assert not re.search(r"@[A-Z_]+@", conf)
    assert conf.startswith("# nginx in front") and "\nuser nobody nogroup;\n" in conf
    assert re.findall(r"server 127\.0\.0\.1:(\d+) max_fails=1 fail_timeout=5s;", conf) == ["8101", "8102"]
    assert "listen 127.0.0.1:8080;" in conf and "listen 127.0.0.1:8081;" in conf
    assert "pid /srv/cluster/nginx/nginx.pid;" in conf


def test_no_app_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one app"):
        render(cluster_dir=Path("/srv/cluster"), port=8080, actions_port=8081, app_ports=[])


def test_the_command_prints_what_render_returns() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "app.nginx_conf", "--cluster", "/srv/c", "--port", "80", "--actions-port", "81", "9001"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert done.stdout == render(cluster_dir=Path("/srv/c"), port=80, actions_port=81, app_ports=[9001])
