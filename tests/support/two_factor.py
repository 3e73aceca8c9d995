"""The authenticator app of the test staff: TOTP secrets read off the enrolment page, codes computed.

A code is accepted once per time step (the app remembers the last step used), so signing in
the same member twice within 30 seconds takes the next step's code, which the app accepts one
step early; a third sign-in in the same step waits for the step to pass.
"""

from __future__ import annotations

import html
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import pyotp

SECRET = re.compile(r'<code id="totp-secret">([A-Z2-7]+)</code>')
ENROL_PATH = "/console/login/enrol"
CODE_PATH = "/console/login/code"


@dataclass
class _Enrolled:
    totp: pyotp.TOTP
    last_step: int


_enrolled: dict[str, _Enrolled] = {}


def secret_in(page: str) -> str:
    found = SECRET.search(page)
    assert found, "the enrolment page shows no secret"
    return html.unescape(found.group(1))


def first_code(username: str, secret: str) -> str:
    """The code that confirms an enrolment (now's); remembered as used."""
    totp = pyotp.TOTP(secret)
    step = totp.timecode(_now())
    _enrolled[username] = _Enrolled(totp, step)
    return totp.generate_otp(step)


def next_code(username: str) -> str:
    """A code of a step not used yet for this member (now's, or the next one's)."""
    enrolled = _enrolled[username]
    while True:
        current = enrolled.totp.timecode(_now())
        step = max(current, enrolled.last_step + 1)
        if step <= current + 1:
            enrolled.last_step = step
            return enrolled.totp.generate_otp(step)
        time.sleep(1)


def _now() -> datetime:
    return datetime.now(UTC)
