"""Handing memory the process has freed back to the system.

Python frees the temporaries of loading a model or building an index (decompression buffers,
TF-IDF count matrices, an optimiser's arrays), but glibc's ``malloc`` keeps freed blocks for
reuse, in one arena per thread that allocated them: after the app's start, about 100 MB of its
RSS was such free memory (`benchmarks/memory_benchmark.py`). ``malloc_trim`` returns the free
pages of every arena to the system; the memory in use is untouched.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
from collections.abc import Callable

logger = logging.getLogger(__name__)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


def release_free_memory() -> bool:
    """Return the C allocator's free memory to the system; False where that cannot be done.

    Takes a few milliseconds; call it after a burst of allocation that is over (a model loaded,
    an index rebuilt), not per request.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
