"""Handing freed heap back to the OS in long-lived Ray workers."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_LIBC = ctypes.CDLL(ctypes.util.find_library("c")) if sys.platform.startswith("linux") else None


def release_freed_memory() -> None:
    """Every batch allocates and frees megabytes of audio, Arrow buffers and activations; glibc
    keeps such freed blocks fragmented in the heap, so a long-lived worker's memory would creep up
    with the number of batches it has seen. ``malloc_trim`` returns them (a no-op off Linux)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
