"""glibc allocator settings for processes that move many chunk-sized buffers."""

from __future__ import annotations

import ctypes
import sys


def tune_malloc() -> None:
    """Let glibc keep freed chunk-sized buffers in the heap instead of mmap/munmap for each.

    Every chunk message allocates buffers of about the chunk size; with glibc's
    defaults each one is a fresh mapping whose pages fault in again. Measured:
    about 10% of the uploader's CPU time. A no-op on other platforms.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 32 << 20)  # glibc's largest allowed value
        libc.mallopt(m_trim_threshold, 256 << 20)
    except (OSError, AttributeError):
        pass
