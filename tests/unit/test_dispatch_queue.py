"""Dispatch order: balanced takes the oldest file whose path is free; sharded keeps files on their home slot."""

from __future__ import annotations

from dataclasses import dataclass

from omsd.dispatch.queue import DispatchPolicy, DispatchQueue
from omsd.wire.sharding import worker_slot_for


@dataclass(eq=False)
class T:
    relative_path: str
    name: str = ""


def paths_with_home(home: int, n: int, slots: int = 2) -> list[str]:
    out, i = [], 0
    while len(out) < n:
        if worker_slot_for(f"p{i}.bin", slots) == home:
            out.append(f"p{i}.bin")
        i += 1
    return out


def test_balanced_an_idle_slot_takes_files_whose_home_is_busy() -> None:
    a, b, c = paths_with_home(0, 3)
    queue = DispatchQueue(2)
    slow, fast1, fast2 = T(a, "slow"), T(b, "fast1"), T(c, "fast2")
    for task in (slow, fast1, fast2):
        queue.push(task)
    assert queue.take(0) is slow
    assert queue.take(1) is fast1  # not held up behind the slow file of its home slot
    assert queue.take(1) is fast2
    assert queue.take(0) is None and len(queue) == 0


def test_balanced_two_generations_of_a_path_never_run_in_two_slots_and_keep_their_order() -> None:
    (path,) = paths_with_home(0, 1)
    (other,) = paths_with_home(1, 1)
    queue = DispatchQueue(2)
    gen1, gen2, free = T(path, "gen1"), T(path, "gen2"), T(other, "other")
    for task in (gen1, gen2, free):
        queue.push(task)
    assert queue.take(1) is gen1  # slot 1 is idle first: it may take a file of another home
    assert queue.take(0) is free  # gen2 waits (its path is in flight in slot 1); the other path flows around it
    assert queue.take(0) is None
    assert queue.take(1) is gen2  # behind gen1 in the same worker: still in order, never at once
    queue.done(gen1)
    queue.done(gen2)
    later = T(path, "gen3")
    queue.push(later)
    assert queue.take(0) is later  # nothing of the path in flight any more: any slot


def test_balanced_a_later_generation_never_overtakes_an_earlier_waiting_one() -> None:
    (path,) = paths_with_home(1, 1)
    queue = DispatchQueue(2)
    running, gen2, gen3 = T(path, "1"), T(path, "2"), T(path, "3")
    queue.push(running)
    assert queue.take(0) is running
    queue.push(gen2)
    queue.push(gen3)
    assert queue.take(1) is None  # both wait for the path to be free
    queue.done(running)
    assert queue.take(1) is gen2 and queue.take(0) is None  # gen3 only after gen2, in gen2's slot
    assert queue.take(1) is gen3


def test_sharded_every_file_goes_to_its_home_slot() -> None:
    queue = DispatchQueue(2, DispatchPolicy.SHARDED)
    tasks = [T(f"f{i}.bin") for i in range(20)]
    for task in tasks:
        queue.push(task)
    taken = {0: [], 1: []}
    for slot in (0, 1, 0, 1) * 10:
        task = queue.take(slot)
        if task is not None:
            taken[slot].append(task)
    assert sorted(t.relative_path for t in taken[0] + taken[1]) == sorted(t.relative_path for t in tasks)
    for slot, got in taken.items():
        assert all(worker_slot_for(t.relative_path, 2) == slot for t in got)
        assert got == [t for t in tasks if worker_slot_for(t.relative_path, 2) == slot]  # in arrival order


def test_handed_back_files_wait_in_their_arrival_order() -> None:
    a, b, c = paths_with_home(0, 3)
    queue = DispatchQueue(2)
    first, second, third = T(a), T(b), T(c)
    for task in (first, second, third):
        queue.push(task)
    taken = [queue.take(0), queue.take(0)]
    assert taken == [first, second]
    queue.push_back(taken)  # the worker died holding both
    assert queue.ordered() == [first, second, third]
    assert queue.take(1) is first


def test_the_config_accepts_exactly_the_policies() -> None:
    from omsd.config import DISPATCH_POLICIES

    assert {p.value for p in DispatchPolicy} == set(DISPATCH_POLICIES)


@dataclass(eq=False)
class Later:
    relative_path: str
    not_before: float = 0.0


def test_a_file_backing_off_holds_back_only_its_own_path() -> None:
    a, b = paths_with_home(0, 2)
    for policy in DispatchPolicy:
        queue = DispatchQueue(2, policy)
        backing_off, its_next, other = Later(a, not_before=100.0), Later(a), Later(b)
        for task in (backing_off, its_next, other):
            queue.push(task)
        assert queue.take(0, now=50.0) is other  # its_next waits behind the generation backing off
        assert queue.take(0, now=50.0) is None
        assert queue.take(0, now=101.0) is backing_off
