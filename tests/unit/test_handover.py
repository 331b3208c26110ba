"""Finished offsets above the committed one: the range set, the watermark's bookkeeping, the record format."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from omsd.intake.handover import decode, encode, record_key
from omsd.intake.offsetranges import OffsetRanges
from omsd.intake.watermark import Watermarks

TP = ("data", 0)

operations = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(0, 200), st.integers(0, 8)),
    st.tuples(st.just("drop_below"), st.integers(0, 200), st.just(0)),
), max_size=60)


@given(operations)
def test_offset_ranges_behave_like_a_set_of_offsets(ops: list[tuple[str, int, int]]) -> None:
    ranges, model = OffsetRanges(), set()
    for op, a, n in ops:
        if op == "add":
            ranges.add_range(a, a + n)
            model.update(range(a, a + n))
        else:
            ranges.drop_below(a)
            model = {x for x in model if x >= a}
    assert {x for x in range(220) if x in ranges} == model
    assert ranges.count() == len(model)
    bounds = list(ranges)
    assert all(end < next_start for (_, end), (next_start, _) in zip(bounds, bounds[1:])), bounds
    assert OffsetRanges.from_flat(ranges.flat()).flat() == ranges.flat()


def test_offset_ranges_join_consecutive_offsets() -> None:
    ranges = OffsetRanges()
    ranges.add_offsets([7, 3, 4, 5, 9, 8, 20])
    assert list(ranges) == [(3, 6), (7, 10), (20, 21)]
    ranges.add(6)
    assert list(ranges) == [(3, 10), (20, 21)]


def test_finished_files_above_an_unfinished_one_are_progress() -> None:
    marks = Watermarks()
    # offset 0: first chunk of a file still being uploaded (holder 1); 1-3: a whole small file (holder 2);
    # 4: a rejected message; 5: a duplicate of a file in processing (neither held nor finished).
    marks.hold(TP, 1, 0)
    for offset in (1, 2, 3):
        marks.hold(TP, 2, offset)
    for offset in range(6):
        marks.consumed(TP, offset)
    marks.finished(TP, 4)
    assert marks.progress(TP) == (0, OffsetRanges([(4, 5)]))
    marks.release(2)  # its outcome is recorded
    safe, done = marks.progress(TP)
    assert safe == 0 and list(done) == [(1, 5)]
    marks.release(1, done=False)  # dropped unfinished: nothing is held, the safe offset moves on
    assert marks.progress(TP) is None
    assert marks.safe(TP) == 6


def test_a_dropped_file_is_not_counted_as_finished() -> None:
    marks = Watermarks()
    marks.hold(TP, 1, 0)
    marks.hold(TP, 2, 1)
    marks.consumed(TP, 1)
    marks.release(2, done=False)
    assert marks.progress(TP) is None


def test_inherited_offsets_are_skipped_once_and_carried_forward() -> None:
    marks = Watermarks()
    marks.inherit(TP, 10, OffsetRanges([(8, 9), (11, 14)]))  # below the committed offset: ignored
    assert not marks.handed_over(TP, 10) and not marks.handed_over(TP, 8)
    assert [o for o in range(10, 16) if marks.handed_over(TP, o)] == [11, 12, 13]
    marks.hold(TP, 1, 10)  # the unfinished file's first chunk, read again
    for offset in range(10, 14):
        marks.consumed(TP, offset)
    assert not marks.handed_over(TP, 12)  # already read: a re-read after a seek is handled as usual
    assert marks.progress(TP) == (10, OffsetRanges([(11, 14)]))  # handed on if we stop now
    marks.committed({TP: 10})
    marks.release(1)
    assert marks.progress(TP) is None and marks.safe(TP) == 14


def test_commit_and_forget_drop_what_is_no_longer_needed() -> None:
    marks = Watermarks()
    marks.hold(TP, 1, 0)
    marks.hold(TP, 2, 5)
    marks.consumed(TP, 5)
    marks.release(2)
    assert marks.progress(TP) == (0, OffsetRanges([(5, 6)]))
    marks.forget({TP})
    assert marks.progress(TP) is None
    assert not marks.handed_over(TP, 5)


def test_records_round_trip_and_garbage_is_ignored() -> None:
    done = OffsetRanges([(3, 9), (12, 13)])
    record = decode(encode(2, done))
    assert record is not None and record.committed == 2 and list(record.done) == [(3, 9), (12, 13)]
    for garbage in (None, b"", b"\xff\x00", encode(2, done)[:-1], b"\x93\x02\x01\x90",
                    b"\x93\x01\x01\x91\x05", b"\x93\x01\xa1x\x90"):
        assert decode(garbage) is None, garbage
    assert record_key("g", "t", 1) != record_key("g", "t", 2) != record_key("h", "t", 1)
