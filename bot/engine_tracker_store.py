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

* each conversation's tracker is kept in memory after its turn is saved (`TrackerCache`), and the
  next turn reuses it when the store still holds exactly what was saved: one aggregate query
  (the session's largest event id and its number of events) instead of reading, decrypting,
  parsing and replaying every event of the session, and no count before the save. A tracker
  another engine wrote to, one whose rows were deleted (erasure, retention) or whose turn failed
  is read from the database again.

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
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from rasa.core.tracker_store import SQLTrackerStore, create_engine_kwargs
from rasa.shared.core.events import Event, SessionStarted
from rasa.shared.core.trackers import DialogueStateTracker
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm.attributes import set_committed_value

from crm_backend.crypto import KeyRing, is_encrypted

logger = logging.getLogger(__name__)

RETRY_SECONDS = 6.0  # how long a read or write is tried again while the database is away
RETRY_PAUSE_SECONDS = 0.25
EVENT_DATA_PLACE = "events.data"  # the associated data of an encrypted event (crm_backend.crypto)
CACHE_SIZE = 1000  # conversations whose tracker is kept between turns (least recently used go first)
CACHE_IDLE_SECONDS = 600.0  # a conversation quiet for longer is read from the database again


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


# What identifies the stored state of a conversation's latest session: its largest event id and its
# number of events. Any write or delete by anyone else changes one of them.
Marker = tuple[int | None, int]


@dataclass
class Held:
    """A conversation's tracker kept between turns, and the stored rows it was built from."""

    tracker: DialogueStateTracker
    marker: Marker  # of the rows the tracker holds: `marker[1]` of its events are stored
    used_at: float
    lent: bool = False  # handed to a turn: until that turn saves it, it is not what the store holds


class TrackerCache:
    """Trackers of recent conversations, each lent to one turn at a time.

    A tracker is put here only by the save of the turn that held it, and handed out only when the
    store's marker still equals the one it was saved with; a lent tracker is never lent again
    (its turn may have changed it and failed), so a second reader gets a fresh one.
    """

    def __init__(self, size: int = CACHE_SIZE, idle_seconds: float = CACHE_IDLE_SECONDS) -> None:
        self._size = size
        self._idle_seconds = idle_seconds
        self._held: OrderedDict[str, Held] = OrderedDict()

    def wanted(self, sender_id: str) -> Held | None:
        """The tracker kept for `sender_id` if a turn may have it (its marker still to be checked)."""
        held = self._held.get(sender_id)
        if held is None or held.lent:
            return None
        if time.monotonic() - held.used_at > self._idle_seconds:
            del self._held[sender_id]
            return None
        return held

    def lend(self, sender_id: str, tracker: DialogueStateTracker, marker: Marker) -> None:
        """`tracker` (built from rows with `marker`) goes to a turn; its save may return it."""
        self._put(sender_id, Held(tracker, marker, time.monotonic(), lent=True))

    def lent(self, tracker: DialogueStateTracker) -> Held | None:
        """What was lent as `tracker`, if this very object is the one lent for its conversation."""
        held = self._held.get(tracker.sender_id)
        return held if held is not None and held.lent and held.tracker is tracker else None

    def keep(self, tracker: DialogueStateTracker, marker: Marker) -> None:
        self._put(tracker.sender_id, Held(tracker, marker, time.monotonic()))

    def forget(self, sender_id: str) -> None:
        self._held.pop(sender_id, None)

    def _put(self, sender_id: str, held: Held) -> None:
        self._held[sender_id] = held
        self._held.move_to_end(sender_id)
        while len(self._held) > self._size:
            self._held.popitem(last=False)


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
        self.cache = TrackerCache()

    async def retrieve(self, sender_id: str) -> DialogueStateTracker | None:
        return await self._with_retries("read", lambda: self._retrieve_latest_session(sender_id))

    async def retrieve_full_tracker(self, conversation_id: str) -> DialogueStateTracker | None:
        return await self._with_retries(
            "read", lambda: super(AppTrackerStore, self).retrieve_full_tracker(conversation_id)
        )

    async def save(self, tracker: DialogueStateTracker) -> None:
        turn = CURRENT_TURN.get()
        if turn is not None and turn.failed:
            # This turn began from a tracker that could not be read: what it holds is not the conversation.
            raise TrackerStoreUnavailable(f"turn of {tracker.sender_id} not saved: its tracker was never read")
        await self._with_retries("write", lambda: self._save(tracker))

    async def _retrieve_latest_session(self, sender_id: str) -> DialogueStateTracker | None:
        with self.session_scope() as session:
            held = self.cache.wanted(sender_id)
            if held is not None and self._marker(session, sender_id) == held.marker:
                self.cache.lend(sender_id, held.tracker, held.marker)
                return held.tracker
            rows = self._event_query(session, sender_id, fetch_events_from_all_sessions=False).all()
        if not rows or not self.domain:
            self.cache.forget(sender_id)
            return None
        # As SQLTrackerStore._retrieve builds it, remembering which rows it came from.
        tracker = DialogueStateTracker.from_dict(sender_id, [json.loads(row.data) for row in rows], self.domain.slots)
        self.cache.lend(sender_id, tracker, (max(row.id for row in rows), len(rows)))
        return tracker

    async def _save(self, tracker: DialogueStateTracker) -> None:
        held = self.cache.lent(tracker)
        if held is None:  # not read through the cache (a new conversation, a retried save): Rasa counts what is stored
            self.cache.forget(tracker.sender_id)
            await super().save(tracker)
            return
        await self.stream_events(tracker)
        new_events = list(tracker.events)[held.marker[1] :]
        try:
            with self.session_scope() as session:
                rows = self._rows(tracker.sender_id, new_events)
                session.add_all(rows)
                session.flush()
                ids = [row.id for row in rows]
                session.commit()
        except Exception:
            self.cache.forget(tracker.sender_id)  # a retry counts what the store holds, as Rasa does
            raise
        if any(isinstance(event, SessionStarted) for event in new_events):
            # The store's latest session now begins at the new SessionStarted; this tracker holds more.
            self.cache.forget(tracker.sender_id)
            return
        largest = max(ids) if ids else held.marker[0]
        self.cache.keep(tracker, (largest, held.marker[1] + len(ids)))

    def _marker(self, session: Any, sender_id: str) -> Marker:
        """The largest event id and the number of events of the conversation's latest stored session."""
        query = self._event_query(session, sender_id, fetch_events_from_all_sessions=False).order_by(None)
        largest, count = query.with_entities(sa.func.max(self.SQLEvent.id), sa.func.count(self.SQLEvent.id)).one()
        return largest, count

    def _rows(self, sender_id: str, events: Iterable[Event]) -> list[Any]:
        """The rows SQLTrackerStore.save writes for `events`."""
        rows = []
        for event in events:
            data = event.as_dict()
            rows.append(
                self.SQLEvent(
                    sender_id=sender_id,
                    type_name=event.type_name,
                    timestamp=data.get("timestamp"),
                    intent_name=data.get("parse_data", {}).get("intent", {}).get("name"),
                    action_name=data.get("name"),
                    data=json.dumps(data),
                )
            )
        return rows

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
