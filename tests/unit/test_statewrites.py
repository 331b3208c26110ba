"""State writes that meet a full disk wait, in order, and run again once there is space."""

from __future__ import annotations

import errno

import pytest

from omsd.registry import RegistryFull
from omsd.statewrites import StateWrites


def test_writes_after_a_full_disk_wait_in_order_and_run_when_space_returns(tmp_path) -> None:
    writes = StateWrites(tmp_path, retry_every_s=0)
    space = {"free": False}
    done: list[str] = []

    def write(name: str):
        def op() -> None:
            if not space["free"]:
                raise RegistryFull(tmp_path / "registry.sqlite", "database or disk is full")
            done.append(name)
        return op

    assert writes.run("first", lambda: done.append("first")) is True
    assert writes.run("a", write("a")) is False
    assert writes.run("b", lambda: done.append("b")) is False  # could run, but must not pass "a"
    assert writes.blocked and done == ["first"]
    info = writes.describe()
    assert info["directory"] == str(tmp_path) and info["waiting_writes"] == 2 and info["free_bytes"] > 0
    writes.retry()
    assert done == ["first"] and writes.blocked  # still full
    space["free"] = True
    writes.retry()
    assert done == ["first", "a", "b"] and not writes.blocked and writes.describe() is None


def test_other_errors_are_not_taken_for_a_full_disk(tmp_path) -> None:
    writes = StateWrites(tmp_path)

    def broken() -> None:
        raise OSError(errno.EIO, "I/O error")

    with pytest.raises(OSError):
        writes.run("broken", broken)
    assert not writes.blocked

    def quota() -> None:
        raise OSError(errno.EDQUOT, "quota", str(tmp_path / "failed" / "7"))

    assert writes.run("quota", quota) is False
    assert writes.describe()["directory"] == str(tmp_path / "failed")
