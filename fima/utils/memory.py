"""Process-wide memory settings of the processes that train, evaluate and decode."""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable

logger = logging.getLogger(__name__)

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_INT_MAX = 2**31 - 1


def _glibc_function(name: str) -> Callable[..., int] | None:
    """The C library's function ``name``, or None where it has none (not glibc)."""
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None


def retain_freed_memory() -> bool:
    """Let glibc keep freed memory for reuse in this process instead of returning it at once.

    A training step (or a decoded clip) allocates the same large buffers again and again. By
    default glibc serves every block above its mmap threshold (at most 32 MB) with a fresh
    mapping and unmaps it when freed, so the next step faults the pages in again and the kernel
    zeroes each of them: a Tiny3D FIMA step at 16 clips of 8x64² faulted ~0.6 GB a step and
    spent 18% of its CPU time in the kernel; decoding a 256-px window lost ~20% the same way.
    This serves every block from the heap (no mmap) and never trims it, so freed memory is
    reused without faults. The price is that the process keeps its peak memory. A no-op where
    the C library is not glibc.

    Returns:
        Whether the settings were applied.
    """
    mallopt = _glibc_function("mallopt")
    if mallopt is None:
        return False
    # mallopt returns 1 on success; both settings are glibc's documented parameters.
    applied = mallopt(_M_MMAP_MAX, 0) == 1
    applied = mallopt(_M_TRIM_THRESHOLD, _INT_MAX) == 1 and applied
    if not applied:
        logger.debug("mallopt refused the settings: freed memory goes back to the system")
    return applied


def return_freed_memory() -> bool:
    """Hand the freed memory of this process's heap back to the system now (glibc's
    ``malloc_trim``), so that the resident set is the memory in use; the next allocations fault
    their pages in again. A no-op where the C library is not glibc.

    Returns:
        Whether any memory was returned.
    """
    malloc_trim = _glibc_function("malloc_trim")
    return malloc_trim is not None and malloc_trim(0) == 1
