"""Crash loops: kill -9 workers and the supervisor while files stream in; nothing is lost, repeats stay bounded.

The pipeline is ``save → metadata → record → slow``. Workers spend most of
their time in ``slow``, after ``record``, so kills usually land after the
record step of the file they hit.

The repeat bound asserted (README, "Guarantees"): a step runs at most once per
file generation except for files in flight at a crash. A worker killed with
kill -9 had one file in flight, the one its slot's "worker died" log line
names; a supervisor killed with kill -9 had at most one file in flight per
worker. So a path may be recorded at most
``1 + (worker deaths logged for that path) + (supervisor kills)`` times, and
the extra records of all paths together are at most
``worker kills + supervisor kills × workers``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.chunks import chunk_messages, produce, produce_files, wait_for
from tests.reliability.conftest import (
    Daemon, consume_results, make_files, result_key, slow_only, upload, uploader_config,
)
from tests.reliability.funcs import read_lines, recorded_paths

STEPS = """      - save: {{dir: {out}}}
      - metadata: {{function: tests.reliability.funcs:digest, topic: RESULTS}}
      - call: {{function: tests.reliability.funcs:record}}
      - call: {{function: tests.reliability.funcs:slow}}
"""


@dataclass(frozen=True)
class Form:
    batches: int
    files_per_batch: int
    min_size: int
    max_size: int
    chunk_size: int
    rounds: int
    worker_kills: int  # per round
    slow_s: float
    seed: int


CI = Form(batches=4, files_per_batch=10, min_size=100_000, max_size=1_000_000, chunk_size=1 << 17, rounds=2,
          worker_kills=3, slow_s=0.25, seed=11)
LONG = Form(batches=5, files_per_batch=8, min_size=1_000_000, max_size=8_000_000, chunk_size=1 << 19, rounds=4,
            worker_kills=4, slow_s=0.5, seed=12)
WORKERS = 2


class Uploads(threading.Thread):
    """Uploads the batches one after the other with `omsd upload`, a pause between them."""

    def __init__(self, config: Path, topic: str, dirs: list[Path], chunk_size: int, gap_s: float) -> None:
        super().__init__(daemon=True)
        self.args = (config, topic, dirs, chunk_size, gap_s)
        self.error: BaseException | None = None

    def run(self) -> None:
        config, topic, dirs, chunk_size, gap_s = self.args
        try:
            for directory in dirs:
                upload(config, topic, directory, chunk_size=chunk_size)
                time.sleep(gap_s)
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            self.error = exc


def worker_deaths(log: Path) -> Counter[str]:
    """Files named by the supervisor's "worker died" lines: the file each worker death hit."""
    hits: Counter[str] = Counter()
    for line in log.read_text(errors="replace").splitlines():
        if '"worker died"' not in line:
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("file"):
            hits[event["file"]] += 1
    return hits


def kill_busy_worker(daemon: Daemon, targeted: set[str], rng: random.Random, timeout: float = 30) -> bool:
    """kill -9 a worker busy with a file not hit before in this supervisor's life; False if none came."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and daemon.running:
        candidates = [w for w in daemon.busy_workers() if w["current_file"] not in targeted]
        if candidates:
            victim = rng.choice(candidates)
            try:
                os.kill(victim["pid"], signal.SIGKILL)
            except ProcessLookupError:
                continue
            targeted.add(victim["current_file"])
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("form", [pytest.param(CI, id="ci"), pytest.param(LONG, id="long", marks=slow_only)])
def test_crash_loop_loses_nothing_and_repeats_within_the_bound(module_broker, tmp_path, daemons, form) -> None:
    bootstrap = module_broker.bootstrap
    topic, results = f"crash-{uuid.uuid4().hex[:8]}", f"crash-meta-{uuid.uuid4().hex[:8]}"
    rng = random.Random(form.seed)
    dirs = [tmp_path / "src" / f"b{i}" for i in range(form.batches)]
    files: dict[str, bytes] = {}
    for i, directory in enumerate(dirs):
        files.update(make_files(directory, form.files_per_batch, form.min_size, form.max_size,
                                seed=form.seed * 100 + i))
    record = tmp_path / "record.txt"
    env = {"OMSD_TEST_RECORD": str(record), "OMSD_TEST_SLOW": str(form.slow_s)}
    daemon = Daemon(tmp_path / "d", bootstrap, topic, label="d", steps=STEPS.replace("RESULTS", results),
                    workers=WORKERS, env=env)
    daemons.append(daemon)
    uploads = Uploads(uploader_config(tmp_path / "upload.yaml", bootstrap), topic, dirs, form.chunk_size, gap_s=1.5)

    worker_kills = supervisor_kills = 0
    deaths: Counter[str] = Counter()
    uploads.start()
    for _round in range(form.rounds):
        daemon.start()
        targeted: set[str] = set()
        for _kill in range(form.worker_kills):
            if kill_busy_worker(daemon, targeted, rng):
                worker_kills += 1
                time.sleep(rng.uniform(0.3, 1.2))
        wait_for(lambda: daemon.busy_workers(), 30, "a worker busy before the supervisor kill", daemon.proc,
                 daemon.log)
        time.sleep(rng.uniform(0.0, 0.3))
        daemon.kill()
        supervisor_kills += 1
        deaths += worker_deaths(daemon.log)
        daemon.log.rename(daemon.log.with_suffix(f".{_round}.log"))

    daemon.start()
    uploads.join(120)
    assert uploads.error is None, uploads.error
    wait_for(lambda: daemon.saved() == files and set(recorded_paths(record)) == set(files), 120,
             "every file saved and recorded", daemon.proc, daemon.log)
    assert daemon.stop() == 0
    deaths += worker_deaths(daemon.log)
    daemon.reap_orphans()

    # Enough chaos happened for the test to mean something.
    assert worker_kills >= form.rounds * form.worker_kills - 1, worker_kills
    assert supervisor_kills == form.rounds

    # Every file byte-identical, and no half-written temporary file left behind by a killed save.
    assert daemon.saved() == files
    # Every metadata result is in the result topic, computed from the right bytes.
    keys = {result_key(rel): rel for rel in files}
    seen = consume_results(bootstrap, results, set(keys))
    assert set(keys) <= set(seen), sorted(set(keys) - set(seen))
    for key, rel in keys.items():
        want = {"path": rel, "size": len(files[rel]),
                "sha512": hashlib.sha512(files[rel]).hexdigest()}
        assert want in seen[key], (rel, seen[key])

    # Repeats within the bound.
    counts = Counter(recorded_paths(record))
    for rel, count in counts.items():
        assert count <= 1 + deaths[rel] + supervisor_kills, (rel, count, deaths[rel])
    extra = sum(c - 1 for c in counts.values())
    assert extra <= worker_kills + supervisor_kills * WORKERS, (extra, worker_kills, supervisor_kills)

    # A clean restart afterwards processes nothing and reads nothing again.
    lines_before = record.read_text()
    daemon.start()
    daemon.wait_assigned(30, at_least=4)
    daemon.wait_ready()
    time.sleep(2)
    status = daemon.status()
    assert status is not None
    assert status["totals"]["files_completed"] == 0, status["totals"]
    assert status["totals"]["messages_read"] == 0, status["totals"]
    assert daemon.stop() == 0
    assert record.read_text() == lines_before


def one_file_daemon(tmp_path: Path, bootstrap: str, topic: str, daemons: list, steps: str, env: dict) -> Daemon:
    daemon = Daemon(tmp_path / "d", bootstrap, topic, label="d", steps=steps, workers=1, env=env)
    daemons.append(daemon)
    return daemon


def save_record_daemon(tmp_path: Path, bootstrap: str, daemons: list) -> tuple[Daemon, str, Path]:
    """A one-worker daemon running save → record on a fresh topic; it, its topic and its record file."""
    topic = f"crash-{uuid.uuid4().hex[:8]}"
    record = tmp_path / "record.txt"
    steps = """      - save: {{dir: {out}}}
      - call: {{function: tests.reliability.funcs:record}}
"""
    daemon = one_file_daemon(tmp_path, bootstrap, topic, daemons, steps, {"OMSD_TEST_RECORD": str(record)})
    return daemon, topic, record


def test_worker_death_does_not_repeat_finished_steps(module_broker, tmp_path, daemons) -> None:
    topic = f"crash-{uuid.uuid4().hex[:8]}"
    record, started = tmp_path / "record.txt", tmp_path / "started.txt"
    steps = """      - save: {{dir: {out}}}
      - call: {{function: tests.reliability.funcs:record}}
      - call: {{function: tests.reliability.funcs:slow}}
"""
    daemon = one_file_daemon(tmp_path, module_broker.bootstrap, topic, daemons, steps,
                             {"OMSD_TEST_RECORD": str(record), "OMSD_TEST_STARTED": str(started),
                              "OMSD_TEST_LONG": "2"})
    data = random.Random(3).randbytes(200_000)
    produce_files(module_broker.bootstrap, topic, {"scan/one.long": data})
    daemon.start()
    wait_for(lambda: read_lines(started), 60, "the analysis step started", daemon.proc, daemon.log)
    time.sleep(0.3)  # the supervisor has recorded the save and record steps by now
    os.kill(int(read_lines(started)[0][2]), signal.SIGKILL)
    wait_for(lambda: (daemon.status() or {}).get("totals", {}).get("files_completed") == 1, 60,
             "the file finished after the worker death", daemon.proc, daemon.log)
    assert daemon.stop() == 0
    assert len(read_lines(started)) == 2, "the step in progress at the death ran again"
    assert daemon.saved() == {"scan/one.long": data}
    assert recorded_paths(record) == ["scan/one.long"], "a step finished before the death ran again"


def test_save_killed_midway_leaves_no_temporary_file(module_broker, tmp_path, daemons) -> None:
    """A worker killed while its save step copies leaves a partial temporary file; once the file is handed out
    again and saved, no temporary file is left in the output directory."""
    daemon, topic, record = save_record_daemon(tmp_path, module_broker.bootstrap, daemons)
    data = random.Random(4).randbytes(96 << 20)
    daemon.start()
    daemon.wait_ready()
    (worker,) = daemon.status()["workers"]
    produce_files(module_broker.bootstrap, topic, {"big.bin": data}, chunk_size=4 << 20)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # kill the worker while its save is copying
        try:
            if any(name.startswith(".omsd-tmp-") for name in os.listdir(daemon.out)):
                os.kill(worker["pid"], signal.SIGKILL)
                if (daemon.out / "big.bin").exists() or not daemon.temp_leftovers():
                    raise RuntimeError("the kill came after the save had finished")
                break
        except FileNotFoundError:
            pass
        time.sleep(0.001)
    else:
        raise RuntimeError("never saw the save step's temporary file")
    wait_for(lambda: daemon.saved() == {"big.bin": data} and recorded_paths(record), 60,
             "the file saved after the worker death", daemon.proc, daemon.log)
    assert daemon.stop() == 0
    assert not daemon.temp_leftovers(), daemon.temp_leftovers()


def test_kill_with_finished_files_above_a_held_offset_reruns_none_of_them(module_broker, tmp_path, daemons) -> None:
    """A file still being uploaded holds its partition's committed offset; files after it finish. After kill -9
    and a restart they are read again (they are above the offset) and recognised as done: nothing runs twice,
    and the held file completes once its last chunks arrive."""
    daemon, topic, record = save_record_daemon(tmp_path, module_broker.bootstrap, daemons)
    rng = random.Random(6)
    held = rng.randbytes(4 << 16)
    held_chunks = chunk_messages("upload/held.dat", held)
    later = {f"upload/later_{i}.dat": rng.randbytes(rng.randint(1000, 100_000)) for i in range(6)}
    messages = [(*held_chunks[0], 0)]
    for rel, data in later.items():
        messages += [(k, v, 0) for k, v in chunk_messages(rel, data)]
    produce(module_broker.bootstrap, topic, messages)
    daemon.start()
    wait_for(lambda: daemon.saved() == later and sorted(recorded_paths(record)) == sorted(later), 60,
             "the later files finished", daemon.proc, daemon.log)
    time.sleep(1.5)  # a commit tick has passed: the offset committed is the held file's first chunk
    daemon.kill()
    produce(module_broker.bootstrap, topic, [(k, v, 0) for k, v in held_chunks[1:]])
    daemon.start()
    wait_for(lambda: daemon.saved() == {**later, "upload/held.dat": held}, 60, "the held file saved",
             daemon.proc, daemon.log)
    status = daemon.status()
    assert status is not None
    assert status["totals"]["files_completed"] == 1, status["totals"]
    assert status["totals"]["messages_read"] == len(messages) + len(held_chunks) - 1, status["totals"]
    assert daemon.stop() == 0
    assert sorted(recorded_paths(record)) == sorted([*later, "upload/held.dat"])
