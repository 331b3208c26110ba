"""The step watchdog: warn at half the limit, kill past it; a backed-off task holds back only its own path."""

from __future__ import annotations

from dataclasses import dataclass, field

from omsd.dispatch.pool import Task
from omsd.dispatch.queue import DispatchPolicy, DispatchQueue
from omsd.dispatch.watchdog import StepRun, health_reasons, watch


@dataclass
class FakeProcess:
    pid: int = 4242
    killed: int = 0

    def kill(self) -> None:
        self.killed += 1


@dataclass
class FakeSlot:
    index: int = 0
    process: FakeProcess = field(default_factory=FakeProcess)
    step: StepRun | None = None
    killed: StepRun | None = None
    last_timeout: tuple[float, StepRun] | None = None


def run(limit: float | None, started: float = 100.0) -> StepRun:
    return StepRun(task_id=1, relative_path="a/b.dat", pipeline="p", index=1, step="call", attempt=1,
                   limit_s=limit, started=started)


def test_a_step_is_warned_about_at_half_its_limit_and_its_worker_killed_past_it() -> None:
    slot = FakeSlot(step=run(2.0))
    watch([slot], now=100.5)
    assert slot.step is not None and not slot.step.warned and health_reasons([slot], now=100.5) == []
    watch([slot], now=101.2)
    assert slot.step.warned and slot.process.killed == 0
    assert "has run 1s of its 2s limit" in health_reasons([slot], now=101.2)[0]
    watch([slot], now=102.1)
    assert slot.process.killed == 1 and slot.step is None and slot.killed is not None
    slot.last_timeout = (102.1, slot.killed)
    assert "was killed 0s ago" in health_reasons([slot], now=102.2)[0]
    assert health_reasons([slot], now=120.0) == []  # not for ever


def test_no_limit_means_never_killed() -> None:
    slot = FakeSlot(step=run(None))
    watch([slot], now=1e9)
    assert slot.process.killed == 0 and health_reasons([slot], now=1e9) == []


def test_a_task_waiting_out_its_backoff_holds_back_only_its_own_path() -> None:
    def task(task_id: int, path: str, not_before: float = 0.0) -> Task:
        return Task(task_id=task_id, relative_path=path, message=None, not_before=not_before)  # type: ignore[arg-type]

    for policy in DispatchPolicy:
        queue = DispatchQueue(1, policy)
        for waiting in (task(1, "hung.dat", not_before=50.0), task(2, "hung.dat"), task(3, "other.dat")):
            queue.push(waiting)
        assert queue.take(0, now=10.0).task_id == 3  # the later generation of hung.dat waits behind it
        assert queue.take(0, now=10.0) is None
        assert [t.task_id for t in (queue.take(0, now=60.0), queue.take(0, now=60.0))] == [1, 2]
