"""Answering citizens' questions from the knowledge base, and what they say of the answers.

`action_answer_question` answers a question (or a follow-up about the entry just answered,
"那需要带什么材料？") and names the entry it comes from; when the match is not clear it also
offers the two nearest other entries, and with no good match it says so and offers to register
the question as a consultation case (「登记咨询」, answered by the responsible department on this
channel) or a person instead of guessing: a question is never left at 「换个说法」. A letter
(steered by the app's letter gate) that no entry answers starts the consultation intake at once. The fallback
action asks the same `KnowledgeAnswers` whether a message the NLU could not place is a clear
question after all.

"这个回答有帮助吗？": a yes (`action_accept_answer`) or a no (`action_reject_answer` in
`actions.handoff`) after an answer is counted against the entry for staff to review.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from rasa_sdk import Action, Tracker
from rasa_sdk.events import FollowupAction, SlotSet
from rasa_sdk.executor import CollectingDispatcher
from rasa_sdk.types import DomainDict
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from actions.common import entity_value, identity_and_conversation, latest_text, steered_letter
from actions.turns import last_bot_response
from crm_backend.knowledge.entries import EntryData
from crm_backend.knowledge.followups import (
    aspect_answer,
    aspect_of,
    names_no_subject,
    related_answer,
    without_aspect_words,
)
from crm_backend.knowledge.retrieval import Ranking, Verdict
from crm_backend.services.knowledge import KnowledgeBase, record_feedback, record_miss

logger = logging.getLogger(__name__)

Event = dict[str, Any]
ENTRY_SLOT = "kb_entry"
# The question no entry answered, kept for 「登记咨询」 (`actions.report.ActionStartReport`).
CONSULT_SLOT = "consult_question"
# No entry answers: say so and offer a consultation case (or a person), never a dead end.
NO_MATCH_RESPONSE = "utter_kb_offer_consultation"
# A letter that asks what no entry answers is filed as a consultation case straight away: it
# already says everything a 12345 operator would write down, so the intake starts at once.
LETTER_CONSULTATION_RESPONSE = "utter_kb_consultation_started"
# The bot's "这个回答有帮助吗？" turns: a yes or no right after them is feedback on the entry.
FEEDBACK_QUESTIONS = frozenset({"utter_kb_helpful", "utter_kb_helpful_unclear"})
# With no entry matching, a message the NLU ranked as off-topic this high (second to ask_faq)
# gets the out-of-scope reply rather than "no guide found, file a case?".
OFF_TOPIC_RUNNER_UP = 0.10
OFF_TOPIC_RESPONSES = {"out_of_scope": "utter_out_of_scope", "chitchat": "utter_chitchat"}
# "《…》里没有写明时限 … 指南中相关的线上：…" for a follow-up the entry has no answer to: the
# nearest part it covers, said plainly as such, never the whole guide again.
MISSING_ASPECT_RESPONSE = "utter_kb_followup_missing"


def entry_button(slug: str, title: str) -> dict[str, str]:
    return {"title": title, "payload": f'/ask_faq{{"{ENTRY_SLOT}": "{slug}"}}'}


def off_topic_reply(tracker: Tracker, *, runner_up: bool) -> str | None:
    """The off-topic response for a message the NLU's own ranking puts near off-topic, if any.

    With `runner_up`, off-topic (or chit-chat) must be ranked at `OFF_TOPIC_RUNNER_UP` or more
    anywhere in the ranking; without, it must be the best intent other than the fallback.
    """
    ranking = [
        ranked
        for ranked in (tracker.latest_message or {}).get("intent_ranking") or []
        if ranked.get("name") != "nlu_fallback"
    ]
    if not runner_up:
        ranking = ranking[:1]
    for ranked in ranking:
        name = ranked.get("name")
        if name in OFF_TOPIC_RESPONSES and (
            not runner_up or float(ranked.get("confidence") or 0) >= OFF_TOPIC_RUNNER_UP
        ):
            return OFF_TOPIC_RESPONSES[name]
    return None


class KnowledgeAnswers:
    """Says an entry's answer (whole, or the part a follow-up asks about) to the citizen."""

    def __init__(self, knowledge: KnowledgeBase) -> None:
        self.knowledge = knowledge

    def say_entry(
        self, dispatcher: CollectingDispatcher, entry: EntryData, others: Ranking | None = None
    ) -> list[Event]:
        dispatcher.utter_message(
            response="utter_kb_answer",
            kb_answer=entry.answer.strip(),
            kb_title=entry.title,
            kb_reviewed=entry.last_reviewed.isoformat(),
        )
        nearest = [match for match in (others.matches if others else ()) if match.slug != entry.slug][:2]
        if nearest:
            dispatcher.utter_message(
                response="utter_kb_helpful_unclear", buttons=[entry_button(m.slug, m.title) for m in nearest]
            )
        else:
            dispatcher.utter_message(response="utter_kb_helpful")
        return [SlotSet(ENTRY_SLOT, entry.slug)]

    def say_aspect(self, dispatcher: CollectingDispatcher, entry: EntryData, aspect: str) -> list[Event]:
        """The part of the entry a follow-up asks about; if it has none, the nearest part it has.

        Only an entry with neither (no labelled line near the aspect) is said whole.
        """
        reviewed = entry.last_reviewed.isoformat()
        if (text := aspect_answer(entry, aspect)) is not None:
            dispatcher.utter_message(
                response="utter_kb_followup",
                kb_title=entry.title,
                kb_aspect=aspect,
                kb_answer=text,
                kb_reviewed=reviewed,
            )
        elif (related := related_answer(entry, aspect)) is None:
            return self.say_entry(dispatcher, entry)
        else:
            dispatcher.utter_message(
                response=MISSING_ASPECT_RESPONSE,
                kb_title=entry.title,
                kb_aspect=aspect,
                kb_related=related[0],
                kb_answer=related[1],
                kb_reviewed=reviewed,
            )
        dispatcher.utter_message(response="utter_kb_helpful")
        return [SlotSet(ENTRY_SLOT, entry.slug)]

    async def record_miss(self, tracker: Tracker, ranking: Ranking) -> None:
        """Keep the question no entry answered, for staff to see what the knowledge base lacks."""
        async with self.knowledge.sessions.begin() as session:
            _, conversation = await identity_and_conversation(session, tracker)
            await record_miss(
                session, latest_text(tracker), ranking, conversation_id=conversation.id if conversation else None
            )

    async def read(self, tracker: Tracker) -> Reading:
        """What the latest message asks, against the entries and the entry last answered."""
        snapshot = await self.knowledge.current()
        text = latest_text(tracker)
        slug = tracker.get_slot(ENTRY_SLOT)
        aspect = aspect_of(text)
        # With an aspect word, only the rest of the question can name a service.
        ranking = await snapshot.rank(without_aspect_words(text) if aspect else text)
        current = snapshot.entry(str(slug)) if slug else None
        best = snapshot.entry(ranking.best.slug) if ranking.best else None
        return Reading(ranking, best, current, aspect, bool(aspect) and names_no_subject(text))

    async def answer_if_clear(self, dispatcher: CollectingDispatcher, tracker: Tracker) -> list[Event] | None:
        """Answer a message only if it is a follow-up or a clear question; None otherwise."""
        reading = await self.read(tracker)
        if reading.follow_up and reading.current and reading.aspect:
            return self.say_aspect(dispatcher, reading.current, reading.aspect)
        if reading.ranking.verdict is Verdict.CLEAR and reading.best is not None:
            return self.say_entry(dispatcher, reading.best)
        return None


@dataclass(frozen=True)
class Reading:
    """A question read against the knowledge base and the entry answered last."""

    ranking: Ranking
    best: EntryData | None  # the best-ranked entry
    current: EntryData | None  # the entry answered last
    aspect: str | None
    no_subject: bool  # asks about an aspect and names no service ("那要带什么材料？")

    @property
    def follow_up(self) -> bool:
        """About an aspect of the current entry: names no service, or names the current one."""
        if self.current is None or self.aspect is None:
            return False
        best = self.ranking.best
        named_current = (
            self.ranking.verdict is not Verdict.NO_MATCH and best is not None and best.slug == self.current.slug
        )
        return self.no_subject or named_current


class ActionAnswerQuestion(Action):
    """办事咨询: an answer from the knowledge base, a follow-up from the same entry, or an honest
    "not found" with the offer to register the question as a consultation case."""

    def __init__(self, answers: KnowledgeAnswers) -> None:
        self.answers = answers

    def name(self) -> str:
        return "action_answer_question"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[Event]:
        if chosen := entity_value(tracker, ENTRY_SLOT):
            entry = await self.answers.knowledge.entry(chosen)
            if entry is not None:
                return self.answers.say_entry(dispatcher, entry)
        text = latest_text(tracker)
        if not text.strip() or text.startswith("/"):  # the 办事咨询 button: no question yet
            dispatcher.utter_message(response="utter_kb_ask_question")
            return []
        reading = await self.answers.read(tracker)
        if reading.follow_up and reading.current and reading.aspect:
            return self.answers.say_aspect(dispatcher, reading.current, reading.aspect)
        ranking, best = reading.ranking, reading.best
        if ranking.verdict is Verdict.NO_MATCH or best is None:
            logger.info("no knowledge entry for a question (best %.2f)", ranking.best.score if ranking.best else 0.0)
            if off_topic := off_topic_reply(tracker, runner_up=True):
                dispatcher.utter_message(response=off_topic)
            elif reading.no_subject:  # "要带什么材料？" with no service named or answered before
                dispatcher.utter_message(response="utter_kb_which_service", kb_aspect=reading.aspect)
            else:
                await self.answers.record_miss(tracker, ranking)
                if steered_letter(tracker) == "ask_faq":
                    dispatcher.utter_message(response=LETTER_CONSULTATION_RESPONSE)
                    return [SlotSet(CONSULT_SLOT, text.strip()), FollowupAction("action_start_report")]
                dispatcher.utter_message(response=NO_MATCH_RESPONSE)
                return [SlotSet(CONSULT_SLOT, text.strip())]
            return []
        return self.answers.say_entry(dispatcher, best, ranking if ranking.verdict is Verdict.UNCLEAR else None)


def answered_question(tracker: Tracker) -> str:
    """The citizen's message that the entry being judged answered (empty for a button press)."""
    texts = [event.get("text") or "" for event in tracker.events if event.get("event") == "user"]
    question = texts[-2] if len(texts) >= 2 else ""
    return "" if question.startswith("/") else question


async def record_answer_feedback(sessions: async_sessionmaker[AsyncSession], tracker: Tracker, helpful: bool) -> None:
    """Count the citizen's verdict on the entry last answered (nothing if none is known)."""
    slug = tracker.get_slot(ENTRY_SLOT)
    if not slug:
        return
    async with sessions.begin() as session:
        _, conversation = await identity_and_conversation(session, tracker)
        recorded = await record_feedback(
            session,
            str(slug),
            helpful,
            question=answered_question(tracker),
            conversation_id=conversation.id if conversation else None,
        )
    if not recorded:
        logger.warning("feedback for unknown knowledge entry %s", slug)


class ActionAcceptAnswer(Action):
    """A "yes" outside a form: after "这个回答有帮助吗？" it is counted as helpful."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    def name(self) -> str:
        return "action_accept_answer"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[Event]:
        if last_bot_response(tracker) in FEEDBACK_QUESTIONS:
            await record_answer_feedback(self.sessions, tracker, helpful=True)
            dispatcher.utter_message(response="utter_kb_glad")
        else:
            dispatcher.utter_message(response="utter_anything_else")
        return []
