"""The dispatch desk: understands a report (category, place, urgency, duplicates) and routes it.

Built once at start (`Dispatcher.load`) and handed to the actions; the model and the
gazetteer are loaded then, never on the message path.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession

from crm_backend.dispatch.classifier import CategoryClassifier, CategoryPrediction
from crm_backend.dispatch.duplicates import DuplicateMatch, find_duplicate
from crm_backend.dispatch.location import Gazetteer, LocationExtractor, LocationResult
from crm_backend.dispatch.routing import (
    DispatchPlan,
    apply_dispatch,
    is_urgent,
    load_urgent_keywords,
    plan_dispatch,
)
from crm_backend.models import RoutingDecision, ServiceCase

GAZETTEER_DIR = Path(__file__).resolve().parent / "data" / "gazetteer"


@dataclass(frozen=True)
class Understanding:
    """What the text of a report says, before any database is asked."""

    prediction: CategoryPrediction
    location: LocationResult
    urgent: bool


@dataclass(frozen=True)
class Preview:
    """Where a report would go, shown to the citizen before they confirm."""

    plan: DispatchPlan
    location: LocationResult
    duplicate: DuplicateMatch | None


class Dispatcher:
    """Category classifier, gazetteer and routing tables behind one call."""

    def __init__(
        self, classifier: CategoryClassifier, locator: LocationExtractor, urgent_keywords: tuple[str, ...]
    ) -> None:
        self.classifier = classifier
        self.locator = locator
        self.urgent_keywords = urgent_keywords

    @classmethod
    def load(cls, model_path: Path, gazetteer_dir: Path = GAZETTEER_DIR) -> Dispatcher:
        """Load the trained classifier and the gazetteer, and warm both up."""
        dispatcher = cls(
            CategoryClassifier.load(model_path),
            LocationExtractor(Gazetteer.load(gazetteer_dir)),
            load_urgent_keywords(),
        )
        dispatcher.understand("A1区人民路路灯坏了", "A1区人民路")
        return dispatcher

    @property
    def districts(self) -> list[str]:
        """The demo city's districts, offered as buttons when a place is unclear."""
        return self.locator.gazetteer.city_districts()

    def understand(self, description: str, location_text: str, district_hint: str | None = None) -> Understanding:
        """Classify and locate a report (CPU only, a few milliseconds)."""
        return Understanding(
            prediction=self.classifier.predict(description),
            location=self.locator.extract(f"{location_text} {description}", hint_district=district_hint),
            urgent=is_urgent(description, self.urgent_keywords),
        )

    def locate(self, text: str, district_hint: str | None = None) -> LocationResult:
        return self.locator.extract(text, hint_district=district_hint)

    async def preview(
        self,
        session: AsyncSession,
        *,
        description: str,
        location_text: str,
        district_hint: str | None = None,
        category_override: str | None = None,
        now: datetime | None = None,
    ) -> Preview:
        """The plan for a report and any open case it repeats."""
        understood = await asyncio.to_thread(self.understand, description, location_text, district_hint)
        district = understood.location.district
        plan = await plan_dispatch(
            session,
            prediction=understood.prediction,
            model_version=self.classifier.model_version,
            district=district,
            urgent=understood.urgent,
            now=now,
            category_override=category_override,
        )
        duplicate = await find_duplicate(session, description, district, now=now)
        return Preview(plan=plan, location=understood.location, duplicate=duplicate)

    async def route(self, session: AsyncSession, case: ServiceCase, preview: Preview) -> RoutingDecision:
        """Route a freshly filed case as previewed; a repeated report is linked to the open case."""
        if preview.duplicate is not None:
            case.duplicate_of_id = preview.duplicate.case_id
        return await apply_dispatch(session, case, preview.plan)
