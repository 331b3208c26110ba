"""Read a staged file through read-only memory mappings, one window at a time.

Workers hash and save staged bytes straight from mappings of the staging file
(no copy into this process). Only one window is mapped at a time, so the pages
of a large file never add up in the worker's resident memory.
"""

from __future__ import annotations

import mmap
import os
import traceback
from collections.abc import Callable

MAP_WINDOW = 64 << 20  # a multiple of mmap.ALLOCATIONGRANULARITY


def for_each_window(fd: int, size: int, visit: Callable[[int, memoryview], None],
                    window: int | None = None) -> int:
    """Call ``visit(offset, view)`` for consecutive windows of the first ``size`` bytes of ``fd``.

    ``size`` is clamped to the file's length; returns how many bytes were visited.
    ``window`` (default :data:`MAP_WINDOW`) must be a multiple of
    ``mmap.ALLOCATIONGRANULARITY``.
    ``visit`` must not keep ``view`` (or slices of it) after it returns: the
    window is unmapped then.
    """
    window = window or MAP_WINDOW
    end = min(size, os.fstat(fd).st_size)
    for start in range(0, end, window):
        with mmap.mmap(fd, min(window, end - start), offset=start, access=mmap.ACCESS_READ) as mapped:
            with memoryview(mapped) as view:
                try:
                    visit(start, view)
                except BaseException as exc:
                    _drop_references(exc)
                    raise
    return max(end, 0)


def _drop_references(exc: BaseException) -> None:
    """Clear the locals of the finished frames an exception (and its causes) still hold.

    Those frames may hold slices of the window, and the window cannot be
    unmapped while a slice of it exists.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)
        current = current.__cause__ or current.__context__
