"""Staff decisions as training data: every category a person decides for a case is kept.

`record_staff_label` is the one place a label is written. It is called wherever a person states
a case's category: 派单 from the manual queue and 改派 (`moves.move_case` with a category, from
the console and the API), a correction (`correct_category`, console and API), and a category
chosen when the case is filed (`intake.file_report`: staff drafting a case in the console, a
citizen's category button in the chat). The label keeps the text the model classified and the
model's own answer (version, category, confidence, from the case's routing decision) beside the
person's, so retraining (`crm_backend.dispatch.learning`) learns from it and the versions page
measures each model against it.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_backend.dispatch.classifier import CATEGORIES
from crm_backend.errors import InvalidInput, NotFound
from crm_backend.models import CaseEvent, RoutingDecision, ServiceCase, StaffLabel, utcnow
from crm_backend.services import audit

if TYPE_CHECKING:  # moves records labels through this module
    from crm_backend.services.moves import Actor

_CHANNELS = {"staff": "console", "api": "api", "system": "bot"}


class LabelDecision(StrEnum):
    """What the person was doing when they decided the category."""

    DISPATCH = "dispatch"  # 派单 from the manual queue (or after 退回)
    REASSIGN = "reassign"  # 改派
    CORRECTION = "correction"  # 更正分类
    FILING = "filing"  # the category chosen when the case was filed


def channel_of(actor: Actor) -> str:
    """Where the decision came from: ``console`` (staff), ``api`` (an API client), ``bot`` (the chat)."""
    return _CHANNELS[actor.kind.value]


def check_category(category: str) -> str:
    """The category, if it is one of `CATEGORIES`.

    Raises:
        InvalidInput: it is not.
    """
    if category not in CATEGORIES:
        raise InvalidInput("bad_category", f"分类须为：{'、'.join(CATEGORIES)}")
    return category


async def record_staff_label(
    session: AsyncSession,
    actor: Actor,
    case: ServiceCase,
    category: str,
    decision: LabelDecision,
    *,
    decided: RoutingDecision | None = None,
    now: datetime | None = None,
) -> StaffLabel:
    """Keep the category a person decided for `case`, beside the model's answer, in the caller's transaction.

    Args:
        actor: who decided (the chat's own actor, ``bot``, for a citizen's category button).
        category: the category the person decided.
        decision: what they were doing.
        decided: the routing decision that holds the model's answer (default: the case's latest).
        now: when (default: the clock).

    Raises:
        InvalidInput: `category` is not one of `CATEGORIES`.
    """
    check_category(category)
    if decided is None:
        decided = await session.scalar(
            select(RoutingDecision)
            .where(RoutingDecision.case_id == case.id)
            .order_by(RoutingDecision.id.desc())
            .limit(1)
        )
    model_category: str | None = None
    model_confidence: float | None = None
    if decided is not None and decided.probabilities:
        # The model's own answer (the decision's category is the chosen one when a category was chosen).
        model_category, model_confidence = max(decided.probabilities.items(), key=lambda item: item[1])
    label = StaffLabel(
        case_id=case.id,
        text=case.description,
        model_version=decided.model_version if decided is not None else None,
        model_category=model_category,
        model_confidence=model_confidence,
        staff_category=category,
        decision=decision.value,
        channel=channel_of(actor),
        actor=actor.audit_name[:64],
        actor_id=actor.user.id if actor.user is not None else None,
        created_at=now or utcnow(),
    )
    session.add(label)
    return label


async def correct_category(session: AsyncSession, actor: Actor, case: ServiceCase, category: str) -> bool:
    """更正分类: a person puts right a case's category; not a status move.

    The timeline and the audit log say what it was and what it became, and the label is kept.
    Returns False when the case already had this category (nothing is written).

    Raises:
        InvalidInput: the category is not one of `CATEGORIES`.
        NotFound: an agent correcting another department's case.
    """
    check_category(category)
    if not actor.may_touch(case):
        raise NotFound("case")
    if case.category == category:
        return False
    change = f"{case.category or '无'} → {category}"
    session.add(
        CaseEvent(
            case_id=case.id,
            from_status=case.status,
            to_status=case.status,
            kind="category",
            note=f"更正分类：{change}",
            actor=actor.name[:64],
            actor_id=actor.user.id if actor.user is not None else None,
        )
    )
    case.category = category
    audit.record(
        session, actor.user, "case.category", case.case_number, change, address=actor.address, actor_name=actor.name
    )
    await record_staff_label(session, actor, case, category, LabelDecision.CORRECTION)
    return True
