"""Background work that runs every few seconds inside a process, and its stopping.

The 回访 loop, the engine replay and the hot-issue ranking each run one pass at an interval;
a pass that fails (a database blip, an engine restart) is logged and the next one still runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)


async def every(interval_seconds: float, run_once: Callable[[], Awaitable[object]], what: str) -> None:
    """Run `run_once` now and then every `interval_seconds`, forever; a failed pass is logged as `what`."""
    while True:
        try:
            await run_once()
        except Exception:  # the loop must survive a bad pass
            logger.exception("%s failed", what)
        await asyncio.sleep(interval_seconds)


async def cancel(task: asyncio.Task[None] | None) -> None:
    """Stop a background task and wait until it has stopped."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
