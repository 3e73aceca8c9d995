"""How the duplicate threshold was chosen: similarity of same-district training messages.

``.venv/bin/python -m benchmarks.duplicate_threshold [--sample 6]`` prints how many pairs of
training messages naming the same district reach each similarity band, with a random sample
of each band to read.
"""

from __future__ import annotations

import argparse
import collections
import csv
import random
import re

from crm_backend.dispatch.classifier import TRAINING_DATA_PATH
from crm_backend.dispatch.duplicates import DUPLICATE_THRESHOLD, content_words, similarity

DISTRICT = re.compile(r"[A-K]\d{1,2}[区县市]")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sample", type=int, default=6)
    args = parser.parse_args()
    with open(TRAINING_DATA_PATH, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    by_district: dict[str, list[str]] = collections.defaultdict(list)
    for row in rows:
        if match := DISTRICT.search(row["text"]):
            by_district[match.group(0)].append(row["text"])
    pairs: list[tuple[float, str, str]] = []
    for texts in by_district.values():
        vectors = [content_words(text) for text in texts]
        for i in range(len(texts)):
            for j in range(i + 1, len(texts)):
                score = similarity(vectors[i], vectors[j])
                if score >= 0.35:
                    pairs.append((score, texts[i][:60], texts[j][:60]))
    random.seed(1)
    print(f"threshold in use: {DUPLICATE_THRESHOLD}")
    for low, high in [(0.6, 1.01), (0.45, 0.6), (0.35, 0.45)]:
        band = [pair for pair in pairs if low <= pair[0] < high]
        print(f"\n## similarity {low}–{min(high, 1.0)}: {len(band)} pairs")
        for score, a, b in random.sample(band, min(args.sample, len(band))):
            print(f"- {score:.2f} | {a} | {b}")


if __name__ == "__main__":
    main()
