"""Rasa's ResponseSelector on the knowledge base, for `benchmarks/kb_benchmark.py` (runs in .venv-rasa).

Usage (the benchmark calls it)::

    .venv-rasa/bin/python benchmarks/kb_response_selector.py WORKDIR

WORKDIR holds ``train.json`` ({slug: [normalised texts]}) and ``test.json`` ([[normalised
question, slug]]). It writes a Rasa NLU project there with one retrieval intent ``faq`` whose
sub-intents are the entries (``faq/<slug>``, a response each), trains it with the same jieba
tokenizer and featurizers as ``config.yml`` plus a ResponseSelector, parses every test question
and prints one JSON object: top-1 and top-3 accuracy, n, training and parsing seconds.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CONFIG = """recipe: default.v1
language: zh
assistant_id: kb-response-selector-benchmark
pipeline:
  - name: JiebaTokenizer
    dictionary_path: {userdict}
  - name: LexicalSyntacticFeaturizer
  - name: CountVectorsFeaturizer
  - name: CountVectorsFeaturizer
    analyzer: char_wb
    min_ngram: 1
    max_ngram: 3
  - name: DIETClassifier
    epochs: 40
    random_seed: 42
  - name: ResponseSelector
    epochs: 100
    retrieval_intent: faq
    random_seed: 42
policies: []
"""


def quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def write_project(workdir: Path, train: dict[str, list[str]]) -> None:
    (workdir / "config.yml").write_text(CONFIG.format(userdict=ROOT / "nlu_data" / "jieba"), encoding="utf-8")
    nlu = ['version: "3.1"', "nlu:"]
    responses = ['version: "3.1"', "intents:", "  - faq", "  - other", "responses:"]
    for slug, texts in train.items():
        nlu.append(f"- intent: faq/{slug}\n  examples: |")
        nlu += [f"    - {text}" for text in dict.fromkeys(texts)]
        responses.append(f"  utter_faq/{slug}:\n    - text: {quoted(slug)}")
    # DIET needs a second intent to train; a handful of greetings.
    nlu.append("- intent: other\n  examples: |")
    nlu += [f"    - {text}" for text in ("你好", "您好", "在吗", "谢谢", "再见", "拜拜")]
    (workdir / "nlu.yml").write_text("\n".join(nlu) + "\n", encoding="utf-8")
    (workdir / "domain.yml").write_text("\n".join(responses) + "\n", encoding="utf-8")


async def parse_all(model: Path, questions: list[list[str]]) -> tuple[int, int, float]:
    from rasa.core.agent import Agent

    agent = Agent.load(str(model))
    first = top3 = 0
    started = time.perf_counter()
    for text, slug in questions:
        parsed = await agent.parse_message(text)
        ranking = parsed.get("response_selector", {}).get("faq", {}).get("ranking", [])
        found = [item["intent_response_key"].split("/", 1)[1] for item in ranking[:3]]
        first += found[:1] == [slug]
        top3 += slug in found
    return first, top3, time.perf_counter() - started


def main() -> int:
    workdir = Path(sys.argv[1])
    train = json.loads((workdir / "train.json").read_text(encoding="utf-8"))
    test = json.loads((workdir / "test.json").read_text(encoding="utf-8"))
    write_project(workdir, train)
    started = time.perf_counter()
    subprocess.run(
        [
            str(Path(sys.executable).parent / "rasa"),
            "train",
            "nlu",
            "--config",
            "config.yml",
            "--nlu",
            "nlu.yml",
            "--domain",
            "domain.yml",
            "--out",
            "models",
            "--fixed-model-name",
            "kb",
        ],
        cwd=workdir,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "train.log").open("w"),
    )
    train_seconds = time.perf_counter() - started
    first, top3, parse_seconds = asyncio.run(parse_all(workdir / "models" / "kb.tar.gz", test))
    n = len(test)
    print(
        json.dumps(
            {
                "top1": first / n,
                "top3": top3 / n,
                "n": n,
                "train_seconds": round(train_seconds, 1),
                "parse_ms_per_question": round(parse_seconds / n * 1000, 2),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
