"""What a failed proof (case digits, link code) sets off beyond its refusal.

The failure that locks a case number warns the case's citizen on the channel the case came
from (through the case notices of `bot.followup`); failures city-wide past the hourly ceiling
leave an audit row and tell open consoles, where supervisors see a banner.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from bot.followup import CaseFollowup, CaseNotice
from crm_backend.console.feed import SECURITY_EVENT, LiveEvent, LiveFeed
from crm_backend.services.lookup import ProofFailure, note_proof_ceiling

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProofNotice:
    """What one failure set off, written with it and waiting for its commit."""

    case_notice: CaseNotice | None
    ceiling_reached: bool


class ProofAlarm:
    """The actions' `ProofWatcher`: `record` in the failure's transaction, `deliver` after its commit."""

    def __init__(self, followups: CaseFollowup, feed: LiveFeed, *, failures_per_hour: int) -> None:
        self.followups = followups
        self.feed = feed
        self.failures_per_hour = failures_per_hour

    async def record(self, session: AsyncSession, failure: ProofFailure) -> ProofNotice:
        """Warn the citizen of a case this failure locked; note the hourly ceiling if it was passed."""
        case_notice = None
        if failure.locked_case is not None:
            logger.warning("case %s locked against digit proofs", failure.locked_case.case_number)
            case_notice = await self.followups.record_proof_alert(session, failure.locked_case)
        ceiling = await note_proof_ceiling(session, failures_per_hour=self.failures_per_hour)
        if ceiling:
            logger.warning("failed proofs passed the ceiling of %d an hour", self.failures_per_hour)
        return ProofNotice(case_notice, ceiling)

    def deliver(self, notice: ProofNotice) -> None:
        """After the commit: push the citizen's warning, tell open consoles about the ceiling."""
        if notice.case_notice is not None:
            self.followups.deliver(notice.case_notice)
        if notice.ceiling_reached:
            self.feed.publish(LiveEvent(SECURITY_EVENT, 0, None))
