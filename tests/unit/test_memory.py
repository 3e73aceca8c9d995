"""Memory freed by Python goes back to the system when the app asks (`crm_backend.memory`)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from crm_backend.memory import release_free_memory

BLOCK = 64 * 1024  # below glibc's mmap threshold: served from, and freed into, a malloc arena
BLOCKS = 1600  # 100 MB


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; glibc's malloc")
def test_memory_a_thread_freed_is_returned_to_the_system() -> None:
    kept: list[bytes] = []

    def allocate_then_free_all_but_the_last() -> None:
        blocks = [b"\x01" * BLOCK for _ in range(BLOCKS)]  # written, so resident (bytes(n) may not be)
        kept.append(blocks[-1])  # the last block stays in use, so the arena cannot shrink by itself
        blocks.clear()

    worker = threading.Thread(target=allocate_then_free_all_but_the_last)
    worker.start()
    worker.join()
    before = rss_mb()

    assert release_free_memory() is True
    assert rss_mb() < before - 50
