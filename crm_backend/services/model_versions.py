"""The category model's versions in the database: registering, retraining behind the gate, rolling back, following.

Every trained category model is a `CategoryModelVersion` row with its artifact, so every app
process on every machine serves the same model: the one whose status is ``current``.

* At start the app registers the model ``bin/setup`` trained as the first version when the table
  is empty (`ensure_registered`; the app, not the migration, does it: migrations do not load
  model files, and the file is built after the database is migrated), then serves the current
  version (`ModelFollower.sync`).
* `retrain` (``python -m crm_backend.dispatch retrain``, and the weekly `RetrainJob`) trains a
  candidate on the shipped data plus the staff labels and promotes it only if the gate
  (`crm_backend.dispatch.learning.judge`) finds it not worse; refused candidates are kept as
  ``rejected`` with their figures.
* `rollback` (an admin, in the console) makes the version served before the current one current
  again; the rolled-back version is marked ``rejected``.
* Each app process checks the current version's id every ``CATEGORY_MODEL_CHECK_SECONDS``
  (`ModelFollower`) and loads it from the database when it changed: one indexed query per
  process per interval, and it works with or without Redis.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crm_backend import periodic
from crm_backend.dispatch.classifier import CategoryClassifier, LabelledMessage, ModelLoadError, model_version
from crm_backend.dispatch.deadlines import CHINA_TZ
from crm_backend.dispatch.folds import FOLDS, GATE_SEED
from crm_backend.dispatch.learning import StaffExample, accuracy, fold_figures, judge, split_examples
from crm_backend.errors import InvalidTransition
from crm_backend.models import CategoryModelVersion, StaffLabel, StaffUser, utcnow
from crm_backend.services import audit
from crm_backend.shared import Leases

logger = logging.getLogger(__name__)

CURRENT, CANDIDATE, RETIRED, REJECTED = "current", "candidate", "retired", "rejected"
STATUS_LABELS = {CURRENT: "在用", CANDIDATE: "候选", RETIRED: "已退役", REJECTED: "未采用"}
RETRAIN_ACTOR = "retrain"


def artifact_bytes(classifier: CategoryClassifier) -> bytes:
    """The model file `CategoryClassifier.save` writes, as bytes."""
    with tempfile.TemporaryDirectory() as directory:
        path = classifier.save(Path(directory) / "category_classifier.joblib")
        return path.read_bytes()


def classifier_from_artifact(data: bytes) -> CategoryClassifier:
    """A classifier from the bytes `artifact_bytes` gave (written to a temporary file, `CategoryClassifier.load`).

    Raises:
        ModelLoadError: the bytes are not a model of this code's format.
    """
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "category_classifier.joblib"
        path.write_bytes(data)
        return CategoryClassifier.load(path)


async def ensure_registered(
    sessions: async_sessionmaker[AsyncSession], classifier: CategoryClassifier, artifact: bytes, *, decided_by: str
) -> bool:
    """Register `classifier` as the current version when the table is empty; True if it did.

    Two processes starting together may both try: the second finds the row (or the key) taken.
    """
    async with sessions() as session:
        if await session.scalar(select(func.count(CategoryModelVersion.id))):
            return False
    now = utcnow()
    try:
        async with sessions.begin() as session:
            session.add(
                CategoryModelVersion(
                    id=classifier.model_version,
                    status=CURRENT,
                    shipped_rows=classifier.trained_rows,
                    staff_labels=0,
                    last_label_id=None,
                    figures={"source": "bundled", "trained_at": classifier.trained_at},
                    artifact=artifact,
                    created_at=now,
                    promoted_at=now,
                    decided_by=decided_by,
                    decided_at=now,
                )
            )
    except IntegrityError:
        return False
    logger.info("registered the bundled category model %s as the current version", classifier.model_version)
    return True


async def current_version_id(session: AsyncSession) -> str | None:
    return await session.scalar(select(CategoryModelVersion.id).where(CategoryModelVersion.status == CURRENT))


async def load_version(sessions: async_sessionmaker[AsyncSession], version_id: str) -> CategoryClassifier:
    """A stored version's classifier (its artifact read and loaded in a thread).

    Raises:
        ModelLoadError: no such version, or its artifact is not a model this code reads.
    """
    async with sessions() as session:
        data = await session.scalar(select(CategoryModelVersion.artifact).where(CategoryModelVersion.id == version_id))
    if data is None:
        raise ModelLoadError(f"no category model version {version_id}")
    return await asyncio.to_thread(classifier_from_artifact, data)


async def read_examples(session: AsyncSession) -> list[StaffExample]:
    """Every staff label that still has its text (erasure and retention blank it), oldest first."""
    rows = await session.execute(
        select(StaffLabel.id, StaffLabel.case_id, StaffLabel.text, StaffLabel.staff_category)
        .where(StaffLabel.text != "")
        .order_by(StaffLabel.id)
    )
    return [StaffExample(label_id, case_id, text, category) for label_id, case_id, text, category in rows.tuples()]


@dataclass(frozen=True)
class RetrainOutcome:
    """What a retraining did: the candidate's version, whether it was promoted, why, and the figures."""

    candidate: str
    current: str | None
    promoted: bool
    reason: str
    figures: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate,
            "current": self.current,
            "promoted": self.promoted,
            "reason": self.reason,
            "figures": self.figures,
        }


def _measure(
    classifier: CategoryClassifier,
    shipped: Sequence[LabelledMessage],
    extra: Sequence[LabelledMessage],
    held: Sequence[LabelledMessage],
    cached_folds: dict[str, Any] | None,
    seed: int,
    n_splits: int,
) -> dict[str, Any]:
    """A version's figures: accuracy on the held-back staff labels, and on the shipped folds (CPU)."""
    folds = cached_folds
    if folds is None or (folds.get("seed"), folds.get("folds")) != (seed, n_splits):
        folds = fold_figures(shipped, extra, seed=seed, n_splits=n_splits)
    staff = accuracy(classifier, held)
    return {"staff": {"accuracy": None if staff is None else round(staff, 4), "n": len(held)}, "folds": folds}


async def retrain(
    sessions: async_sessionmaker[AsyncSession],
    shipped: Sequence[LabelledMessage],
    *,
    seed: int = GATE_SEED,
    n_splits: int = FOLDS,
    decided_by: str = RETRAIN_ACTOR,
) -> RetrainOutcome | None:
    """Train a candidate on `shipped` plus the staff labels, judge it against the current version, keep both.

    Returns None when there is nothing new to train on (the candidate would be a version already
    stored). The training and measuring run in a thread; allow minutes on the real data.

    Raises:
        ModelLoadError: there is no current version (start the app once, or `ensure_registered`).
    """
    async with sessions() as session:
        examples = await read_examples(session)
        current = await session.scalar(select(CategoryModelVersion).where(CategoryModelVersion.status == CURRENT))
        if current is None:
            raise ModelLoadError("no current category model version: start the app once to register the bundled one")
        train, held = split_examples(examples)
        rows = [*shipped, *(example.message for example in train)]
        version = model_version(rows)
        if await session.get(CategoryModelVersion, version) is not None:
            logger.info("retrain: version %s is stored already; nothing new to train on", version)
            return None
        current_id, current_figures = current.id, dict(current.figures)
        current_last = current.last_label_id or 0
        current_artifact = await session.scalar(
            select(CategoryModelVersion.artifact).where(CategoryModelVersion.id == current_id)
        )
    assert current_artifact is not None
    held_rows = [example.message for example in held]
    current_extra = [example.message for example in train if example.label_id <= current_last]

    def work() -> tuple[CategoryClassifier, bytes, dict[str, Any], dict[str, Any]]:
        started = time.perf_counter()
        candidate = CategoryClassifier.train(rows)
        serving = classifier_from_artifact(current_artifact)
        new = _measure(candidate, shipped, [e.message for e in train], held_rows, None, seed, n_splits)
        old = _measure(serving, shipped, current_extra, held_rows, current_figures.get("folds"), seed, n_splits)
        new["seconds"] = round(time.perf_counter() - started, 1)
        return candidate, artifact_bytes(candidate), new, old

    candidate, artifact, new, old = await asyncio.to_thread(work)
    verdict = judge(new, old)
    now = utcnow()
    figures = {**new, "verdict": verdict.reason, "compared_with": current_id, "current": old}
    async with sessions.begin() as session:
        serving = await session.get(CategoryModelVersion, current_id)
        assert serving is not None
        serving.figures = {**serving.figures, "folds": old["folds"]}  # kept: measured once per recipe
        promote = verdict.promote and serving.status == CURRENT
        if promote:
            serving.status = RETIRED
            serving.decided_by, serving.decided_at = decided_by, now
            await session.flush()  # one current at a time
        session.add(
            CategoryModelVersion(
                id=candidate.model_version,
                status=CURRENT if promote else REJECTED,
                shipped_rows=len(shipped),
                staff_labels=len(train),
                last_label_id=max((example.label_id for example in train), default=None),
                figures=figures,
                artifact=artifact,
                created_at=now,
                promoted_at=now if promote else None,
                decided_by=decided_by,
                decided_at=now,
            )
        )
        audit.record(
            session,
            None,
            "model.promote" if promote else "model.reject",
            candidate.model_version,
            verdict.reason[:1900],
            actor_name=decided_by,
        )
    logger.info("retrain: %s %s (%s)", candidate.model_version, "promoted" if promote else "refused", verdict.reason)
    return RetrainOutcome(candidate.model_version, current_id, promote, verdict.reason, figures)


async def rollback(session: AsyncSession, user: StaffUser, *, address: str = "") -> tuple[str, str]:
    """Make the version served before the current one current again, in the caller's transaction.

    The rolled-back version is marked ``rejected`` (a later rollback does not bring it back);
    audited. Returns (rolled back, now current).

    Raises:
        InvalidTransition: there is no current version or none served before it.
    """
    current = await session.scalar(select(CategoryModelVersion).where(CategoryModelVersion.status == CURRENT))
    previous = await session.scalar(
        select(CategoryModelVersion)
        .where(CategoryModelVersion.status == RETIRED, CategoryModelVersion.promoted_at.is_not(None))
        .order_by(CategoryModelVersion.promoted_at.desc(), CategoryModelVersion.created_at.desc())
        .limit(1)
    )
    if current is None or previous is None:
        raise InvalidTransition("没有可以回滚到的上一个模型版本")
    now = utcnow()
    current.status = REJECTED
    current.decided_by, current.decided_at = user.username, now
    await session.flush()  # one current at a time
    previous.status = CURRENT
    previous.promoted_at = now
    previous.decided_by, previous.decided_at = user.username, now
    audit.record(session, user, "model.rollback", previous.id, f"{current.id} → {previous.id}", address=address)
    return current.id, previous.id


async def list_versions(session: AsyncSession) -> list[CategoryModelVersion]:
    """Every version, newest first (artifacts not loaded)."""
    rows = await session.scalars(select(CategoryModelVersion).order_by(CategoryModelVersion.created_at.desc()))
    return list(rows.all())


@dataclass(frozen=True)
class WeekAccuracy:
    """How often one version's category equalled the staff's, in one week (China time, from Monday)."""

    version: str
    week: date
    right: int
    total: int

    @property
    def accuracy(self) -> float:
        return self.right / self.total if self.total else 0.0


async def weekly_accuracy(session: AsyncSession, *, since: datetime | None = None) -> list[WeekAccuracy]:
    """Per version and week: staff labels where the model's category equalled the staff's, over all of them."""
    stmt = select(
        StaffLabel.model_version, StaffLabel.model_category, StaffLabel.staff_category, StaffLabel.created_at
    ).where(StaffLabel.model_version.is_not(None), StaffLabel.model_category.is_not(None))
    if since is not None:
        stmt = stmt.where(StaffLabel.created_at >= since)
    counts: dict[tuple[str, date], list[int]] = defaultdict(lambda: [0, 0])
    for version, model_category, staff_category, at in (await session.execute(stmt)).tuples():
        day = at.astimezone(CHINA_TZ).date()
        tally = counts[(str(version), day - timedelta(days=day.weekday()))]
        tally[0] += model_category == staff_category
        tally[1] += 1
    return [WeekAccuracy(version, week, right, total) for (version, week), (right, total) in sorted(counts.items())]


class ModelFollower:
    """Keeps this process's dispatcher on the current version: checks its id every interval, loads it when changed."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], desk: Any, *, interval_seconds: float) -> None:
        """
        Args:
            desk: the `Dispatcher` whose ``classifier`` is replaced (the attribute is swapped whole:
                a classification in flight finishes on the model it started with).
        """
        self._sessions = sessions
        self._desk = desk
        self._interval = interval_seconds
        self._task: asyncio.Task[None] | None = None
        self._refused: str | None = None

    async def sync(self) -> bool:
        """Serve the current version if this process does not yet; True if it switched."""
        async with self._sessions() as session:
            current = await current_version_id(session)
        if current is None or current == self._desk.classifier.model_version or current == self._refused:
            return False
        try:
            classifier = await load_version(self._sessions, current)
        except ModelLoadError:
            self._refused = current  # logged once; the process keeps the model it has
            logger.exception(
                "cannot load category model %s; still serving %s", current, self._desk.classifier.model_version
            )
            return False
        previous = self._desk.classifier.model_version
        self._desk.classifier = classifier
        logger.info("category model %s → %s", previous, current)
        return True

    def start(self) -> None:
        if self._interval > 0:
            self._task = asyncio.create_task(
                periodic.every(self._interval, self.sync, "category model follower"), name="model-follower"
            )

    async def stop(self) -> None:
        await periodic.cancel(self._task)


RETRAIN_CHECK_SECONDS = 3600.0


class RetrainJob:
    """Retrains weekly (``CATEGORY_RETRAIN_SECONDS``), in one app process at a time (the ``category-retrain`` lease).

    Every hour the holder checks whether the newest version is older than the period and staff
    labels have come since; if so it runs ``python -m crm_backend.dispatch retrain`` as a child
    process, so minutes of training never hold this process's event loop or its memory.
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        period_seconds: float,
        leases: Leases | None = None,
        check_seconds: float = RETRAIN_CHECK_SECONDS,
        command: Sequence[str] = (sys.executable, "-m", "crm_backend.dispatch", "retrain"),
    ) -> None:
        self._sessions = sessions
        self._period = period_seconds
        self._leases = leases
        self._check = check_seconds
        self._command = list(command)
        self._task: asyncio.Task[None] | None = None

    async def due(self, now: datetime | None = None) -> bool:
        """Whether a retraining is due: the newest version is older than the period and labels came since."""
        now = now or utcnow()
        async with self._sessions() as session:
            newest = await session.scalar(select(func.max(CategoryModelVersion.created_at)))
            trained_up_to = await session.scalar(select(func.max(CategoryModelVersion.last_label_id)))
            latest_label = await session.scalar(select(func.max(StaffLabel.id)).where(StaffLabel.text != ""))
        if newest is None or latest_label is None or latest_label <= (trained_up_to or 0):
            return False
        if newest.tzinfo is None:  # stored in UTC; an aggregate may come back without its zone
            newest = newest.replace(tzinfo=UTC)
        return now - newest >= timedelta(seconds=self._period)

    async def run_once(self) -> int | None:
        """Run the retraining command if it is due; its exit code (None when not due)."""
        if not await self.due():
            return None
        process = await asyncio.create_subprocess_exec(*self._command, env=dict(os.environ))
        code = await process.wait()
        if code:
            logger.error("retrain exited with %s", code)
        return code

    def start(self) -> None:
        if self._period > 0:
            self._task = asyncio.create_task(
                periodic.every(
                    self._check, self.run_once, "category retrain", leases=self._leases, lease="category-retrain"
                ),
                name="category-retrain",
            )

    async def stop(self) -> None:
        await periodic.cancel(self._task)
