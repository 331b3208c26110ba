"""The worker pool's slots move only along the state table (strict in tests: a forbidden move raises)."""

from __future__ import annotations

import time

from omsd.dispatch.pool import WorkerPool
from omsd.states import ProcessState


def wait_running(pool: WorkerPool, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not pool.alive():
        assert time.monotonic() < deadline, pool.describe()
        pool.events(timeout=0.1)


def test_a_running_worker_that_dies_is_exited_then_backs_off_then_restarts() -> None:
    pool = WorkerPool(1, [])
    (slot,) = pool.slots
    assert slot.state is ProcessState.STOPPED
    pool.start()
    try:
        assert slot.state is ProcessState.STARTING
        wait_running(pool)
        slot.process.kill()
        slot.process.join(10)
        assert pool.reap() == []  # RUNNING -> EXITED -> BACKOFF (RUNNING -> BACKOFF would raise here)
        assert slot.state is ProcessState.BACKOFF and slot.last_death is not None
        slot.restart_at = 0.0
        pool.manage()
        assert slot.state is ProcessState.STARTING and slot.restarts == 1
        wait_running(pool)
    finally:
        pool.stop(timeout=5)
    assert slot.state is ProcessState.STOPPED and not slot.process.is_alive()
