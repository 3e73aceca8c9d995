"""Tracker store loaded *by the Rasa engine* (Python 3.10 venv), not by the app.

Rasa's `SQLTrackerStore` with two changes, for a database that restarts under a running engine:

* pooled connections are checked before use (``pool_pre_ping``), and a query that fails because
  the database went away is tried again for a few seconds, so a PostgreSQL restart costs the
  turns in flight a short wait rather than an error;
* when the store still cannot be read or written, the turn is marked failed and the engine's
  channel (`bot.engine_channel.AppInput`) answers 503 instead of the bot's replies;
* each event's ``data`` (what the citizen wrote, the slots: phone, address, description) is
  stored encrypted with the app's key ring (`crm_backend.crypto`, keys from the environment),
  bound to ``events.data``, and decrypted as it is read. Rows stored plain before still read;
  ``python -m crm_backend rotate-key`` encrypts them. The other columns (sender id, event type,
  intent and action names, timestamp) hold no personal data and stay plain for Rasa's queries.
  The engine does not start without the keys.

The second matters because Rasa wraps every tracker store in `FailSafeTrackerStore`, which turns
a failed read into "no tracker" and a failed write into a write to memory: the engine would
answer from an empty conversation (a citizen half-way through a report is asked for the problem
again) and the turn would be forgotten. With 503 the app keeps the message as waiting for the
engine and replays it when the engine answers again (`bot.pipeline`); an action that must not run
twice keys itself on the app's message id (`crm_backend.services.intake.filing_key`). A turn whose
read failed never writes: its fresh tracker would land on top of the real one.

Keep this module free of app imports: it runs inside the engine's process.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from rasa.core.tracker_store import SQLTrackerStore, create_engine_kwargs
from rasa.shared.core.trackers import DialogueStateTracker
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm.attributes import set_committed_value

from crm_backend.crypto import KeyRing, is_encrypted

logger = logging.getLogger(__name__)

RETRY_SECONDS = 6.0  # how long a read or write is tried again while the database is away
RETRY_PAUSE_SECONDS = 0.25
EVENT_DATA_PLACE = "events.data"  # the associated data of an encrypted event (crm_backend.crypto)


@dataclass
class Turn:
    """One message's turn in the engine: whether the tracker store failed it."""

    failed: bool = False


# The turn being handled, set by the engine's channel around the message (one task per request).
CURRENT_TURN: contextvars.ContextVar[Turn | None] = contextvars.ContextVar("current_turn", default=None)


class TrackerStoreUnavailable(Exception):
    """The tracker store could not be read or written within `RETRY_SECONDS`."""


def _retryable(error: Exception) -> bool:
    """A failure that a reconnect may cure: the database went away or refused a connection."""
    return isinstance(error, OperationalError) or (isinstance(error, DBAPIError) and error.connection_invalidated)


class AppTrackerStore(SQLTrackerStore):
    """`SQLTrackerStore` that survives a database restart and never answers from a tracker it could not read."""

    engine: Any  # set by SQLTrackerStore.__init__, replaced here
    sessionmaker: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _encrypt_event_data(KeyRing.from_env())  # no keys: the engine does not start
        super().__init__(*args, **kwargs)
        url = self.engine.url
        self.engine.dispose()
        self.engine = sa.create_engine(url, pool_pre_ping=True, **create_engine_kwargs(url))
        self.sessionmaker = sa.orm.session.sessionmaker(bind=self.engine)

    async def retrieve(self, sender_id: str) -> DialogueStateTracker | None:
        return await self._with_retries("read", lambda: super(AppTrackerStore, self).retrieve(sender_id))

    async def retrieve_full_tracker(self, conversation_id: str) -> DialogueStateTracker | None:
        return await self._with_retries(
            "read", lambda: super(AppTrackerStore, self).retrieve_full_tracker(conversation_id)
        )

    async def save(self, tracker: DialogueStateTracker) -> None:
        turn = CURRENT_TURN.get()
        if turn is not None and turn.failed:
            # This turn began from a tracker that could not be read: what it holds is not the conversation.
            raise TrackerStoreUnavailable(f"turn of {tracker.sender_id} not saved: its tracker was never read")
        await self._with_retries("write", lambda: super(AppTrackerStore, self).save(tracker))

    async def _with_retries(self, what: str, attempt: Callable[[], Awaitable[Any]]) -> Any:
        deadline = time.monotonic() + RETRY_SECONDS
        while True:
            try:
                return await attempt()
            except Exception as error:
                if _retryable(error) and time.monotonic() < deadline:
                    logger.warning("tracker store %s failed (%s); trying again", what, type(error).__name__)
                    await asyncio.sleep(RETRY_PAUSE_SECONDS)
                    continue
                turn = CURRENT_TURN.get()
                if turn is not None:
                    turn.failed = True
                logger.error("tracker store %s failed: %s", what, type(error).__name__)
                raise TrackerStoreUnavailable(f"tracker store {what} failed") from error


_ring: KeyRing | None = None


def _encrypt_event_data(ring: KeyRing) -> None:
    """Encrypt `SQLEvent.data` as rows are written, decrypt it as they are loaded (hooks set once)."""
    global _ring
    first = _ring is None
    _ring = ring
    if not first:
        return
    event_class = SQLTrackerStore.SQLEvent
    sa.event.listen(event_class, "before_insert", _before_insert)
    sa.event.listen(event_class, "before_update", _before_insert)
    sa.event.listen(event_class, "load", _on_load)


def _before_insert(_mapper: Any, _connection: Any, target: Any) -> None:
    assert _ring is not None
    if target.data and not is_encrypted(target.data):
        target.data = _ring.encrypt(target.data, EVENT_DATA_PLACE)


def _on_load(target: Any, _context: Any) -> None:
    assert _ring is not None
    data = target.__dict__.get("data")
    if data and is_encrypted(data):  # a row stored before encryption reads as it is
        set_committed_value(target, "data", _ring.decrypt(data, EVENT_DATA_PLACE))
