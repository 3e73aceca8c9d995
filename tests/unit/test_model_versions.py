"""The category model's versions: the bundled model registered first, retraining behind the gate,
rollback followed by every process. Trained on a small fixed slice of the shipped data (seconds)."""

from __future__ import annotations

from typing import Any, cast

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crm_backend.dispatch.classifier import (
    CATEGORIES,
    TRAINING_DATA_PATH,
    CategoryClassifier,
    LabelledMessage,
    read_labelled_csv,
)
from crm_backend.dispatch.learning import held_back
from crm_backend.dispatch.routing import seed_routing
from crm_backend.dispatch.service import Dispatcher
from crm_backend.errors import InvalidTransition
from crm_backend.models import AuditEntry, CategoryModelVersion, StaffUser
from crm_backend.services import model_versions, staff
from crm_backend.services.conversations import resolve_identity
from crm_backend.services.intake import Report, file_case
from crm_backend.services.moves import Actor
from crm_backend.services.staff_labels import LabelDecision, record_staff_label

Sessions = async_sessionmaker[AsyncSession]
SHIPPED_PER_CATEGORY = 30
LABELS_PER_CATEGORY = 20
FOLDS = 3


def slices() -> tuple[list[LabelledMessage], list[LabelledMessage]]:
    """(the 'shipped' rows: the first 30 of each category, the next 20 of each: what staff label)."""
    shipped: list[LabelledMessage] = []
    later: list[LabelledMessage] = []
    seen = dict.fromkeys(CATEGORIES, 0)
    for row in read_labelled_csv(TRAINING_DATA_PATH):
        seen[row.label] += 1
        if seen[row.label] <= SHIPPED_PER_CATEGORY:
            shipped.append(row)
        elif seen[row.label] <= SHIPPED_PER_CATEGORY + LABELS_PER_CATEGORY:
            later.append(row)
    return shipped, later


SHIPPED, LATER = slices()


def wrong(category: str) -> str:
    """Deliberately wrong: the next category."""
    return CATEGORIES[(CATEGORIES.index(category) + 1) % len(CATEGORIES)]


@pytest.fixture(scope="module")
def bundled() -> CategoryClassifier:
    return CategoryClassifier.train(SHIPPED)


@pytest.fixture
async def registered(sessions: Sessions, bundled: CategoryClassifier) -> Sessions:
    async with sessions.begin() as session:
        await seed_routing(session)
        await staff.create_user(session, username="zhao", display_name="赵", password="x" * 12, role="admin")
    assert await model_versions.ensure_registered(
        sessions, bundled, model_versions.artifact_bytes(bundled), decided_by="test"
    )
    return sessions


async def label_all(sessions: Sessions, rows: list[LabelledMessage], *, mislabel: bool) -> None:
    """File a case for each row and keep a staff correction (right, or deliberately wrong)."""
    async with sessions.begin() as session:
        identity = await resolve_identity(session, "web", "labeller")
        for row in rows:
            case = await file_case(
                session, identity, Report(description=row.text, location="A1区人民路", contact_phone="13812345678")
            )
            await session.flush()
            category = wrong(row.label) if mislabel else row.label
            await record_staff_label(session, Actor.system("bot"), case, category, LabelDecision.CORRECTION)


async def versions(sessions: Sessions) -> dict[str, str]:
    async with sessions() as session:
        return {version.id: version.status for version in await model_versions.list_versions(session)}


def test_the_held_back_slice_is_a_fixed_fifth_of_the_cases() -> None:
    chosen = [case_id for case_id in range(1, 1001) if held_back(case_id)]
    assert chosen == [case_id for case_id in range(1, 1001) if held_back(case_id)]  # no randomness
    assert 150 <= len(chosen) <= 250


async def test_the_bundled_model_is_the_first_version_and_registered_once(
    registered: Sessions, bundled: CategoryClassifier
) -> None:
    again = await model_versions.ensure_registered(
        registered, bundled, model_versions.artifact_bytes(bundled), decided_by="test"
    )
    assert not again
    assert await versions(registered) == {bundled.model_version: "current"}
    loaded = await model_versions.load_version(registered, bundled.model_version)
    assert loaded.predict(SHIPPED[0].text).category == bundled.predict(SHIPPED[0].text).category


async def test_the_gate_refuses_a_candidate_trained_on_wrong_staff_labels(
    registered: Sessions, bundled: CategoryClassifier
) -> None:
    await label_all(registered, LATER, mislabel=True)
    outcome = await model_versions.retrain(registered, SHIPPED, n_splits=FOLDS)
    assert outcome is not None and not outcome.promoted, outcome
    assert "shipped folds" in outcome.reason
    assert outcome.figures["folds"]["accuracy"] < outcome.figures["current"]["folds"]["accuracy"]
    # Both versions are kept, with their figures; the bundled one is still served.
    assert await versions(registered) == {bundled.model_version: "current", outcome.candidate: "rejected"}
    async with registered() as session:
        rejected = await session.get(CategoryModelVersion, outcome.candidate)
        assert rejected is not None and rejected.staff_labels > 0 and rejected.figures["verdict"] == outcome.reason
        assert await session.scalar(select(AuditEntry.action).where(AuditEntry.target == outcome.candidate)) == (
            "model.reject"
        )
    # Nothing new since: retraining again trains nothing.
    assert await model_versions.retrain(registered, SHIPPED, n_splits=FOLDS) is None


async def test_right_labels_are_promoted_and_every_process_follows_a_rollback(
    registered: Sessions, bundled: CategoryClassifier
) -> None:
    await label_all(registered, LATER, mislabel=False)
    outcome = await model_versions.retrain(registered, SHIPPED, n_splits=FOLDS)
    assert outcome is not None and outcome.promoted, outcome
    assert await versions(registered) == {bundled.model_version: "retired", outcome.candidate: "current"}

    # Two app processes' desks on one database, both serving the bundled model.
    none = cast(Any, None)
    desks = [Dispatcher(bundled, none, ()), Dispatcher(bundled, none, ())]
    followers = [model_versions.ModelFollower(registered, desk, interval_seconds=0) for desk in desks]
    assert [await follower.sync() for follower in followers] == [True, True]
    assert {desk.classifier.model_version for desk in desks} == {outcome.candidate}

    async with registered.begin() as session:
        admin = await session.scalar(select(StaffUser).where(StaffUser.username == "zhao"))
        assert admin is not None
        assert await model_versions.rollback(session, admin) == (outcome.candidate, bundled.model_version)
    assert [await follower.sync() for follower in followers] == [True, True]
    assert {desk.classifier.model_version for desk in desks} == {bundled.model_version}
    assert await versions(registered) == {bundled.model_version: "current", outcome.candidate: "rejected"}
    async with registered() as session:
        assert await session.scalar(select(AuditEntry.detail).where(AuditEntry.action == "model.rollback")) == (
            f"{outcome.candidate} → {bundled.model_version}"
        )
        # Nothing older to go back to.
        with pytest.raises(InvalidTransition):
            await model_versions.rollback(session, admin)
