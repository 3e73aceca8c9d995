"""Background work that runs every few seconds inside a process, and its stopping.

The 回访 loop, the engine replay and the hot-issue ranking each run one pass at an interval;
a pass that fails (a database blip, an engine restart) is logged and the next one still runs.
With several app processes each such job runs in one of them at a time: a pass runs only in
the process holding the job's lease (`crm_backend.shared.Leases`), which keeps it from one pass
to the next; another process takes over within `LEASE_MARGIN_SECONDS` past the interval of the
holder's death (at once if it stopped cleanly).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from crm_backend.shared import Leases

logger = logging.getLogger(__name__)

LEASE_MARGIN_SECONDS = 30.0  # a job's lease outlives its interval by this much


async def every(
    interval_seconds: float,
    run_once: Callable[[], Awaitable[object]],
    what: str,
    *,
    leases: Leases | None = None,
    lease: str = "",
) -> None:
    """Run `run_once` now and then every `interval_seconds`, forever; a failed pass is logged as `what`.

    Given `leases`, a pass runs only while this process holds the lease named `lease` (or `what`).
    """
    while True:
        try:
            if leases is None:
                await run_once()
            else:
                async with leases.hold(lease or what, interval_seconds + LEASE_MARGIN_SECONDS) as held:
                    if held:
                        await run_once()
                    else:
                        logger.debug("%s: another process holds the lease", what)
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
