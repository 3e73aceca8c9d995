"""Staff accounts in a running stack's database, and a signed-in console client."""

from __future__ import annotations

import re
import subprocess

import requests

from tests.support.naming import unique
from tests.support.stack import APP_PYTHON, ROOT, Stack

PASSWORD = "console test password"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
_BODY_CSRF = re.compile(r'data-csrf="([^"]+)"')


def create_staff(stack: Stack, role: str, department: str | None = None, display_name: str = "测试员") -> str:
    """A new member of staff, made with the operator's command; returns the username."""
    username = unique(role, ".")
    args = ["--username", username, "--role", role, "--display-name", display_name]
    if department:
        args += ["--department", department]
    done = subprocess.run(
        [str(APP_PYTHON), "-m", "crm_backend", "create-user", *args],
        cwd=ROOT,
        env=stack.env,
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return username


class ConsoleClient:
    """What a staff member's browser does, over plain HTTP."""

    def __init__(self, stack: Stack) -> None:
        self.base = f"{stack.app_url}/console"
        self.http = requests.Session()
        self.http.headers["Accept"] = "text/html"
        self.csrf = ""

    def login(self, username: str, password: str = PASSWORD) -> requests.Response:
        page = self.http.get(f"{self.base}/login", timeout=10)
        token = _CSRF.search(page.text)
        assert token, "the sign-in form has no CSRF field"
        response = self.http.post(
            f"{self.base}/login",
            data={"csrf": token.group(1), "username": username, "password": password},
            timeout=30,
        )
        found = _BODY_CSRF.search(response.text)
        self.csrf = found.group(1) if found else ""
        return response

    def get(self, path: str) -> requests.Response:
        return self.http.get(f"{self.base}{path}", timeout=30)

    def post(self, path: str, data: dict[str, str], *, csrf: bool = True) -> requests.Response:
        body = {**data, "csrf": self.csrf} if csrf else data
        return self.http.post(f"{self.base}{path}", data=body, timeout=30)
