"""Benchmark of the knowledge base and the out-of-scope path: retrieval per method, thresholds,
end-to-end answers through the real engine and app, off-topic handling, answer latency.

Run from the project root, after ``bin/setup``::

    .venv/bin/python -m benchmarks.kb_benchmark [--skip-response-selector] [--skip-stack] \
        [--out-dir results] > results/kb_benchmark.md

Markdown on stdout, progress on stderr, every figure in ``kb_benchmark.json`` in ``--out-dir``.

Data: the entries' own question variants and titles (``crm_backend/knowledge/data/entries.yml``)
are what every method indexes or trains on. ``benchmarks/data/kb_heldout.csv`` holds questions
written apart from them (colloquial, typos, pinyin initials; none equal to a variant after
normalising, which a unit test checks); ``benchmarks/data/off_topic.txt`` holds off-topic
(``oos``) and chit-chat (``chat``) messages. Neither file is used by any model or threshold.

What is measured:

1. **Retrieval per method** on the held-out questions (top-1: the first entry is the right
   one; top-3: it is among the first three), and by 6-fold cross-validation over the entries'
   own variants (fold k leaves out every entry's k-th variant and asks it). Methods: nearest
   variant by TF-IDF over characters (uni+bigrams), over jieba words, BM25 over jieba words and
   over characters (rank_bm25's Okapi), the two TF-IDF cosines averaged (what the shipped index
   uses as evidence); the shipped logistic regression over the variants
   (`crm_backend.knowledge.retrieval`); and Rasa's ResponseSelector (a retrieval intent per
   entry, trained in ``.venv-rasa`` by ``benchmarks/kb_response_selector.py`` on the same
   normalised texts, with the project's jieba and featurizers). All methods see the same
   normalised text (`crm_backend.knowledge.text.normalise`); nearest-variant methods score an
   entry by its best variant.
2. **Thresholds** of the shipped index: for the cross-validated variants, the evidence (best
   single-variant cosine) and the best entry's probability, right or wrong, against the
   evidence of the NLU's own out-of-scope and chit-chat training examples, on grids; and what
   the chosen thresholds do on held-out questions (answered clearly, unclearly with two
   alternatives, or "no match").
3. **End to end** (own engine and app on free ports, ``tests/support/stack.py``): every
   held-out question as the first message of a new REST conversation; right = the answer names
   the expected entry (「依据：《title》」). Every off-topic line likewise; handled = every reply
   is the out-of-scope or chit-chat reply (for chit-chat lines also a greeting, thanks, goodbye
   or "I am a bot"), the report or progress form never starts, and the case table has as many
   rows after all of them as before. Latency: the REST round trip of the held-out questions,
   and of a greeting (rule, no custom action) interleaved with them.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from benchmarks.run_benchmarks import (
    log,
    log_tail,
    machine_info,
    model_missing,
    summarize,
    table,
    temporary_stack,
    write_report,
)
from crm_backend.knowledge.entries import EntryData, load_file
from crm_backend.knowledge.retrieval import (
    CLEAR,
    NO_MATCH,
    IndexedEntry,
    KnowledgeIndex,
    Verdict,
    char_scorer,
    word_scorer,
    words,
)
from crm_backend.knowledge.text import normalise
from tests.support.stack import ROOT, Stack

DATA = ROOT / "benchmarks" / "data"
HELD_OUT = DATA / "kb_heldout.csv"
OFF_TOPIC = DATA / "off_topic.txt"
FOLDS = 6
GRID = [0.15, 0.2, 0.25, 0.3, 0.35, 0.4]
PROBABILITY_GRID = [0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5]
SOURCE_MARK = re.compile(r"依据：《(.+?)》")

Scores = Callable[[str], np.ndarray]


# --- retrieval methods ------------------------------------------------------------------------


def indexed_texts(entries: Sequence[EntryData]) -> tuple[list[str], np.ndarray]:
    texts: list[str] = []
    owners: list[int] = []
    for position, entry in enumerate(entries):
        for text in (entry.title, *entry.questions):
            if normalised := normalise(text):
                texts.append(normalised)
                owners.append(position)
    return texts, np.array(owners)


def per_entry(text_scores: Callable[[str], np.ndarray], owners: np.ndarray, n: int) -> Scores:
    def scores(question: str) -> np.ndarray:
        result = np.zeros(n)
        np.maximum.at(result, owners, text_scores(normalise(question)))
        return result

    return scores


def chars(text: str) -> list[str]:
    squeezed = text.replace(" ", "")
    return list(squeezed) + [squeezed[i : i + 2] for i in range(len(squeezed) - 1)]


def bm25(texts: list[str], tokens: Callable[[str], list[str]]) -> Callable[[str], np.ndarray]:
    from rank_bm25 import BM25Okapi

    model = BM25Okapi([tokens(text) for text in texts])
    return lambda question: np.asarray(model.get_scores(tokens(question)))


def method_factories() -> dict[str, Callable[[Sequence[EntryData]], Scores]]:
    def build(make: Callable[[list[str]], Callable[[str], np.ndarray]]) -> Callable[[Sequence[EntryData]], Scores]:
        def factory(entries: Sequence[EntryData]) -> Scores:
            texts, owners = indexed_texts(entries)
            return per_entry(make(texts), owners, len(entries))

        return factory

    def index(entries: Sequence[EntryData]) -> KnowledgeIndex:
        return KnowledgeIndex([IndexedEntry(e.slug, e.title, e.questions) for e in entries])

    return {
        "nearest variant: TF-IDF, characters": build(char_scorer),
        "nearest variant: TF-IDF, jieba words": build(word_scorer),
        "nearest variant: BM25, jieba words": build(lambda texts: bm25(texts, words)),
        "nearest variant: BM25, characters": build(lambda texts: bm25(texts, chars)),
        "nearest variant: TF-IDF characters + words (the evidence)": lambda entries: index(entries).similarities,
        "logistic regression over the variants (shipped)": lambda entries: index(entries).scores,
    }


def accuracy(scores: Scores, entries: Sequence[EntryData], questions: Sequence[tuple[str, str]]) -> dict[str, Any]:
    slugs = [entry.slug for entry in entries]
    first = top3 = 0
    started = time.perf_counter()
    for question, slug in questions:
        order = np.argsort(-scores(question), kind="stable")[:3]
        found = [slugs[i] for i in order]
        first += found[:1] == [slug]
        top3 += slug in found
    elapsed = time.perf_counter() - started
    n = len(questions)
    return {"top1": first / n, "top3": top3 / n, "n": n, "ms_per_question": round(elapsed / n * 1000, 3)}


def folds(entries: Sequence[EntryData]) -> list[tuple[list[EntryData], list[tuple[str, str]]]]:
    """Fold k: every entry without its k-th variant, and those variants as questions."""
    result = []
    for k in range(FOLDS):
        kept, asked = [], []
        for entry in entries:
            if k < len(entry.questions):
                asked.append((entry.questions[k], entry.slug))
            kept.append(EntryData(**{**entry.__dict__, "questions": entry.questions[:k] + entry.questions[k + 1 :]}))
        result.append((kept, asked))
    return result


def cross_validated(factory: Callable[[Sequence[EntryData]], Scores], entries: Sequence[EntryData]) -> dict[str, Any]:
    first = top3 = n = 0
    for kept, asked in folds(entries):
        result = accuracy(factory(kept), kept, asked)
        first += round(result["top1"] * result["n"])
        top3 += round(result["top3"] * result["n"])
        n += result["n"]
    return {"top1": first / n, "top3": top3 / n, "n": n}


def response_selector(entries: Sequence[EntryData], held_out: Sequence[tuple[str, str]]) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-kb-rs-"))
    try:
        train = {e.slug: [normalise(t) for t in (e.title, *e.questions) if normalise(t)] for e in entries}
        (workdir / "train.json").write_text(json.dumps(train, ensure_ascii=False), encoding="utf-8")
        test = [[normalise(q), slug] for q, slug in held_out]
        (workdir / "test.json").write_text(json.dumps(test, ensure_ascii=False), encoding="utf-8")
        done = subprocess.run(
            [
                str(ROOT / ".venv-rasa" / "bin" / "python"),
                str(ROOT / "benchmarks" / "kb_response_selector.py"),
                str(workdir),
            ],
            capture_output=True,
            text=True,
            check=False,
            env={"RASA_TELEMETRY_ENABLED": "false", "PATH": "/usr/bin:/bin"},
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"ResponseSelector run failed:\n{done.stderr[-3000:]}\n{log_tail(workdir / 'train.log', 30)}"
            )
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# --- thresholds -------------------------------------------------------------------------------


def nlu_examples(intent: str) -> list[str]:
    """The NLU training examples of an intent (entity annotations removed)."""
    found = []
    for path in sorted((ROOT / "nlu_data" / "nlu").glob("*.yml")):
        for block in yaml.safe_load(path.read_text(encoding="utf-8")).get("nlu", []):
            if block.get("intent") == intent:
                for line in str(block["examples"]).splitlines():
                    if line.strip().startswith("- "):
                        found.append(re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", line.strip()[2:]))
    return found


def thresholds(entries: Sequence[EntryData], held_out: Sequence[tuple[str, str]]) -> dict[str, Any]:
    positives = []  # (best probability, right?, evidence) of every cross-validated variant
    for kept, asked in folds(entries):
        index = KnowledgeIndex([IndexedEntry(e.slug, e.title, e.questions) for e in kept])
        for question, slug in asked:
            ranking = index.rank(question)
            best = ranking.best
            positives.append((best.score if best else 0.0, best is not None and best.slug == slug, ranking.evidence))
    index = KnowledgeIndex([IndexedEntry(e.slug, e.title, e.questions) for e in entries])
    negatives = np.array(
        [index.rank(text).evidence for text in nlu_examples("out_of_scope") + nlu_examples("chitchat")]
    )
    pos = np.array(positives, dtype=float)
    evidence_grid = []
    for t in GRID:
        above = pos[:, 2] >= t
        evidence_grid.append(
            {
                "threshold": t,
                "variants_kept": float(above.mean()),
                "right_among_dropped": float(pos[~above, 1].mean()) if (~above).any() else None,
                "off_topic_above": float((negatives >= t).mean()),
            }
        )
    probability_grid = []
    for t in PROBABILITY_GRID:
        clear = (pos[:, 0] >= t) & (pos[:, 2] >= NO_MATCH)
        probability_grid.append(
            {
                "threshold": t,
                "clear_share": float(clear.mean()),
                "right_among_clear": float(pos[clear, 1].mean()) if clear.any() else None,
            }
        )
    verdicts: Counter[str] = Counter()
    right: Counter[str] = Counter()
    for question, slug in held_out:
        ranking = index.rank(question)
        verdicts[ranking.verdict.value] += 1
        found = [m.slug for m in ranking.matches]
        if ranking.verdict is Verdict.CLEAR:
            right["clear"] += found[:1] == [slug]
        elif ranking.verdict is Verdict.UNCLEAR:
            right["unclear_first"] += found[:1] == [slug]
            right["unclear_offered"] += slug in found
        else:
            right["no_match_first"] += found[:1] == [slug]
    n = len(held_out)
    return {
        "n_variants": len(pos),
        "n_off_topic_training": len(negatives),
        "evidence_grid": evidence_grid,
        "probability_grid": probability_grid,
        "chosen": {"no_match": NO_MATCH, "clear": CLEAR},
        "held_out": {
            "n": n,
            "clear": verdicts["clear"] / n,
            "unclear": verdicts["unclear"] / n,
            "no_match": verdicts["no_match"] / n,
            "clear_right": right["clear"] / max(verdicts["clear"], 1),
            "unclear_first_right": right["unclear_first"] / max(verdicts["unclear"], 1),
            "unclear_right_offered": right["unclear_offered"] / max(verdicts["unclear"], 1),
            "no_match_would_have_been_right": right["no_match_first"] / max(verdicts["no_match"], 1),
        },
    }


# --- end to end -------------------------------------------------------------------------------


@cache
def response_patterns() -> list[tuple[str, re.Pattern[str]]]:
    """Every response variant of the domain as a pattern ({slot} matches anything)."""
    domain = yaml.safe_load((ROOT / "domain.yml").read_text(encoding="utf-8"))
    patterns = []
    for name, variants in domain["responses"].items():
        for variant in variants:
            text = str(variant.get("text", ""))
            parts = re.split(r"\{[a-z_0-9]+\}", text)
            patterns.append((name, re.compile(".*?".join(re.escape(part) for part in parts), re.DOTALL)))
    return patterns


def reply_kind(text: str) -> str:
    for name, pattern in response_patterns():
        if pattern.fullmatch(text):
            return name
    return "other"


FORM_QUESTIONS = {"utter_ask_description", "utter_ask_location", "utter_ask_contact_phone", "utter_ask_case_number"}
OFF_TOPIC_OK = {"utter_out_of_scope", "utter_chitchat"}
CHAT_OK = OFF_TOPIC_OK | {"utter_greet", "utter_iamabot", "utter_you_are_welcome", "utter_goodbye"}


def case_count(database: Path) -> int:
    with sqlite3.connect(database) as connection:
        return int(connection.execute("SELECT count(*) FROM service_case").fetchone()[0])


def timed_rest(stack: Stack, sender: str, text: str) -> tuple[list[dict[str, Any]], float]:
    started = time.perf_counter()
    replies = stack.rest(sender, text)
    return replies, time.perf_counter() - started


def texts_of(replies: list[dict[str, Any]]) -> list[str]:
    return [str(reply.get("text") or "") for reply in replies]


def end_to_end(entries: Sequence[EntryData], held_out: Sequence[tuple[str, str]]) -> dict[str, Any]:
    titles = {entry.slug: entry.title for entry in entries}
    with temporary_stack("bench-kb-", engine_timeout_seconds=30.0) as stack:
        log("starting engine and app")
        stack.start()
        stack.rest("bench-warm-up", "你好")
        stack.rest("bench-warm-up", "居住证怎么办理")
        answered: Counter[str] = Counter()
        kb_latency, greet_latency = [], []
        log(f"{len(held_out)} held-out questions, one new conversation each")
        for number, (question, slug) in enumerate(held_out):
            replies, seconds = timed_rest(stack, f"bench-kb-{number}", question)
            texts = texts_of(replies)
            offered = {b.get("payload", "") for reply in replies for b in reply.get("buttons") or []}
            kb_latency.append(seconds)
            _, greet_seconds = timed_rest(stack, f"bench-greet-{number}", "你好")
            greet_latency.append(greet_seconds)
            named = [m.group(1) for text in texts for m in [SOURCE_MARK.search(text)] if m]
            kinds = {reply_kind(text) for text in texts}
            if named:
                answered["answered"] += 1
                answered["right"] += named[0] == titles[slug]
                answered["offered"] += named[0] == titles[slug] or any(f'"{slug}"' in p for p in offered)
            elif "utter_kb_offer_consultation" in kinds or "utter_kb_which_service" in kinds:
                answered["no_match"] += 1
            elif kinds & OFF_TOPIC_OK:
                answered["out_of_scope"] += 1
            else:
                answered["elsewhere"] += 1
        database = Path(stack.workdir) / "crm.db"
        before = case_count(database)
        lines = [
            line.rstrip("\n").split("\t", 1) for line in OFF_TOPIC.read_text(encoding="utf-8").splitlines() if line
        ]
        log(f"{len(lines)} off-topic and chit-chat lines, one new conversation each")
        off: dict[str, Counter[str]] = {"oos": Counter(), "chat": Counter()}
        replies_seen: Counter[str] = Counter()
        for number, (kind, text) in enumerate(lines):
            replies, _ = timed_rest(stack, f"bench-off-{number}", text)
            said = [reply_kind(t) for t in texts_of(replies)]
            replies_seen.update(said)
            allowed = CHAT_OK if kind == "chat" else OFF_TOPIC_OK
            off[kind]["n"] += 1
            off[kind]["handled"] += bool(said) and set(said) <= allowed
            off[kind]["strict"] += bool(said) and set(said) <= (
                {"utter_chitchat"} if kind == "chat" else {"utter_out_of_scope"}
            )
            off[kind]["form_started"] += bool(set(said) & FORM_QUESTIONS)
        after = case_count(database)
    n = len(held_out)
    return {
        "held_out": {
            "n": n,
            "right": answered["right"] / n,
            "right_or_offered": answered["offered"] / n,
            "answered": answered["answered"] / n,
            "no_match": answered["no_match"] / n,
            "out_of_scope": answered["out_of_scope"] / n,
            "elsewhere": answered["elsewhere"] / n,
        },
        "off_topic": {kind: dict(counts) for kind, counts in off.items()},
        "off_topic_replies": dict(replies_seen.most_common()),
        "cases_before": before,
        "cases_after": after,
        "latency": {"kb_question": summarize(kb_latency), "greeting": summarize(greet_latency)},
    }


# --- the report -------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    entries = load_file()
    held_out = [(row["question"], row["entry_id"]) for row in csv.DictReader(HELD_OUT.open(encoding="utf-8"))]
    results: dict[str, Any] = {
        "machine": machine_info(),
        "entries": len(entries),
        "variants": sum(len(e.questions) for e in entries),
    }
    methods = {}
    for name, factory in method_factories().items():
        log(f"retrieval: {name}")
        started = time.perf_counter()
        scores = factory(entries)
        build_seconds = time.perf_counter() - started
        methods[name] = {
            "held_out": accuracy(scores, entries, held_out),
            "cv": cross_validated(factory, entries),
            "build_seconds": round(build_seconds, 3),
        }
    if not args.skip_response_selector:
        log("retrieval: Rasa ResponseSelector (trains a model, a few minutes)")
        methods["Rasa ResponseSelector"] = {"held_out": response_selector(entries, held_out)}
    results["methods"] = methods
    log("thresholds")
    results["thresholds"] = thresholds(entries, held_out)
    if not args.skip_stack:
        results["end_to_end"] = end_to_end(entries, held_out)
    return results


def f3(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def render(results: dict[str, Any]) -> str:
    out = [
        f"Knowledge base: {results['entries']} entries, {results['variants']} question variants; "
        f"held-out questions: {next(iter(results['methods'].values()))['held_out']['n']}.",
        "",
        "### Retrieval per method",
        "",
        table(
            ["method", "held-out top-1", "held-out top-3", "6-fold CV top-1", "6-fold CV top-3", "ms / question"],
            [
                [
                    name,
                    f3(m["held_out"]["top1"]),
                    f3(m["held_out"]["top3"]),
                    f3(m.get("cv", {}).get("top1")),
                    f3(m.get("cv", {}).get("top3")),
                    m["held_out"].get("ms_per_question", m["held_out"].get("parse_ms_per_question")),
                ]
                for name, m in results["methods"].items()
            ],
        ),
    ]
    rs = results["methods"].get("Rasa ResponseSelector")
    if rs:
        out += ["", f"ResponseSelector training: {rs['held_out']['train_seconds']} s (NLU only, 2 cores)."]
    t = results["thresholds"]
    out += [
        "",
        "### Thresholds (shipped method)",
        "",
        f"Cross-validated variants: {t['n_variants']}; off-topic and chit-chat NLU training examples: "
        f"{t['n_off_topic_training']}.",
        "",
        table(
            ["evidence ≥", "variants kept", "right among the dropped", "off-topic examples above"],
            [
                [g["threshold"], f3(g["variants_kept"]), f3(g["right_among_dropped"]), f3(g["off_topic_above"])]
                for g in t["evidence_grid"]
            ],
        ),
        "",
        table(
            ["best probability ≥", "variants answered as clear", "right among them"],
            [[g["threshold"], f3(g["clear_share"]), f3(g["right_among_clear"])] for g in t["probability_grid"]],
        ),
        "",
        f"Chosen: no match below evidence {t['chosen']['no_match']}; clear at probability ≥ {t['chosen']['clear']}.",
        "",
        table(
            ["held-out questions", "share", "right"],
            [
                ["clear (answered)", f3(t["held_out"]["clear"]), f3(t["held_out"]["clear_right"])],
                [
                    "unclear (answered + two alternatives)",
                    f3(t["held_out"]["unclear"]),
                    f"{f3(t['held_out']['unclear_first_right'])} first, "
                    f"{f3(t['held_out']['unclear_right_offered'])} among the three",
                ],
                [
                    "no match",
                    f3(t["held_out"]["no_match"]),
                    "(the first entry would have been right for "
                    f"{f3(t['held_out']['no_match_would_have_been_right'])})",
                ],
            ],
        ),
    ]
    e2e = results.get("end_to_end")
    if e2e:
        h = e2e["held_out"]
        out += [
            "",
            "### End to end (real engine and app, one new conversation per message)",
            "",
            table(
                ["held-out questions", "share"],
                [
                    ["answer names the right entry", f3(h["right"])],
                    ["right entry answered or offered as a button", f3(h["right_or_offered"])],
                    ["answered from some entry", f3(h["answered"])],
                    ["“no match” reply", f3(h["no_match"])],
                    ["treated as out of scope", f3(h["out_of_scope"])],
                    ["went elsewhere (another intent)", f3(h["elsewhere"])],
                ],
            ),
            "",
            table(
                [
                    "off-topic lines",
                    "n",
                    "handled as out of scope / chit-chat",
                    "strictly the matching reply",
                    "form started",
                ],
                [
                    [
                        kind,
                        c.get("n", 0),
                        f3(c.get("handled", 0) / max(c.get("n", 1), 1)),
                        f3(c.get("strict", 0) / max(c.get("n", 1), 1)),
                        c.get("form_started", 0),
                    ]
                    for kind, c in e2e["off_topic"].items()
                ],
            ),
            "",
            f"Cases in the database before the off-topic lines: {e2e['cases_before']}, after: {e2e['cases_after']}.",
            "",
            table(
                ["REST round trip", "n", "p50 ms", "p95 ms"],
                [[name, s.get("n"), s.get("p50_ms"), s.get("p95_ms")] for name, s in e2e["latency"].items()],
            ),
        ]
    return "\n".join(out) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-response-selector", action="store_true", help="do not train Rasa's ResponseSelector")
    parser.add_argument("--skip-stack", action="store_true", help="no end-to-end run through the engine and app")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "results")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.skip_stack and model_missing():
        return 2
    results = run(args)
    out = write_report(results, args.out_dir / "kb_benchmark.json", render)
    log(f"JSON in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
