"""``python -m tests.support.frozen_clock_app``: the app, its hand-off banner's clock fixed.

`FROZEN_NOW` (an ISO time with its offset) is the moment the web chat page is told staff
are on duty or not, so a browser test sees the on-duty and the off-duty page whatever the
hour it runs at. Everything else is the real app (`python -m app`).
"""

from __future__ import annotations

import os
import sys
from datetime import datetime

import bot.handoff_banner
from app.__main__ import main

if __name__ == "__main__":
    frozen = datetime.fromisoformat(os.environ["FROZEN_NOW"])
    bot.handoff_banner.utcnow = lambda: frozen
    sys.exit(main())
