"""How well reports are located: ``.venv/bin/python -m benchmarks.location_benchmark``.

Runs the location extractor over the 2,594 training messages and prints the share with one
district decided, the share left ambiguous (the dialogue asks), the share with nothing found,
the share with an address, and extraction latency after warm-up.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter

from crm_backend.dispatch.classifier import TRAINING_DATA_PATH, read_labelled_csv
from crm_backend.dispatch.location import Gazetteer, LocationExtractor
from crm_backend.dispatch.service import GAZETTEER_DIR


def main() -> None:
    texts = [row.text for row in read_labelled_csv(TRAINING_DATA_PATH)]
    extractor = LocationExtractor(Gazetteer.load(GAZETTEER_DIR))
    extractor.warm_up()
    outcomes: Counter[str] = Counter()
    sources: Counter[str] = Counter()
    with_address = 0
    seconds: list[float] = []
    for text in texts:
        started = time.perf_counter()
        found = extractor.extract(text)
        seconds.append(time.perf_counter() - started)
        if found.district and not found.ambiguous:
            outcomes["one district"] += 1
            sources[found.source] += 1
        elif found.candidates:
            outcomes["ambiguous: asks"] += 1
        else:
            outcomes["nothing found"] += 1
        with_address += found.address is not None
    n = len(texts)
    print(f"| outcome on {n} training messages | messages | share |")
    print("| --- | --- | --- |")
    for outcome in ("one district", "ambiguous: asks", "nothing found"):
        print(f"| {outcome} | {outcomes[outcome]} | {outcomes[outcome] / n:.1%} |")
    print(f"| an address extracted | {with_address} | {with_address / n:.1%} |")
    print(f"\none district decided by: {dict(sources)}")
    ms = sorted(s * 1000 for s in seconds)
    print(
        f"latency per message: p50 {statistics.median(ms):.2f} ms, "
        f"p95 {ms[int(0.95 * len(ms)) - 1]:.2f} ms, max {ms[-1]:.1f} ms"
    )


if __name__ == "__main__":
    main()
