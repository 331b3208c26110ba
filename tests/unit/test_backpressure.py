"""When the supervisor stops and resumes reading, given the workers' backlog."""

from __future__ import annotations

from omsd.dispatch.backpressure import FILES_AHEAD, MAX_FILES_PER_WORKER, Backlog, drained, saturated

MiB = 1 << 20
BUDGET = 512 * MiB


def backlog(*per_worker: int, size_mib: int = 0) -> Backlog:
    return Backlog(per_worker=tuple(per_worker), size_bytes=size_mib * MiB)


def test_reading_goes_on_while_any_worker_could_use_a_file() -> None:
    """One worker's long queue does not starve the others (files are sharded by path)."""
    assert not saturated(backlog(FILES_AHEAD + 5, 0, size_mib=100), BUDGET)
    assert saturated(backlog(FILES_AHEAD, FILES_AHEAD, size_mib=100), BUDGET)


def test_waiting_files_may_hold_at_most_half_the_staging_memory() -> None:
    assert saturated(backlog(20, 0, size_mib=256), BUDGET)
    assert not drained(backlog(10, 0, size_mib=200), BUDGET)  # hysteresis: below a quarter to resume
    assert drained(backlog(10, 0, size_mib=100), BUDGET)


def test_hard_cap_on_the_number_of_waiting_small_files() -> None:
    cap = MAX_FILES_PER_WORKER * 2
    assert saturated(backlog(cap, 0), BUDGET)
    assert not drained(backlog(cap - 1, 0), BUDGET)
    assert drained(backlog(cap // 2, 0), BUDGET)


def test_resume_only_when_some_worker_is_about_to_run_dry() -> None:
    assert not drained(backlog(3, 2), BUDGET)
    assert drained(backlog(3, 1), BUDGET)
    assert drained(backlog(0, 0), BUDGET)


def test_no_workers_means_no_backpressure() -> None:
    assert not saturated(backlog(), BUDGET)
    assert drained(backlog(), BUDGET)


def test_the_supervisor_stages_about_four_mib_per_loop_turn() -> None:
    """Big chunks: few per turn, so finished files reach idle workers soon; small ones: many, up to a cap."""
    from omsd.intake.fetch import BATCH_BYTES, MAX_BATCH, batch_size

    assert batch_size(512 << 10) == BATCH_BYTES // (512 << 10) == 8
    assert batch_size(64 << 20) == 1
    assert batch_size(1000) == MAX_BATCH
    assert batch_size(0) == MAX_BATCH
