"""Counts for operators: how much the service is used."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_backend.lifecycle import CaseStatus
from crm_backend.models import Citizen, Conversation, Message, ServiceCase


async def collect_stats(session: AsyncSession) -> dict[str, Any]:
    """Citizens, conversations, messages, and cases by status (every status listed)."""

    async def count(model: Any) -> int:
        return (await session.scalar(select(func.count()).select_from(model))) or 0

    by_status = {status.value: 0 for status in CaseStatus}
    rows = await session.execute(select(ServiceCase.status, func.count()).group_by(ServiceCase.status))
    for status, n in rows.all():
        by_status[status] = n
    return {
        "citizens": await count(Citizen),
        "conversations": await count(Conversation),
        "messages": await count(Message),
        "cases": sum(by_status.values()),
        "cases_by_status": by_status,
    }
