"""Follow-up questions about the entry just answered: "那需要带什么材料？", "在哪办？", "要钱吗？".

`aspect_of` finds what a question asks about from its wording; `aspect_answer` answers it from
the entry: its own short follow-up answer when it has one, else the line of the full answer
that covers the aspect ("申请材料：…"), else None. For an aspect the entry does not cover,
`related_answer` gives the nearest part it does cover (the 线上 answer for "要多久" when no
时限 is written), so the citizen is told what is there rather than read the whole guide again.
"""

from __future__ import annotations

import re

from crm_backend.knowledge.entries import EntryData
from crm_backend.knowledge.text import normalise

# Words that say which aspect a question is about, checked in this order (时限's "多长时间"
# before 时间's "时间"). Matched on the normalised question.
ASPECT_WORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "材料",
        ("材料", "资料", "带什么", "带啥", "带哪些", "要带", "需要带", "准备什么", "准备啥"),
    ),
    ("费用", ("多少钱", "收费", "费用", "要钱", "花钱", "免费", "交钱", "工本费", "几块钱", "价格", "收不收")),
    (
        "时限",
        (
            "多久",
            "多长时间",
            "几天",
            "几个工作日",
            "多少天",
            "时限",
            "多快",
            "什么时候能拿",
            "啥时候能拿",
            "什么时候到",
            "什么时候能办好",
            "啥时候能办好",
            "什么时候办好",
            "啥时候办好",
            "什么时候能好",
            "啥时候能好",
        ),
    ),
    (
        "时间",
        ("几点", "上班时间", "办公时间", "工作时间", "周末", "星期六", "星期天", "周六", "周日", "节假日", "中午"),
    ),
    ("地点", ("哪里", "哪儿", "哪个地方", "在哪", "去哪", "地点", "地址", "窗口", "哪个部门", "什么地方", "啥地方")),
    ("线上", ("网上", "线上", "手机上", "app", "小程序", "在线", "网办", "不用跑", "微信上", "支付宝")),
    ("条件", ("条件", "要求", "资格", "符合", "能不能办", "可以办吗", "能办吗", "够不够")),
)
# Labels of the full answer's lines ("申请材料：…") that cover each aspect.
ANSWER_LABELS: dict[str, tuple[str, ...]] = {
    "材料": ("材料",),
    "条件": ("条件", "对象", "情形"),
    "地点": ("地点", "渠道", "方式"),
    "时间": ("办理时间", "时间"),
    "费用": ("收费", "费用"),
    "时限": ("时限", "有效期"),
    "线上": ("线上", "网上"),
}
# For an aspect an entry does not cover, the aspects nearest to it, nearest first.
RELATED_ASPECTS: dict[str, tuple[str, ...]] = {
    "时限": ("时间", "线上", "地点"),
    "时间": ("时限", "地点"),
    "地点": ("线上", "时间"),
    "线上": ("地点",),
    "费用": ("地点",),
    "材料": ("条件", "地点"),
    "条件": ("材料", "地点"),
}
_LABELLED_LINE = re.compile(r"^\s*([^：:\n]{1,10})[：:]\s*(.+)$")


def aspect_of(question: str) -> str | None:
    """The aspect a question asks about, if its wording names one."""
    text = normalise(question).replace(" ", "")
    for aspect, words in ASPECT_WORDS:
        if any(word in text for word in words):
            return aspect
    return None


def without_aspect_words(question: str) -> str:
    """The question with every aspect word taken out: what is left names the service, if anything.

    "那需要带什么材料？" leaves next to nothing (a follow-up); "公积金提取要带什么材料" leaves
    "公积金提取" (a new question).
    """
    text = normalise(question)
    for _aspect, words in ASPECT_WORDS:
        for word in words:
            text = text.replace(word, " ")
    return text


# Words that carry no subject: what is left of "那请问需要去哪里办呢" once they and the aspect
# words are gone is nothing, so the question can only be about the entry just answered.
FILLER_WORDS: tuple[str, ...] = (
    "请问", "问一下", "问下", "想问", "那么", "那个", "这个", "那", "还要", "还得", "需要", "需", "要", "得",
    "去", "到", "办理", "办", "弄", "呢", "吗", "啊", "呀", "吧", "哦", "的", "了", "我", "想", "一下", "能",
    "可以", "可", "怎么", "什么", "啥", "哪些", "是", "不", "有", "在", "还", "都", "就", "也", "些",
)  # fmt: skip
MAX_SUBJECT_CHARS = 1


def names_no_subject(question: str) -> bool:
    """Whether the question, without its aspect and filler words, names nothing ("那要带啥？")."""
    text = without_aspect_words(question)
    for word in FILLER_WORDS:
        text = text.replace(word, "")
    return len(text.replace(" ", "")) <= MAX_SUBJECT_CHARS


def aspect_answer(entry: EntryData, aspect: str) -> str | None:
    """The part of the entry that answers a follow-up about `aspect`, or None."""
    if text := (entry.follow_ups.get(aspect) or "").strip():
        return text
    for line in entry.answer.splitlines():
        match = _LABELLED_LINE.match(line)
        if match and any(label in match.group(1) for label in ANSWER_LABELS.get(aspect, ())):
            return match.group(2).strip()
    return None


def related_answer(entry: EntryData, aspect: str) -> tuple[str, str] | None:
    """For an aspect the entry does not cover: the nearest aspect it does cover and its answer."""
    for other in RELATED_ASPECTS.get(aspect, ()):
        if text := aspect_answer(entry, other):
            return other, text
    return None
