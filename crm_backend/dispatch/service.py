"""The dispatch desk: understands a report (category, place, urgency, duplicates) and routes it.

Built once at start (`Dispatcher.load`) and handed to the actions; the model and the
gazetteer are loaded then, never on the message path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession

from crm_backend.dispatch import case_type
from crm_backend.dispatch.case_type import CASE_TYPES, CaseTypePrediction, CaseTypeRecogniser
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
from crm_backend.errors import InvalidInput
from crm_backend.models import RoutingDecision, ServiceCase

GAZETTEER_DIR = Path(__file__).resolve().parent / "data" / "gazetteer"


@dataclass(frozen=True)
class Understanding:
    """What the text of a report says, before any database is asked."""

    prediction: CategoryPrediction
    location: LocationResult
    urgent: bool
    case_type: CaseTypePrediction | None = None


@dataclass(frozen=True)
class Preview:
    """Where a report would go, shown to the citizen before they confirm."""

    plan: DispatchPlan
    location: LocationResult
    duplicate: DuplicateMatch | None
    # The 12345 type the case will be filed with (the citizen's choice, else the recogniser's),
    # for the read-back 「类型：投诉」; None only when the desk has no recogniser.
    case_type: str | None = None
    case_type_confidence: float | None = None


class Dispatcher:
    """Category classifier, gazetteer and routing tables behind one call."""

    def __init__(
        self,
        classifier: CategoryClassifier,
        locator: LocationExtractor,
        urgent_keywords: tuple[str, ...],
        case_types: CaseTypeRecogniser | None = None,
    ) -> None:
        self.classifier = classifier
        self.locator = locator
        self.urgent_keywords = urgent_keywords
        self.case_types = case_types

    @classmethod
    def load(
        cls,
        model_path: Path,
        gazetteer_dir: Path = GAZETTEER_DIR,
        *,
        case_type_model_path: Path = case_type.DEFAULT_MODEL_PATH,
    ) -> Dispatcher:
        """Load the trained classifier, the case-type recogniser and the gazetteer, and warm them up.

        Raises:
            ModelLoadError: either model is missing or unreadable (``bin/setup`` trains both).
        """
        dispatcher = cls(
            CategoryClassifier.load(model_path),
            LocationExtractor(Gazetteer.load(gazetteer_dir)),
            load_urgent_keywords(),
            CaseTypeRecogniser.load(case_type_model_path),
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
            case_type=self.case_types.predict(description) if self.case_types is not None else None,
        )

    def understand_many(self, descriptions: Sequence[str]) -> list[Understanding]:
        """`understand` for many reports with no separate place text, each model run once on all of them.

        For bulk work (``import-messages``): the same answers as `understand(description, "")`,
        in a fraction of the time.
        """
        if not descriptions:
            return []
        predictions = self.classifier.predict_many(descriptions)
        kinds = self.case_types.predict_many(descriptions) if self.case_types is not None else None
        return [
            Understanding(
                prediction=prediction,
                location=self.locator.extract(f" {description}"),
                urgent=is_urgent(description, self.urgent_keywords),
                case_type=kinds[index] if kinds is not None else None,
            )
            for index, (description, prediction) in enumerate(zip(descriptions, predictions, strict=True))
        ]

    def locate(self, text: str, district_hint: str | None = None) -> LocationResult:
        return self.locator.extract(text, hint_district=district_hint)

    def place_of(self, text: str, district_hint: str | None = None) -> str | None:
        """The most specific place a text names (address, else street, else district), for hot issues."""
        found = self.locate(text, district_hint)
        return found.address or found.street or found.district

    async def preview(
        self,
        session: AsyncSession,
        *,
        description: str,
        location_text: str,
        district_hint: str | None = None,
        category_override: str | None = None,
        case_type_override: str | None = None,
        now: datetime | None = None,
    ) -> Preview:
        """The plan for a report, its 12345 type and any open case it repeats.

        Args:
            case_type_override: the type a citizen (or staff drafting the case) chose; taken as
                certain instead of the recogniser's.

        Raises:
            InvalidInput: `case_type_override` is not one of `CASE_TYPES`.
        """
        if case_type_override is not None and case_type_override not in CASE_TYPES:
            raise InvalidInput("bad_case_type", f"类型须为：{'、'.join(CASE_TYPES)}")
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
        if case_type_override is not None:
            kind, confidence = case_type_override, 1.0
        elif understood.case_type is not None:
            kind, confidence = understood.case_type.case_type, understood.case_type.confidence
        else:
            kind, confidence = None, None
        return Preview(
            plan=plan,
            location=understood.location,
            duplicate=duplicate,
            case_type=kind,
            case_type_confidence=confidence,
        )

    async def route(self, session: AsyncSession, case: ServiceCase, preview: Preview) -> RoutingDecision:
        """Route a freshly filed case as previewed, with its type; a repeated report is linked to the open case."""
        case.case_type = preview.case_type
        if preview.duplicate is not None:
            case.duplicate_of_id = preview.duplicate.case_id
        return await apply_dispatch(session, case, preview.plan)
