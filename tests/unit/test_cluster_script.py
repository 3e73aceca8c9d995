"""`bin/cluster` refuses bad options before it sets anything up or starts anything."""

from __future__ import annotations

import subprocess

from crm_backend.settings import PROJECT_ROOT

CLUSTER = PROJECT_ROOT / "bin" / "cluster"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLUSTER), *args], capture_output=True, text=True, timeout=30, check=False)


def test_help_names_the_options() -> None:
    result = run("--help")
    assert result.returncode == 0
    assert "bin/cluster [--apps N] [--engines M] [--port P]" in result.stdout


def test_bad_options_are_refused_at_once() -> None:
    for args in (("--apps", "0"), ("--engines", "x"), ("--bogus",)):
        result = run(*args)
        assert result.returncode == 2, args
        assert "bin/cluster:" in result.stderr
        assert "[setup]" not in result.stdout  # refused before bin/setup ran


def test_the_proxy_template_keeps_the_action_endpoint_off_the_public_side() -> None:
    template = (PROJECT_ROOT / "deploy" / "nginx.conf.in").read_text(encoding="utf-8")
    public, _, internal = template.partition("# Internal:")
    assert "location = /webhook {\n            return 404;" in public
    assert "location = /webhook {\n            proxy_pass http://apps;" in internal
    for field in ("@USER@", "@CLUSTER@", "@PORT@", "@ACTIONS_PORT@", "@SERVERS@"):
        assert field in template
