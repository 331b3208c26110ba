"""Dispatch: balanced by default (a slow file holds up nobody while a worker is idle, one path's generations
never run at once and keep their order), strictly by home slot with ``dispatch: sharded``."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from omsd.control.client import ControlClient
from omsd.wire.sharding import worker_slot_for
from tests.chunks import chunk_messages, json_lines, produce, start_daemon, stop_daemon, wait_for
from tests.conftest import pipeline, write_config


def names_with_home(home: int, n: int, stem: str) -> list[str]:
    out, i = [], 0
    while len(out) < n:
        name = f"d{i}/{stem}{i}.bin"
        if worker_slot_for(name, 2) == home:
            out.append(name)
        i += 1
    return out


def produce_in_order(bootstrap: str, topic: str, files: list[tuple[str, bytes]]) -> None:
    """Every chunk of every file into partition 0, in this order (so the daemon reads them in it)."""
    produce(bootstrap, topic, [(k, v, 0) for rel, data in files for k, v in chunk_messages(rel, data)])


def run_daemon(tmp_path: Path, bootstrap: str, topic: str, files: list[tuple[str, bytes]], slow_s: float,
               dispatch: str | None = None) -> list[dict]:
    """Produce ``files`` in order, run a record_span pipeline on 2 workers until each was recorded; the spans."""
    record = tmp_path / "spans.jsonl"
    extra = f"dispatch: {dispatch}\n" if dispatch else ""
    cfg = write_config(tmp_path / "omsd.yaml", bootstrap,
                       pipeline("spans", topic, "call: {function: tests.integration.funcs:record_span}", retries=0),
                       workers=2, extra=extra)
    log = tmp_path / "daemon.log"
    proc = start_daemon(["run", "--config", str(cfg)], log, {"OMSD_TEST_RECORD": str(record),
                                                            "OMSD_TEST_SLOW": str(slow_s)})
    control = ControlClient(tmp_path / "state" / "omsd.sock")

    def both_workers_running() -> bool:
        try:
            workers = control.request("status")["workers"]
        except Exception:  # not listening yet
            return False
        return len(workers) == 2 and all(w["state"] == "RUNNING" for w in workers)

    try:
        # Both workers take work before the first file arrives, so "a worker is idle" is what is tested,
        # not which worker happened to finish booting first.
        wait_for(both_workers_running, 60, "both workers running", proc, log)
        produce_in_order(bootstrap, topic, files)
        wait_for(lambda: len(json_lines(record)) == len(files), 60, "every file recorded", proc, log)
        workers = control.request("status")["workers"]
    finally:
        assert stop_daemon(proc) == 0
    slot_of = {w["pid"]: w["slot"] for w in workers}
    return [{**s, "slot": slot_of.get(s["pid"])} for s in json_lines(record)]


def test_a_slow_file_does_not_hold_up_the_files_behind_it_while_a_worker_is_idle(broker, topic, tmp_path) -> None:
    rng = random.Random(11)
    (slow,) = names_with_home(0, 1, "slow")
    fast = names_with_home(0, 6, "fast")  # the same home slot as the slow file, queued behind it
    files = [(slow, rng.randbytes(3000))] + [(name, rng.randbytes(3000)) for name in fast]
    recorded = run_daemon(tmp_path, broker.bootstrap, topic, files, slow_s=2.0)
    by_path = {s["path"]: s for s in recorded}
    assert [s["path"] for s in recorded][-1] == slow, "the slow file finished last"
    assert all(by_path[name]["pid"] != by_path[slow]["pid"] for name in fast), "the idle worker took them all"


def test_generations_of_one_path_never_run_at_once_and_finish_in_upload_order(broker, topic, tmp_path) -> None:
    rng = random.Random(12)
    same = "run/same.bin"
    generations = [rng.randbytes(2000) for _ in range(3)]
    others = [(f"o{i}/other{i}.bin", rng.randbytes(2000)) for i in range(8)]
    # gen1, then others, gen2, more others, gen3: all waiting when the daemon starts
    files = [(same, generations[0]), *others[:4], (same, generations[1]), *others[4:], (same, generations[2])]
    recorded = run_daemon(tmp_path, broker.bootstrap, topic, files, slow_s=0.4)
    runs = [s for s in recorded if s["path"] == same]
    assert [r["sha"] for r in runs] == [hashlib.sha512(g).hexdigest()[:16] for g in generations], "upload order"
    for earlier, later in zip(runs, runs[1:]):
        assert earlier["end"] <= later["start"], "two generations of one path ran at once"
    flowed = [s for s in recorded if s["path"] != same and runs[0]["start"] < s["start"] < runs[-1]["end"]]
    assert flowed and {s["slot"] for s in flowed} != {None}, "other paths were processed meanwhile"


def test_sharded_dispatch_sends_every_file_to_its_home_slot(broker, topic, tmp_path) -> None:
    rng = random.Random(13)
    files = [(name, rng.randbytes(1000)) for name in names_with_home(0, 8, "slowa")] + \
            [(name, rng.randbytes(1000)) for name in names_with_home(1, 2, "b")]
    recorded = run_daemon(tmp_path, broker.bootstrap, topic, files, slow_s=0.1, dispatch="sharded")
    assert len(recorded) == len(files)
    assert all(s["slot"] == worker_slot_for(s["path"], 2) for s in recorded), \
        [(s["path"], s["slot"]) for s in recorded if s["slot"] != worker_slot_for(s["path"], 2)]
