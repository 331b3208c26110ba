"""A set of partition offsets kept as sorted, disjoint, half-open ranges.

Offsets that are finished above a partition's committed offset come in long
runs (a file's chunks are mostly consecutive), so ranges keep the set small
however many messages it covers.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator


class OffsetRanges:
    """Sorted disjoint ``[start, end)`` ranges of offsets."""

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        for start, end in ranges:
            self.add_range(start, end)

    def __contains__(self, offset: int) -> bool:
        i = bisect_right(self._starts, offset) - 1
        return i >= 0 and offset < self._ends[i]

    def __bool__(self) -> bool:
        return bool(self._starts)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(zip(self._starts, self._ends))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OffsetRanges) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"OffsetRanges({list(self)!r})"

    def count(self) -> int:
        """How many offsets the set holds."""
        return sum(end - start for start, end in self)

    def add(self, offset: int) -> None:
        self.add_range(offset, offset + 1)

    def add_offsets(self, offsets: Iterable[int]) -> None:
        """Add many offsets, one range per consecutive run."""
        run_start = run_end = None
        for offset in sorted(offsets):
            if run_end is not None and offset <= run_end:
                run_end = max(run_end, offset + 1)
                continue
            if run_start is not None:
                self.add_range(run_start, run_end)
            run_start, run_end = offset, offset + 1
        if run_start is not None:
            self.add_range(run_start, run_end)

    def add_range(self, start: int, end: int) -> None:
        """Add ``[start, end)``, merging with the ranges it touches or overlaps."""
        if end <= start:
            return
        lo = bisect_right(self._ends, start - 1)  # first range ending at or after ``start``
        hi = bisect_right(self._starts, end)  # ranges from ``hi`` on start after ``end``
        if lo < hi:
            start = min(start, self._starts[lo])
            end = max(end, self._ends[hi - 1])
        self._starts[lo:hi] = [start]
        self._ends[lo:hi] = [end]

    def drop_below(self, offset: int) -> None:
        """Forget every offset lower than ``offset``."""
        i = bisect_right(self._ends, offset)
        del self._starts[:i], self._ends[:i]
        if self._starts and self._starts[0] < offset:
            self._starts[0] = offset

    def flat(self, limit: int | None = None) -> list[int]:
        """``[start0, end0, start1, end1, ...]``, the lowest ``limit`` ranges at most."""
        out: list[int] = []
        for start, end in list(self)[:limit]:
            out += (start, end)
        return out

    @classmethod
    def from_flat(cls, flat: list[int]) -> "OffsetRanges":
        if len(flat) % 2:
            raise ValueError("an odd number of range bounds")
        return cls(zip(flat[0::2], flat[1::2]))
