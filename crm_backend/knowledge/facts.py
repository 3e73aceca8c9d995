"""A city's own facts (addresses, office hours, sites, phone numbers) in the knowledge base's answers.

Answers are written for any city: where a city's own fact belongs they carry a placeholder,
【本地办事地址】. The operator fills the facts in one file, ``city.yml`` (``CITY_FACTS_FILE``),
read once when the app starts. `CityFacts.render` is the one way an answer reaches a citizen:

* a filled fact takes its placeholder's place, as written;
* a fact not filled in (or a bracketed name that is no fact) is left out with the words that
  only make sense with it, so the citizen never sees 【 or 】:

  1. one alternative among several goes with its 或 / 、 ("可通过【本市政务服务网】或小程序" →
     "可通过小程序");
  2. a clause that is the placeholder alone goes with the comma before it ("派出所，【本地办事地址】。"
     → "派出所。");
  3. another clause naming it goes whole ("，供水燃气拨【…】"); when that clause opens its
     sentence (up to 。；！？), the sentence goes ("也可登录【本市政务服务网】在线办理。");
  4. a line left with nothing after its label ("办理时间：") goes, a numbered list closes the gap,
     and a heading whose whole list went goes too.

Staff keep the placeholders in the text they edit; only names in `FACTS` may be used.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from crm_backend.settings import SettingsError

if TYPE_CHECKING:
    from crm_backend.knowledge.entries import EntryData

logger = logging.getLogger(__name__)

# Every fact an answer may name, as its placeholder reads (city.yml has one key for each).
FACTS: tuple[str, ...] = (
    "本地办事地址",
    "本地办公时间",
    "本市政务服务网",
    "本市公积金中心App或网上服务大厅",
    "本市医保服务平台",
    "本市12345网站或小程序",
    "本市婚姻登记预约平台",
    "本市住房保障服务平台",
    "本市义务教育招生入学服务平台",
    "本市不动产登记网上办事平台",
    "本市住房租赁服务平台",
    "本市人才落户网上申报平台",
    "本市养犬登记窗口",
    "本地供水/燃气服务电话",
    "本地供水服务电话",
    "本地燃气服务电话",
    "本地殡仪馆服务电话",
    "本地医保咨询电话",
    "本地公积金服务热线",
    "本地检测站信息",
    "本地在线人工值班时间",
)
CITY_FILE_NAME = "city.yml"

_PLACEHOLDER = re.compile(r"【([^【】\n]*)】")
# A line's list number ("2. ") and label ("办理地点："): kept as they are, the rest is its body.
_NUMBER = re.compile(r"^(\s*)(\d+)([.、．]\s*)")
_LABEL = re.compile(r"^([^：:【】\n，。；]{1,12}[：:]\s*)")
_SENTENCE_ENDS = "。；！？"
_OPEN, _CLOSE = "（(“", "）)”"
# A missing fact that is one alternative among several: it goes with its 或 / 、.
_MISSING = "\x00"  # a missing placeholder while a line is worked on (never in stored text)
_ALTERNATIVE = re.compile(rf"[、或]{_MISSING}|{_MISSING}(?:、|或(?!者))")


class CityFactsError(SettingsError):
    """The city's facts file cannot be read; the app does not start."""


def placeholders(text: str) -> list[str]:
    """The names of the placeholders in a text, each once, in order of first use."""
    return list(dict.fromkeys(_PLACEHOLDER.findall(text)))


def unknown_facts(texts: Iterable[str]) -> list[str]:
    """Placeholders in the texts that name no fact of `FACTS` (a typo, say)."""
    return [name for name in placeholders("\n".join(texts)) if name not in FACTS]


@dataclass(frozen=True)
class CityFacts:
    """The facts the operator filled in (name → text); any other placeholder is left out."""

    values: Mapping[str, str]

    def missing(self, *texts: str) -> list[str]:
        """The placeholders the texts use that are not filled in, in order of first use."""
        return [name for name in placeholders("\n".join(texts)) if name not in self.values]

    def missing_in(self, entry: EntryData) -> list[str]:
        """The facts an entry's answer and follow-up answers use that are not filled in."""
        return self.missing(entry.answer, *entry.follow_ups.values())

    def render(self, text: str) -> str:
        """The text as a citizen reads it: facts filled in, missing ones left out (module docstring)."""
        if "【" not in text and "】" not in text:
            return text
        return "\n".join(_tidy_lists([(line, self._line(line)) for line in text.split("\n")]))

    def render_entry(self, entry: EntryData) -> EntryData:
        """The entry with its answer and follow-up answers rendered; a follow-up left empty is dropped."""
        follow_ups = {aspect: self.render(text) for aspect, text in entry.follow_ups.items()}
        return dataclasses.replace(
            entry,
            title=_strip_placeholders(entry.title),
            questions=tuple(_strip_placeholders(q) for q in entry.questions),
            answer=self.render(entry.answer),
            follow_ups={aspect: text for aspect, text in follow_ups.items() if text.strip()},
        )

    def _line(self, line: str) -> str | None:
        """One line rendered; None when nothing worth saying is left of it."""
        marked = _PLACEHOLDER.sub(lambda m: m.group(0) if m.group(1) in self.values else _MISSING, line)
        if _MISSING in marked:
            number = _NUMBER.match(marked)
            head = number.group(0) if number else ""
            label = _LABEL.match(marked[len(head) :])
            head += label.group(0) if label else ""
            body = _without_missing(marked[len(head) :])
            if not body.strip():
                return None
            marked = head + body
        return _PLACEHOLDER.sub(lambda m: self.values[m.group(1)], marked)


def _strip_placeholders(text: str) -> str:
    return _PLACEHOLDER.sub("", text)


def _without_missing(body: str) -> str:
    """A line's body without its missing facts (marked `_MISSING`) and the words that need them."""
    while (shorter := _ALTERNATIVE.sub("", body, count=1)) != body:
        body = shorter
    ending = body.rstrip()[-1:] if body.rstrip()[-1:] in _SENTENCE_ENDS else ""
    kept: list[str] = []
    for sentence in _split(body, _SENTENCE_ENDS):
        if _MISSING not in sentence:
            kept.append(sentence)
            continue
        end = sentence[-1] if sentence[-1:] in _SENTENCE_ENDS else ""
        clauses = _split(sentence[: len(sentence) - len(end)], "，,", keep=False)
        if _MISSING in clauses[0] and clauses[0].strip() != _MISSING:
            continue  # the sentence opens on a clause that needs the missing fact
        left = [clause for clause in clauses if _MISSING not in clause]
        if "".join(left).strip():
            kept.append("，".join(left) + end)
    text = "".join(kept).rstrip()
    if text and text[-1] in _SENTENCE_ENDS and text[-1] != ending:
        text = text[:-1] + ending
    return text


def _split(text: str, separators: str, *, keep: bool = True) -> list[str]:
    """Pieces of a text at separators outside brackets and quotes (each keeps its separator if `keep`)."""
    pieces, current, depth = [], "", 0
    for char in text:
        if char in _OPEN:
            depth += 1
        elif char in _CLOSE:
            depth = max(0, depth - 1)
        if char in separators and depth == 0:
            pieces.append(current + char if keep else current)
            current = ""
        else:
            current += char
    if current or not pieces:
        pieces.append(current)
    return pieces


def _tidy_lists(lines: list[tuple[str, str | None]]) -> list[str]:
    """Rendered lines (each with its original) without the dropped ones; a numbered list closes
    its gaps, and a heading ("查询方式：") whose whole list went goes too."""
    kept: list[str] = []
    dropped = 0  # items dropped so far from the numbered list this line is in
    for original, line in lines:
        numbered = _NUMBER.match(original) is not None
        if not numbered:
            dropped = 0
        if line is None:
            dropped += numbered
            continue
        number = _NUMBER.match(line)
        if number and dropped:
            line = f"{number.group(1)}{int(number.group(2)) - dropped}{number.group(3)}{line[number.end() :]}"
        kept.append(line)
    return [
        line
        for position, line in enumerate(kept)
        if not line.rstrip().endswith(("：", ":"))
        or (position + 1 < len(kept) and _NUMBER.match(kept[position + 1]) is not None)
    ]


def load_city_facts(path: Path) -> CityFacts:
    """The facts filled in the city file; an empty value means "not filled in".

    Raises:
        CityFactsError: the file is missing, is not YAML, is not a mapping of names to
            one-line texts, or a value holds a placeholder.
    """
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise CityFactsError(f"cannot read the city's facts file {path}: {error}") from error
    except yaml.YAMLError as error:
        raise CityFactsError(f"{path} is not valid YAML: {error}") from error
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise CityFactsError(f'{path} must map each fact\'s name to its text (本地办事地址: "…")')
    values: dict[str, str] = {}
    for name, value in raw.items():
        if value is None:
            value = ""
        if not isinstance(name, str) or not isinstance(value, str | int | float) or isinstance(value, bool):
            raise CityFactsError(f"{path}: {name!r} must be given as text, got {value!r}")
        text = str(value).strip()
        if "\n" in text or "【" in text or "】" in text:
            raise CityFactsError(f"{path}: {name!r} must be one line of text without 【 or 】")
        if name not in FACTS:
            known = "、".join(FACTS)
            logger.warning("%s: %r is no fact the knowledge base uses (known: %s); ignored", path, name, known)
            continue
        if text:
            values[name] = text
    logger.info("city facts from %s: %d of %d filled in", path, len(values), len(FACTS))
    return CityFacts(values)
