"""The knowledge base in the database: first load, edits with their history, feedback, gaps, search.

Entries are filled from the data file once, into an empty table; after that the database is
the source and admins edit it in the console. Every save that changes something bumps the
entry's version, keeps the full entry in `KnowledgeEntryVersion` with who saved it and which
fields changed, and writes an audit row, all in the caller's transaction.

`KnowledgeBase` keeps the retrieval index of the active entries in memory and rebuilds it
(in a worker thread, about a second for a hundred entries) when the newest version id differs
from the one it was built from, so an edit made by any process is searched on the next
question.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import case, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crm_backend.errors import CrmError
from crm_backend.knowledge.entries import DATA_FILE, EntryData, load_file
from crm_backend.knowledge.facts import CityFacts
from crm_backend.knowledge.retrieval import IndexedEntry, KnowledgeIndex, Ranking
from crm_backend.memory import release_free_memory
from crm_backend.models import (
    KnowledgeEntry,
    KnowledgeEntryVersion,
    KnowledgeFeedback,
    KnowledgeMiss,
    StaffUser,
    utcnow,
)
from crm_backend.services import audit

SEED_AUTHOR = "数据文件"
MAX_FEEDBACK_QUESTION = 500


class EntryConflict(CrmError):
    """Someone saved the entry since the editor opened it (their version is not the current one)."""

    code = "entry_conflict"


class SlugTaken(CrmError):
    code = "slug_taken"


def entry_data(entry: KnowledgeEntry) -> EntryData:
    """The editable fields of a stored entry."""
    return EntryData(
        slug=entry.slug,
        title=entry.title,
        category=entry.category,
        department=entry.department,
        questions=tuple(entry.questions),
        answer=entry.answer,
        follow_ups=dict(entry.follow_ups),
        last_reviewed=entry.last_reviewed,
        active=entry.active,
    )


def _apply(entry: KnowledgeEntry, data: EntryData) -> None:
    entry.slug = data.slug
    entry.title = data.title
    entry.category = data.category
    entry.department = data.department
    entry.questions = list(data.questions)
    entry.answer = data.answer
    entry.follow_ups = dict(data.follow_ups)
    entry.last_reviewed = data.last_reviewed
    entry.active = data.active


def _version(
    entry: KnowledgeEntry, data: EntryData, changed: list[str], actor: StaffUser | None
) -> KnowledgeEntryVersion:
    return KnowledgeEntryVersion(
        entry_id=entry.id,
        version=entry.version,
        snapshot=data.snapshot(),
        changed_fields=changed,
        changed_by_id=actor.id if actor else None,
        changed_by=(actor.display_name if actor else SEED_AUTHOR)[:64],
        changed_at=entry.updated_at,
    )


async def seed_knowledge(session: AsyncSession, path: Path = DATA_FILE) -> bool:
    """Load the data file into an empty knowledge base. False (and nothing done) if it had entries."""
    if await session.scalar(select(func.count(KnowledgeEntry.id))):
        return False
    for data in load_file(path):
        entry = KnowledgeEntry(version=1, updated_at=utcnow())
        _apply(entry, data)
        session.add(entry)
        await session.flush()
        session.add(_version(entry, data, list(data.snapshot()), None))
    return True


async def seed_knowledge_once(sessions: async_sessionmaker[AsyncSession], path: Path = DATA_FILE) -> bool:
    """`seed_knowledge` in its own transaction; a second process seeding at the same time loses quietly."""
    try:
        async with sessions.begin() as session:
            return await seed_knowledge(session, path)
    except IntegrityError:
        return False


async def create_entry(
    session: AsyncSession, data: EntryData, actor: StaffUser, *, address: str = ""
) -> KnowledgeEntry:
    """A new entry (version 1). Raises InvalidEntry or SlugTaken."""
    data.checked()
    if await session.scalar(select(KnowledgeEntry.id).where(KnowledgeEntry.slug == data.slug)) is not None:
        raise SlugTaken(data.slug)
    entry = KnowledgeEntry(version=1, updated_at=utcnow(), updated_by_id=actor.id)
    _apply(entry, data)
    session.add(entry)
    await session.flush()
    session.add(_version(entry, data, list(data.snapshot()), actor))
    audit.record(session, actor, "knowledge.create", f"knowledge:{entry.slug}", data.title, address=address)
    return entry


async def update_entry(
    session: AsyncSession,
    entry: KnowledgeEntry,
    data: EntryData,
    actor: StaffUser,
    *,
    base_version: int,
    address: str = "",
) -> list[str]:
    """Save an edit made on version `base_version`; returns the changed fields (none: nothing saved).

    Raises:
        InvalidEntry: the new fields are not acceptable.
        EntryConflict: the entry was saved by someone else since `base_version`.
        SlugTaken: the new id belongs to another entry.
    """
    data.checked()
    if base_version != entry.version:
        raise EntryConflict(f"entry {entry.slug} is at version {entry.version}, edit was made on {base_version}")
    changed = data.changed_fields(entry_data(entry))
    if not changed:
        return []
    if "slug" in changed:
        clash = await session.scalar(select(KnowledgeEntry.id).where(KnowledgeEntry.slug == data.slug))
        if clash is not None:
            raise SlugTaken(data.slug)
    _apply(entry, data)
    entry.version += 1
    entry.updated_at = utcnow()
    entry.updated_by_id = actor.id
    session.add(_version(entry, data, changed, actor))
    audit.record(
        session,
        actor,
        "knowledge.update",
        f"knowledge:{entry.slug}",
        f"v{entry.version}: {', '.join(changed)}",
        address=address,
    )
    return changed


async def restore_version(
    session: AsyncSession,
    entry: KnowledgeEntry,
    version: int,
    actor: StaffUser,
    *,
    base_version: int,
    address: str = "",
) -> list[str]:
    """Make an earlier version current again (as a new version, so history is never rewritten)."""
    old = await session.scalar(
        select(KnowledgeEntryVersion).where(
            KnowledgeEntryVersion.entry_id == entry.id, KnowledgeEntryVersion.version == version
        )
    )
    if old is None:
        raise CrmError(f"entry {entry.slug} has no version {version}")
    return await update_entry(
        session, entry, EntryData.from_snapshot(old.snapshot), actor, base_version=base_version, address=address
    )


async def get_entry(session: AsyncSession, entry_id: int) -> KnowledgeEntry | None:
    return await session.get(KnowledgeEntry, entry_id)


async def entry_by_slug(session: AsyncSession, slug: str) -> KnowledgeEntry | None:
    return await session.scalar(select(KnowledgeEntry).where(KnowledgeEntry.slug == slug))


async def history(session: AsyncSession, entry: KnowledgeEntry) -> list[KnowledgeEntryVersion]:
    """Every saved version of an entry, newest first."""
    stmt = (
        select(KnowledgeEntryVersion)
        .where(KnowledgeEntryVersion.entry_id == entry.id)
        .order_by(KnowledgeEntryVersion.version.desc())
    )
    return list((await session.scalars(stmt)).all())


@dataclass(frozen=True)
class EntryRow:
    """An entry as the console lists it, with what citizens said of its answers."""

    entry: KnowledgeEntry
    helpful: int
    not_helpful: int
    missing_facts: tuple[str, ...] = ()  # city facts its answers name that are not filled in


async def list_entries(
    session: AsyncSession,
    *,
    search: str = "",
    worst_first: bool = False,
    facts: CityFacts | None = None,
    missing_only: bool = False,
) -> list[EntryRow]:
    """Every entry (active or not) with its feedback counts; `worst_first` sorts by not-helpful count.

    With `facts`, each row names the city facts its entry uses that are not filled in, and
    `missing_only` keeps only the entries that use one.
    """
    counts = (
        select(
            KnowledgeFeedback.entry_id,
            func.sum(case((KnowledgeFeedback.helpful.is_(True), 1), else_=0)).label("helpful"),
            func.count(KnowledgeFeedback.id).label("total"),
        )
        .group_by(KnowledgeFeedback.entry_id)
        .subquery()
    )
    stmt = select(KnowledgeEntry, counts.c.helpful, counts.c.total).outerjoin(
        counts, counts.c.entry_id == KnowledgeEntry.id
    )
    if search := search.strip():
        stmt = stmt.where(
            KnowledgeEntry.title.contains(search, autoescape=True)
            | KnowledgeEntry.slug.contains(search, autoescape=True)
        )
    rows = [
        EntryRow(
            entry,
            int(helpful or 0),
            int(total or 0) - int(helpful or 0),
            tuple(facts.missing_in(entry_data(entry))) if facts is not None else (),
        )
        for entry, helpful, total in (await session.execute(stmt)).all()
    ]
    if missing_only:
        rows = [row for row in rows if row.missing_facts]
    if worst_first:
        rows.sort(key=lambda row: (-row.not_helpful, row.entry.title))
    else:
        rows.sort(key=lambda row: (row.entry.category, row.entry.title))
    return rows


async def record_feedback(
    session: AsyncSession, slug: str, helpful: bool, *, question: str = "", conversation_id: int | None = None
) -> bool:
    """Count a citizen's "helpful or not" for the entry; False if the entry no longer exists."""
    entry_id = await session.scalar(select(KnowledgeEntry.id).where(KnowledgeEntry.slug == slug))
    if entry_id is None:
        return False
    session.add(
        KnowledgeFeedback(
            entry_id=entry_id,
            helpful=helpful,
            question=question[:MAX_FEEDBACK_QUESTION],
            conversation_id=conversation_id,
        )
    )
    return True


async def feedback_counts(session: AsyncSession, entry: KnowledgeEntry) -> tuple[int, int]:
    """How often citizens said the entry's answer helped, and how often not."""
    helpful, total = (
        await session.execute(
            select(
                func.coalesce(func.sum(case((KnowledgeFeedback.helpful.is_(True), 1), else_=0)), 0),
                func.count(KnowledgeFeedback.id),
            ).where(KnowledgeFeedback.entry_id == entry.id)
        )
    ).one()
    return int(helpful), int(total) - int(helpful)


async def recent_feedback(session: AsyncSession, entry: KnowledgeEntry, limit: int = 20) -> list[KnowledgeFeedback]:
    """The latest "not helpful" answers about an entry, with the question that was asked."""
    stmt = (
        select(KnowledgeFeedback)
        .where(KnowledgeFeedback.entry_id == entry.id, KnowledgeFeedback.helpful.is_(False))
        .order_by(KnowledgeFeedback.id.desc())
        .limit(limit)
    )
    return list((await session.scalars(stmt)).all())


async def record_miss(
    session: AsyncSession, question: str, ranking: Ranking, *, conversation_id: int | None = None
) -> KnowledgeMiss:
    """Keep a question no entry answered, with the nearest entry, for staff to fill the gap."""
    nearest = None
    if ranking.best is not None:
        nearest = await session.scalar(select(KnowledgeEntry.id).where(KnowledgeEntry.slug == ranking.best.slug))
    miss = KnowledgeMiss(
        question=question[:MAX_FEEDBACK_QUESTION],
        nearest_entry_id=nearest,
        evidence=ranking.evidence,
        conversation_id=conversation_id,
    )
    session.add(miss)
    return miss


@dataclass(frozen=True)
class MissRow:
    miss: KnowledgeMiss
    nearest: KnowledgeEntry | None


async def recent_misses(session: AsyncSession, limit: int = 100) -> list[MissRow]:
    """The latest questions no entry answered, newest first, with the entry nearest to each."""
    stmt = (
        select(KnowledgeMiss, KnowledgeEntry)
        .outerjoin(KnowledgeEntry, KnowledgeEntry.id == KnowledgeMiss.nearest_entry_id)
        .order_by(KnowledgeMiss.id.desc())
        .limit(max(1, min(limit, 500)))
    )
    return [MissRow(miss, entry) for miss, entry in (await session.execute(stmt)).all()]


@dataclass(frozen=True)
class KnowledgeSnapshot:
    """The active entries and their index as of one revision: what one answer works from."""

    index: KnowledgeIndex
    entries: Mapping[str, EntryData]

    async def rank(self, question: str, limit: int = 3) -> Ranking:
        """The best entries for a question (scored in a worker thread)."""
        return await asyncio.to_thread(self.index.rank, question, limit)

    def entry(self, slug: str) -> EntryData | None:
        return self.entries.get(slug)


class KnowledgeBase:
    """The app's view of the knowledge base: entries by id and a retrieval index, kept current.

    Its entries are as citizens read them: the city's facts filled in, the missing ones left
    out (`CityFacts.render`); with no facts given, none is filled in.
    """

    def __init__(self, sessions: async_sessionmaker[AsyncSession], facts: CityFacts | None = None) -> None:
        self.sessions = sessions
        self.facts = facts if facts is not None else CityFacts({})
        self._snapshot: KnowledgeSnapshot | None = None
        self._lock = asyncio.Lock()

    async def current(self) -> KnowledgeSnapshot:
        """The current snapshot: one query for the newest version id, a rebuild only when it moved."""
        async with self.sessions() as session:
            revision = await session.scalar(select(func.max(KnowledgeEntryVersion.id)))
        async with self._lock:
            if self._snapshot is None or self._snapshot.index.revision != revision:
                async with self.sessions() as session:
                    stored = await session.scalars(select(KnowledgeEntry).where(KnowledgeEntry.active.is_(True)))
                    entries = {entry.slug: self.facts.render_entry(entry_data(entry)) for entry in stored}
                index = await asyncio.to_thread(_build_index, list(entries.values()), revision)
                self._snapshot = KnowledgeSnapshot(index, entries)
            return self._snapshot

    async def rank(self, question: str, limit: int = 3) -> Ranking:
        """The best active entries for a question, as of now."""
        return await (await self.current()).rank(question, limit)

    async def entry(self, slug: str) -> EntryData | None:
        """An active entry's fields, as of now."""
        return (await self.current()).entry(slug)

    async def warm_up(self) -> None:
        """Build the index now rather than on the first question."""
        await self.rank("居住证怎么办理")


def _build_index(entries: Iterable[EntryData], revision: object) -> KnowledgeIndex:
    """The index of these entries; the memory its training freed goes back to the system."""
    index = KnowledgeIndex([IndexedEntry(entry.slug, entry.title, entry.questions) for entry in entries], revision)
    release_free_memory()
    return index
