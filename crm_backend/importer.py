"""Message-board history as historical cases: ``python -m crm_backend import-messages FILE.csv``.

A file of the provincial message board (``crm_backend/data/history/``, PROVENANCE.md there) in
either of its two formats, ``msg_id,user,title,time,detail,likes,dislikes`` or
``msg_id,user,title,time,detail,reply,reply_time``, becomes cases as if each message had come
in through a channel named ``board``:

* each board user is one citizen, reached (in principle) through a channel identity
  ``board:<user id>``; nobody can actually be reached there, so their notices are off and no
  notice is written for anything imported;
* each message is one case filed at the message's own time (China time; ``2019/2/28 11:25:05``
  and ``2019-07-21 10:29:36`` both read), its description the title, a line break and the body
  (`letter_text`), understood by the dispatch desk in batches (category, 12345 type, district
  and place, urgency) and routed as a chat case would be (派单 at the message's time, or the
  manual queue when the classifier is unsure);
* a message with a reply is taken to 办结 at the reply's time: a queued one is first dispatched
  to the department the console would suggest (as a supervisor does from the queue), then
  签收 and 开始办理 are recorded at the reply's time (the source says nothing of when the
  department took the case: no stage time is claimed that the source does not show, so only
  受理→办结 is a measured time for imported cases), the reply is put on the timeline as the
  department's reply, and 办结 carries it as the result. Every status move goes through
  `crm_backend.services.moves.move_case` with the historical time as its ``now``;
* likes and dislikes (support, for hot issues) and the title are kept in `ImportedMessage`,
  which also makes the import idempotent: a (board, msg_id) already imported is skipped, and
  marks the case as history: counted as past demand, never as anyone's work today (not in
  待派单, not overdue; `crm_backend.services.history`).

A file is checked whole before anything is written (`read_messages`): any bad row (no msg_id
or user, a time that is not one, no text, a msg_id twice, a reply without its time or before
its message) is reported with the line it starts on, and nothing is imported. The import of a
file is one transaction: all of it or none.
"""

from __future__ import annotations

import asyncio
import csv
import io
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_backend.dispatch.deadlines import CHINA_TZ
from crm_backend.dispatch.routing import DispatchPlan, apply_dispatch, plan_dispatch, suggested_departments
from crm_backend.errors import CrmError
from crm_backend.lifecycle import CaseAction
from crm_backend.models import (
    HISTORY_CHANNEL,
    CaseEvent,
    CategoryPolicy,
    ChannelIdentity,
    Citizen,
    Department,
    ImportedMessage,
    ServiceCase,
)
from crm_backend.services import audit
from crm_backend.services.intake import next_case_number
from crm_backend.services.moves import Actor, move_case, open_case

if TYPE_CHECKING:
    from crm_backend.dispatch.service import Dispatcher, Understanding

SOURCE_CHANNEL = HISTORY_CHANNEL
IMPORT_ACTOR = "历史导入"
REPLY_AUTHOR = "承办部门"  # the reply's author when the case has no department name
BATCH_SIZE = 256  # messages classified at once
_IN_CHUNK = 500  # values per SQL IN (...), well inside every database's limit

COMMON_COLUMNS = ("msg_id", "user", "title", "time", "detail")
SUPPORT_COLUMNS = ("likes", "dislikes")
REPLY_COLUMNS = ("reply", "reply_time")
# The source's formats (month, day and hour with or without a leading zero), and a date alone
# (one reply of the real files), read as midnight.
_TIME_FORMATS = ("%Y/%m/%d %H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y/%m/%d %H:%M", "%Y-%m-%d %H:%M", "%Y/%m/%d", "%Y-%m-%d")
MAX_MSG_ID_CHARS = 64
MAX_USER_CHARS = 128


def letter_text(title: str, detail: str) -> str:
    """A message-board letter as one message: its title, a line break, its body."""
    return f"{title.strip()}\n{detail.strip()}" if title.strip() else detail.strip()


@dataclass(frozen=True)
class RowProblem:
    """Why one row of a history file cannot be imported."""

    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


class HistoryFileError(CrmError):
    """A history file that cannot be imported; `problems` lists every bad row (none for a bad file)."""

    code = "bad_history_file"

    def __init__(self, message: str, problems: Sequence[RowProblem] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems)


@dataclass(frozen=True)
class BoardMessage:
    """One checked message of a history file.

    Attributes:
        line: the file line its record starts on (records may span lines).
        posted_at, reply_at: aware UTC datetimes.
        likes, dislikes: None in the replies format.
        reply, reply_at: None when the message has no reply.
    """

    line: int
    msg_id: str
    user: str
    title: str
    detail: str
    posted_at: datetime
    likes: int | None = None
    dislikes: int | None = None
    reply: str | None = None
    reply_at: datetime | None = None

    @property
    def text(self) -> str:
        """What the case's description is: `letter_text` of title and body."""
        return letter_text(self.title, self.detail)


def parse_time(raw: str) -> datetime | None:
    """A source time (China time) as an aware UTC datetime; None if it is not one."""
    text = raw.strip()
    for layout in _TIME_FORMATS:
        try:
            local = datetime.strptime(text, layout)  # China time, attached next
        except ValueError:
            continue
        return local.replace(tzinfo=CHINA_TZ).astimezone(UTC)
    return None


def _count(raw: str | None) -> int | None:
    text = (raw or "").strip()
    return int(text) if text.isascii() and text.isdigit() else None


def _records(content: str) -> Iterator[tuple[int, dict[str, str]]]:
    reader = csv.DictReader(io.StringIO(content, newline=""))
    start = 2
    for row in reader:
        yield start, row
        start = reader.line_num + 1


def parse_messages(content: str) -> list[BoardMessage]:
    """Check a whole history file's text and return its messages, or raise with every bad row.

    Raises:
        HistoryFileError: a header of neither format, no rows, or bad rows (each with its line).
    """
    header = next(csv.reader(io.StringIO(content, newline="")), [])
    columns = {name.strip() for name in header}
    if not set(COMMON_COLUMNS) <= columns or not (set(SUPPORT_COLUMNS) <= columns or set(REPLY_COLUMNS) <= columns):
        expected = " or ".join(",".join(COMMON_COLUMNS + extra) for extra in (SUPPORT_COLUMNS, REPLY_COLUMNS))
        raise HistoryFileError(f"the header needs the columns {expected}; it has {','.join(header) or 'nothing'}")
    with_replies = set(REPLY_COLUMNS) <= columns
    problems: list[RowProblem] = []
    messages: list[BoardMessage] = []
    seen: dict[str, int] = {}
    for line, raw in _records(content):
        row = {(key or "").strip(): (value or "") for key, value in raw.items()}
        found: list[str] = []
        msg_id, user = row["msg_id"].strip(), row["user"].strip()
        if not msg_id:
            found.append("no msg_id")
        elif len(msg_id) > MAX_MSG_ID_CHARS:
            found.append(f"msg_id longer than {MAX_MSG_ID_CHARS} characters")
        elif msg_id in seen:
            found.append(f"msg_id {msg_id} repeats line {seen[msg_id]}")
        else:
            seen[msg_id] = line
        if not user:
            found.append("no user")
        elif len(user) > MAX_USER_CHARS:
            found.append(f"user longer than {MAX_USER_CHARS} characters")
        posted_at = parse_time(row["time"])
        if posted_at is None:
            found.append(f"time {row['time'].strip()!r} is not a date and time")
        if not letter_text(row["title"], row["detail"]):
            found.append("no title and no text")
        likes = dislikes = None
        reply = reply_at = None
        if with_replies:
            reply = row["reply"].strip() or None
            raw_reply_time = row["reply_time"].strip()
            if reply is not None:
                reply_at = parse_time(raw_reply_time)
                if reply_at is None:
                    found.append(f"reply_time {raw_reply_time!r} is not a date and time")
                elif posted_at is not None and reply_at < posted_at:
                    found.append(f"reply_time {raw_reply_time} is before the message's time")
            elif raw_reply_time:
                found.append("a reply_time without a reply")
        else:
            likes, dislikes = _count(row["likes"]), _count(row["dislikes"])
            for name, value in (("likes", likes), ("dislikes", dislikes)):
                if value is None and row[name].strip():
                    found.append(f"{name} {row[name].strip()!r} is not a whole number >= 0")
        if found:
            problems.extend(RowProblem(line, reason) for reason in found)
            continue
        assert posted_at is not None
        messages.append(
            BoardMessage(
                line=line,
                msg_id=msg_id,
                user=user,
                title=row["title"].strip(),
                detail=row["detail"].strip(),
                posted_at=posted_at,
                likes=likes,
                dislikes=dislikes,
                reply=reply,
                reply_at=reply_at,
            )
        )
    if problems:
        raise HistoryFileError(f"{len(problems)} bad rows", problems)
    if not messages:
        raise HistoryFileError("the file has no rows")
    return messages


def read_messages(path: Path | str) -> list[BoardMessage]:
    """`parse_messages` of a UTF-8 file (a byte-order mark is allowed).

    Raises:
        HistoryFileError: unreadable, not UTF-8, or as `parse_messages`.
    """
    path = Path(path)
    try:
        content = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise HistoryFileError(f"{path} is not UTF-8 text (byte {error.start})") from error
    except OSError as error:
        raise HistoryFileError(f"cannot read {path}: {error.strerror or error}") from error
    return parse_messages(content)


@dataclass
class ImportSummary:
    """What an import did."""

    rows: int = 0
    new_cases: int = 0
    skipped: int = 0  # already imported (same board, same msg_id)
    replies: int = 0  # new cases taken to 办结 with their reply
    new_citizens: int = 0
    queued: int = 0  # new unanswered cases with an unsure category: no department (history stays out of 待派单)
    by_category: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


class _CaseNumbers:
    """Case numbers of the messages' own (Beijing) days, each day's sequence read once."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session
        self._last: dict[str, int] = {}

    async def next(self, at: datetime) -> str:
        day = at.astimezone(CHINA_TZ).strftime("%Y%m%d")
        if day not in self._last:
            first = await next_case_number(self._session, at)
            self._last[day] = int(first.split("-", 1)[1]) - 1
        self._last[day] += 1
        return f"{day}-{self._last[day]:04d}"


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def _imported_ids(session: AsyncSession, source: str, msg_ids: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for chunk in _chunks(msg_ids, _IN_CHUNK):
        stmt = select(ImportedMessage.msg_id).where(ImportedMessage.source == source, ImportedMessage.msg_id.in_(chunk))
        found.update((await session.scalars(stmt)).all())
    return found


async def _identities(
    session: AsyncSession, source: str, messages: Sequence[BoardMessage]
) -> tuple[dict[str, ChannelIdentity], int]:
    """Each user's identity on the board, made (with its citizen) for users not seen before; and how many were made."""
    first_seen: dict[str, datetime] = {}
    for message in messages:
        if message.user not in first_seen or message.posted_at < first_seen[message.user]:
            first_seen[message.user] = message.posted_at
    users = sorted(first_seen)
    identities: dict[str, ChannelIdentity] = {}
    for chunk in _chunks(users, _IN_CHUNK):
        stmt = select(ChannelIdentity).where(ChannelIdentity.channel == source, ChannelIdentity.external_id.in_(chunk))
        identities.update((identity.external_id, identity) for identity in (await session.scalars(stmt)).all())
    new_users = [user for user in users if user not in identities]
    # Nobody can be reached on the board: notices off, so nothing is ever written to them.
    citizens = [Citizen(notices_enabled=False, created_at=first_seen[user]) for user in new_users]
    session.add_all(citizens)
    await session.flush()
    made = [
        ChannelIdentity(channel=source, external_id=user, citizen_id=citizen.id, created_at=first_seen[user])
        for user, citizen in zip(new_users, citizens, strict=True)
    ]
    session.add_all(made)
    await session.flush()
    identities.update((identity.external_id, identity) for identity in made)
    return identities, len(made)


@dataclass
class _Filed:
    """A message filed as a case (already 已受理), waiting to be routed and, if answered, resolved."""

    message: BoardMessage
    case: ServiceCase
    plan: DispatchPlan


def _district(understanding: Understanding) -> str | None:
    """The district the gazetteer found, unless the text left it open between several."""
    location = understanding.location
    return location.district if not location.ambiguous else None


async def _file_batch(
    session: AsyncSession,
    desk: Dispatcher,
    identities: dict[str, ChannelIdentity],
    batch: Sequence[BoardMessage],
    understood: Sequence[Understanding],
    numbers: _CaseNumbers,
) -> list[_Filed]:
    """Open a case per message at the message's time, all with one flush; each with its routing plan."""
    actor = Actor.system(IMPORT_ACTOR)
    # Plans and numbers first: their queries would otherwise flush each new case on its own.
    plans = [
        await plan_dispatch(
            session,
            prediction=understanding.prediction,
            model_version=desk.classifier.model_version,
            district=_district(understanding),
            urgent=understanding.urgent,
            now=message.posted_at,
        )
        for message, understanding in zip(batch, understood, strict=True)
    ]
    case_numbers = [await numbers.next(message.posted_at) for message in batch]
    filed: list[_Filed] = []
    for message, understanding, plan, case_number in zip(batch, understood, plans, case_numbers, strict=True):
        identity = identities[message.user]
        case = ServiceCase(
            case_number=case_number,
            citizen_id=identity.citizen_id,
            identity_id=identity.id,
            description=message.text,
            location=(understanding.location.address or "")[:200],
            district=_district(understanding),
            contact_phone="",  # the board gave none
            category=plan.category,
            case_type=understanding.case_type.case_type if understanding.case_type is not None else None,
            urgent=plan.urgent,
            created_at=message.posted_at,
            updated_at=message.posted_at,
        )
        open_case(session, actor, case, now=message.posted_at)
        filed.append(_Filed(message, case, plan))
    await session.flush()
    return filed


async def _route_batch(session: AsyncSession, batch: Sequence[_Filed], source: str, source_file: str) -> None:
    """Route filed cases as chat cases would be and take the answered ones to 办结 (no query per case)."""
    decisions = []
    for filed in batch:
        decisions.append(await apply_dispatch(session, filed.case, filed.plan, now=filed.message.posted_at))
        message = filed.message
        session.add(
            ImportedMessage(
                source=source,
                msg_id=message.msg_id,
                case_id=filed.case.id,
                title=message.title,
                likes=message.likes,
                dislikes=message.dislikes,
                source_file=source_file[:200],
            )
        )
    # Answered, so someone sent it on: a queued case goes where the console suggests.
    suggested = await suggested_departments(
        session,
        [
            (filed.case, decision)
            for filed, decision in zip(batch, decisions, strict=True)
            if filed.plan.queued and filed.message.reply is not None
        ],
    )
    for filed in batch:
        if filed.message.reply is not None:
            await _resolve(session, filed, suggested.get(filed.case.id))


async def _resolve(session: AsyncSession, filed: _Filed, suggested_department_id: int | None) -> None:
    """An answered message's case, from where routing left it to 办结 with the reply as its result."""
    actor = Actor.system(IMPORT_ACTOR)
    message, case = filed.message, filed.case
    assert message.reply is not None and message.reply_at is not None
    if filed.plan.queued:
        if suggested_department_id is None:
            raise CrmError(f"msg_id {message.msg_id}: no active department to send category {case.category} to")
        await move_case(
            session,
            actor,
            case,
            CaseAction.DISPATCH,
            department_id=suggested_department_id,
            note="历史留言有答复：按建议部门派单",
            now=message.posted_at,
        )
    replied = message.reply_at
    await move_case(session, actor, case, CaseAction.ACCEPT, now=replied)
    await move_case(session, actor, case, CaseAction.START, now=replied)
    session.add(
        CaseEvent(
            case_id=case.id,
            from_status=case.status,
            to_status=case.status,
            kind="reply",
            note=message.reply,  # whole: reply quality is judged on it
            actor=(case.department or REPLY_AUTHOR)[:64],
            created_at=replied,
        )
    )
    await move_case(session, actor, case, CaseAction.RESOLVE, note=message.reply, now=replied)


async def import_messages(
    session: AsyncSession,
    desk: Dispatcher,
    messages: Sequence[BoardMessage],
    *,
    source_file: str,
    source: str = SOURCE_CHANNEL,
    batch_size: int = BATCH_SIZE,
) -> ImportSummary:
    """Import checked messages as historical cases, in the caller's transaction (commit: all or nothing).

    Messages of this board already imported are skipped. Routing data must be seeded.

    Args:
        desk: the dispatch desk whose models understand each message (in batches, off the loop).
        source_file: the file's name, kept on each `ImportedMessage`.
        source: the board, also its citizens' channel name.

    Raises:
        CrmError: a message with a reply whose category has no active department.
    """
    started = time.perf_counter()
    summary = ImportSummary(rows=len(messages))
    done = await _imported_ids(session, source, [message.msg_id for message in messages])
    fresh = [message for message in messages if message.msg_id not in done]
    summary.skipped = len(messages) - len(fresh)
    identities, summary.new_citizens = await _identities(session, source, fresh)
    # Held for the whole import, so routing finds them in the session instead of asking again.
    routing_tables: list[object] = [*(await session.scalars(select(Department))).all()]
    routing_tables += (await session.scalars(select(CategoryPolicy))).all()
    numbers = _CaseNumbers(session)
    categories: Counter[str] = Counter()
    for start in range(0, len(fresh), batch_size):
        batch = fresh[start : start + batch_size]
        understood = await asyncio.to_thread(desk.understand_many, [message.text for message in batch])
        filed_batch = await _file_batch(session, desk, identities, batch, understood, numbers)
        await _route_batch(session, filed_batch, source, source_file)
        for filed in filed_batch:
            categories[filed.plan.category] += 1
            summary.queued += filed.plan.queued and filed.message.reply is None
            summary.replies += filed.message.reply is not None
    await session.flush()
    del routing_tables
    summary.new_cases = len(fresh)
    summary.by_category = dict(categories.most_common())
    audit.record(
        session,
        None,
        "history.import",
        source_file,
        f"{summary.rows} rows: {summary.new_cases} new cases ({summary.replies} resolved with their reply), "
        f"{summary.skipped} already imported, {summary.new_citizens} new citizens",
        actor_name="cli",
    )
    summary.seconds = time.perf_counter() - started
    return summary
