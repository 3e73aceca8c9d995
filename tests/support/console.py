"""Staff accounts in a running stack's database, and a signed-in console client."""

from __future__ import annotations

import re
import subprocess

import requests

from tests.support import two_factor
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
        self.password_step: requests.Response | None = None

    def login(self, username: str, password: str = PASSWORD) -> requests.Response:
        page = self.http.get(f"{self.base}/login", timeout=10)
        token = _CSRF.search(page.text)
        assert token, "the sign-in form has no CSRF field"
        response = self.http.post(
            f"{self.base}/login",
            data={"csrf": token.group(1), "username": username, "password": password},
            timeout=30,
        )
        self.password_step = response  # the password's answer (its redirect sets the session cookie)
        response = self._second_factor(username, response)
        found = _BODY_CSRF.search(response.text)
        self.csrf = found.group(1) if found else ""
        return response

    def _second_factor(self, username: str, response: requests.Response) -> requests.Response:
        """Enrol (secret read off the page) or give the code, as the member's authenticator app would."""
        if response.url.endswith(two_factor.ENROL_PATH):
            code = two_factor.first_code(username, two_factor.secret_in(response.text))
            shown = self._post_code(response, two_factor.ENROL_PATH, code)
            assert shown.status_code == 200, shown.text
            onward = re.search(r'id="continue" href="([^"]+)"', shown.text)
            assert onward, "no way on after enrolment"
            return self.http.get(f"{self.base.removesuffix('/console')}{onward.group(1)}", timeout=30)
        if response.url.endswith(two_factor.CODE_PATH):
            return self._post_code(response, two_factor.CODE_PATH, two_factor.next_code(username))
        return response

    def _post_code(self, page: requests.Response, path: str, code: str) -> requests.Response:
        token = _CSRF.search(page.text)
        assert token, "the sign-in step has no CSRF field"
        base = self.base.removesuffix("/console")
        return self.http.post(f"{base}{path}", data={"csrf": token.group(1), "code": code}, timeout=30)

    def get(self, path: str) -> requests.Response:
        return self.http.get(f"{self.base}{path}", timeout=30)

    def post(self, path: str, data: dict[str, str], *, csrf: bool = True) -> requests.Response:
        body = {**data, "csrf": self.csrf} if csrf else data
        return self.http.post(f"{self.base}{path}", data=body, timeout=30)
