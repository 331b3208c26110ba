"""Graceful stop under load: SIGTERM while workers are busy stops within the configured timeout,
exits 0, and the next start loses nothing and repeats nothing that had finished.

The pipeline is ``save → slow → record``: ``record`` runs once a file's
analysis is over, so a path recorded twice means a finished file was
processed again.
"""

from __future__ import annotations

import os
import random
import signal
import time
import uuid
from collections import Counter
from pathlib import Path

import psutil
import pytest

from tests.chunks import produce_files, wait_for
from tests.reliability.conftest import Daemon, slow_only
from tests.reliability.funcs import read_lines, recorded_paths

STEPS = """      - save: {{dir: {out}}}
      - call: {{function: tests.reliability.funcs:slow}}
      - call: {{function: tests.reliability.funcs:record}}
"""
# What a stop may take beyond the configured timeout: leaving the group, the last commit, the producer flush,
# stopping idle workers (measured well under a second here; generous for a loaded CI machine).
STOP_OVERHEAD_S = 3.0


def files_of(n: int, seed: int, long: int = 0) -> dict[str, bytes]:
    rng = random.Random(seed)
    files = {f"load{i % 3}/part_{seed}_{i:02d}.dat": rng.randbytes(rng.randint(20_000, 400_000)) for i in range(n)}
    files.update({f"long/scan_{seed}_{i}.long": rng.randbytes(300_000) for i in range(long)})
    return files


def ready_daemon(tmp_path: Path, bootstrap: str, daemons: list, workers: int) -> Daemon:
    """A daemon running STEPS on a fresh topic with ``workers`` workers, started and ready."""
    topic = f"stop-{uuid.uuid4().hex[:8]}"
    daemon = Daemon(tmp_path / "d", bootstrap, topic, label="d", steps=STEPS, workers=workers,
                    env={"OMSD_TEST_RECORD": str(tmp_path / "record.txt")})
    daemons.append(daemon)
    daemon.start()
    daemon.wait_ready()
    return daemon


def timed_stop(daemon: Daemon, timeout: float) -> tuple[int, float]:
    started = time.monotonic()
    code = daemon.stop(signal.SIGTERM, timeout=timeout)
    return code, time.monotonic() - started


@pytest.mark.parametrize("n_files", [pytest.param(16, id="ci"), pytest.param(120, id="long", marks=slow_only)])
def test_sigterm_lets_in_flight_files_finish_and_restart_repeats_nothing(broker, tmp_path, daemons, n_files) -> None:
    topic = f"stop-{uuid.uuid4().hex[:8]}"
    record = tmp_path / "record.txt"
    slow_s = 1.0
    daemon = Daemon(tmp_path / "d", broker.bootstrap, topic, label="d", steps=STEPS, workers=2,
                    extra="shutdown_timeout_secs: 10\n", env={"OMSD_TEST_RECORD": str(record),
                                                             "OMSD_TEST_SLOW": str(slow_s),
                                                             "OMSD_TEST_STARTED": str(tmp_path / "started.txt")})
    daemons.append(daemon)
    files = files_of(n_files, 21)
    produce_files(broker.bootstrap, topic, files)
    daemon.start()
    wait_for(lambda: len(recorded_paths(record)) >= 2 and len(daemon.busy_workers()) == 2, 60,
             "both workers busy after some files finished", daemon.proc, daemon.log)
    code, took = timed_stop(daemon, timeout=30)
    assert code == 0, daemon.tail()
    # In-flight files finish (at most one slow step each), queued ones are handed back.
    assert took <= slow_s + STOP_OVERHEAD_S, took
    assert not daemon.staging_leftovers(), "shared memory and spill files are freed at a graceful stop"
    finished_before = Counter(recorded_paths(record))
    assert finished_before and len(finished_before) < len(files), "the stop came mid-stream"
    started = {fields[0] for fields in read_lines(tmp_path / "started.txt")}
    assert started <= set(finished_before), "a file whose analysis had started was not let finish"

    daemon.start()
    wait_for(lambda: daemon.saved() == files and set(recorded_paths(record)) == set(files), 30 + n_files * slow_s,
             "every file saved and recorded after the restart", daemon.proc, daemon.log)
    status = daemon.status()
    assert status is not None and status["totals"]["files_completed"] == len(files) - len(finished_before)
    code, _ = timed_stop(daemon, timeout=30)
    assert code == 0
    assert not daemon.staging_leftovers()
    counts = Counter(recorded_paths(record))
    assert all(c == 1 for c in counts.values()), {p: c for p, c in counts.items() if c > 1}


def test_sigterm_with_a_step_longer_than_the_timeout_hands_the_file_back(broker, tmp_path, daemons) -> None:
    topic = f"stop-{uuid.uuid4().hex[:8]}"
    record = tmp_path / "record.txt"
    started_log = tmp_path / "started.txt"
    timeout_s, long_s = 3, 7
    daemon = Daemon(tmp_path / "d", broker.bootstrap, topic, label="d", steps=STEPS, workers=2,
                    extra=f"shutdown_timeout_secs: {timeout_s}\n",
                    env={"OMSD_TEST_RECORD": str(record), "OMSD_TEST_SLOW": "0.2", "OMSD_TEST_LONG": str(long_s),
                         "OMSD_TEST_STARTED": str(started_log)})
    daemons.append(daemon)
    files = files_of(6, 22, long=1)
    (long_path,) = [rel for rel in files if rel.endswith(".long")]
    produce_files(broker.bootstrap, topic, files)
    daemon.start()
    wait_for(lambda: long_path in {f[0] for f in read_lines(started_log)}, 60, "the long analysis started",
             daemon.proc, daemon.log)
    time.sleep(0.5)
    code, took = timed_stop(daemon, timeout=60)
    assert code == 0, daemon.tail()
    assert took <= timeout_s + STOP_OVERHEAD_S, f"stop took {took:.1f}s with shutdown_timeout_secs {timeout_s}"
    time.sleep(long_s)  # a worker left running on the handed-back file would record it meanwhile
    assert long_path not in recorded_paths(record), "the handed-back file was finished after the stop"

    daemon.start()
    wait_for(lambda: daemon.saved() == files and set(recorded_paths(record)) == set(files), 60,
             "every file saved and recorded after the restart", daemon.proc, daemon.log)
    assert daemon.stop() == 0
    counts = Counter(recorded_paths(record))
    assert all(c == 1 for c in counts.values()), {p: c for p, c in counts.items() if c > 1}


def test_every_worker_obeys_sigterm(broker, tmp_path, daemons) -> None:
    daemon = ready_daemon(tmp_path, broker.bootstrap, daemons, workers=3)
    pids = [w["pid"] for w in daemon.status()["workers"]]  # type: ignore[index]
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(alive(pid) for pid in pids):
        time.sleep(0.1)
    survivors = [pid for pid in pids if alive(pid)]
    assert daemon.stop() == 0
    assert not survivors, f"{len(survivors)} of {len(pids)} workers ignored SIGTERM"


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_sigterm_right_after_a_worker_death_stops_cleanly(broker, tmp_path, daemons) -> None:
    daemon = ready_daemon(tmp_path, broker.bootstrap, daemons, workers=2)
    os.kill(daemon.status()["workers"][0]["pid"], signal.SIGKILL)  # type: ignore[index]
    time.sleep(0.1)  # reaped, restart due 0.5 s later
    code, _ = timed_stop(daemon, timeout=30)
    assert code == 0, daemon.tail()
    assert not (daemon.state / "omsd.sock").exists()
    assert not daemon.staging_leftovers()
