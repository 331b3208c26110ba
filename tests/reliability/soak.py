"""Soak run (release check, not collected by pytest): continuous uploads and random kills for N minutes.

    .venv/bin/python -m tests.reliability.soak --minutes 60

First half: `omsd upload` batches every few seconds while workers are killed
with kill -9 and the supervisor is killed with kill -9 or stopped with
SIGTERM and started again. Second half: uploads and worker kills only, so one
supervisor lives long enough to judge its resources. It passes (exit 0) when:

- every uploaded file is saved byte-identical (sha512) and recorded;
- the record step's repeats stay within worker kills + supervisor kills × workers
  (plus one per file handed back by a timed-out graceful stop);
- the long-lived supervisor's RSS and open file descriptors stay flat: the
  maximum over the last third of its samples exceeds the maximum over the
  first third by at most max(32 MiB, 15 %) and 8 descriptors;
- no staging segment outlives a graceful stop: after each one, and at the
  end, /dev/shm and state_dir/spill hold nothing with the daemon's prefix,
  and while it runs the segments never exceed the files it reports in staging;
- a clean restart afterwards reads and processes nothing.

The embedded broker keeps every message in memory, so the upload rate is
chosen to put at most ``--broker-mb`` through it over the run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from omsd.dev.broker import EmbeddedBroker
from tests.chunks import wait_for
from tests.reliability.conftest import Daemon, upload, uploader_config
from tests.reliability.funcs import recorded_paths

STEPS = """      - save: {{dir: {out}}}
      - call: {{function: tests.reliability.funcs:record}}
      - call: {{function: tests.reliability.funcs:slow}}
"""
SAMPLE_EVERY_S = 5.0
WARM_UP_S = 60.0


@dataclass
class Sample:
    t: float
    pid: int
    rss: int
    fds: int
    workers_rss: int
    shm_segments: int
    staged_files: int


@dataclass
class Soak:
    """State of one soak run."""

    args: argparse.Namespace
    root: Path
    bootstrap: str
    topic: str = field(default_factory=lambda: f"soak-{uuid.uuid4().hex[:8]}")
    expected: dict[str, tuple[int, str]] = field(default_factory=dict)  # path -> (size, sha512)
    worker_kills: int = 0
    supervisor_kills: int = 0
    graceful_stops: int = 0
    timed_out_stops: int = 0
    batches: int = 0
    samples: list[Sample] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.args.seed)
        self.record = self.root / "record.txt"
        env = {"OMSD_TEST_RECORD": str(self.record), "OMSD_TEST_SLOW": str(self.args.slow)}
        self.daemon = Daemon(self.root / "daemon", self.bootstrap, self.topic, label="soak", steps=STEPS,
                             workers=self.args.workers, extra="shutdown_timeout_secs: 10\n", env=env)
        self.upload_config = uploader_config(self.root / "upload.yaml", self.bootstrap)
        seconds = self.args.minutes * 60
        mean_file = (self.args.min_size + self.args.max_size) / 2
        self.batch_every = max(1.0, seconds * self.args.files_per_batch * mean_file / (self.args.broker_mb << 20))

    # -- actions -----------------------------------------------------------------------------------
    def upload_batch(self) -> None:
        src = self.root / "src" / f"batch{self.batches:05d}"
        for i in range(self.args.files_per_batch):
            rel = f"run{self.batches % 7}/b{self.batches:05d}_{i:02d}.dat"
            data = self.rng.randbytes(self.rng.randint(self.args.min_size, self.args.max_size))
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_bytes(data)
            self.expected[rel] = (len(data), hashlib.sha512(data).hexdigest())
        upload(self.upload_config, self.topic, src, chunk_size=1 << 18)
        shutil.rmtree(src)
        self.batches += 1

    def kill_worker(self) -> None:
        busy = self.daemon.busy_workers() or (self.daemon.status() or {}).get("workers", [])
        pids = [w["pid"] for w in busy if w.get("pid")]
        if pids:
            try:
                os.kill(self.rng.choice(pids), signal.SIGKILL)
                self.worker_kills += 1
            except ProcessLookupError:
                pass

    def restart_supervisor(self) -> None:
        # Only once the daemon is in its group: the embedded broker never completes the group's next join when
        # a member leaves (graceful stop) while its own join is still in progress.
        if self.daemon.assigned() == 0:
            return
        if self.rng.random() < 0.5:
            self.daemon.kill()
            self.supervisor_kills += 1
        else:
            started = time.monotonic()
            code = self.daemon.stop(signal.SIGTERM, timeout=120)
            if code != 0:
                self.problems.append(f"graceful stop exited {code}")
            if time.monotonic() - started > 10:
                self.timed_out_stops += 1
            self.graceful_stops += 1
            self.check_no_staging_left("after a graceful stop")
        self.daemon.reap_orphans(timeout=30)
        self.daemon.start()

    # -- measurements ------------------------------------------------------------------------------
    def segments(self) -> list[Path]:
        return self.daemon.staging_leftovers()

    def check_no_staging_left(self, when: str) -> None:
        left = self.segments()
        if left:
            self.problems.append(f"{len(left)} staging segments left {when}: {[p.name for p in left[:5]]}")

    def sample(self) -> None:
        status = self.daemon.status()
        if status is None or not self.daemon.running:
            return
        try:
            proc = psutil.Process(self.daemon.proc.pid)  # type: ignore[union-attr]
            rss, fds = proc.memory_info().rss, proc.num_fds()
        except psutil.Error:
            return
        workers_rss = 0
        for worker in status["workers"]:
            try:
                workers_rss += psutil.Process(worker["pid"]).memory_info().rss if worker.get("pid") else 0
            except psutil.Error:
                pass
        segments = len(self.segments())
        staged = status["staging"].get("files", 0)
        # Segments of a killed predecessor are removed at start; a live daemon owns exactly its staged files.
        if segments > staged + self.args.workers * 4:
            self.problems.append(f"{segments} staging segments on disk but {staged} files staged")
        self.samples.append(Sample(time.monotonic(), proc.pid, rss, fds, workers_rss, segments, staged))

    # -- the run -----------------------------------------------------------------------------------
    def run(self) -> dict:
        start = time.monotonic()
        half, end = start + self.args.minutes * 30, start + self.args.minutes * 60
        self.upload_batch()  # the topic exists before the daemon subscribes
        self.daemon.start()
        next_upload = next_action = next_sample = time.monotonic()
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_upload:
                self.upload_batch()
                next_upload = now + self.batch_every
            if now >= next_action:
                if now < half and self.rng.random() < 0.3:
                    self.restart_supervisor()
                else:
                    self.kill_worker()
                next_action = time.monotonic() + self.rng.uniform(0.5, 1.5) * self.args.kill_every
            if now >= next_sample:
                self.sample()
                next_sample = now + SAMPLE_EVERY_S
            if not self.daemon.running and self.daemon.proc is not None:
                self.problems.append(f"the daemon exited on its own ({self.daemon.proc.returncode})")
                self.daemon.start()
            time.sleep(0.2)
        self.finish()
        return self.summary(time.monotonic() - start)

    def saved_ok(self) -> bool:
        out = self.daemon.out
        for rel, (size, _digest) in self.expected.items():
            path = out / rel
            if not path.is_file() or path.stat().st_size != size:
                return False
        return set(self.expected) <= set(recorded_paths(self.record))

    def finish(self) -> None:
        wait_for(self.saved_ok, 600, "every uploaded file saved and recorded", self.daemon.proc, self.daemon.log)
        for rel, (_size, digest) in self.expected.items():
            if hashlib.sha512((self.daemon.out / rel).read_bytes()).hexdigest() != digest:
                self.problems.append(f"{rel}: saved content differs")
        code = self.daemon.stop(signal.SIGTERM, timeout=120)
        if code != 0:
            self.problems.append(f"final graceful stop exited {code}")
        self.check_no_staging_left("at the end")
        self.daemon.reap_orphans()
        counts = Counter(recorded_paths(self.record))
        extra = sum(c - 1 for c in counts.values())
        bound = self.worker_kills + self.supervisor_kills * self.args.workers + self.timed_out_stops * self.args.workers
        if extra > bound:
            self.problems.append(f"{extra} repeated record steps, bound {bound}")
        self.extra = extra
        self.check_flat()
        # A clean restart afterwards reads and processes nothing.
        before = self.record.read_text()
        self.daemon.start()
        self.daemon.wait_assigned(60, at_least=1)
        time.sleep(5)
        status = self.daemon.status() or {}
        totals = status.get("totals", {})
        if totals.get("messages_read") or totals.get("files_completed"):
            self.problems.append(f"the clean restart read or processed again: {totals}")
        self.daemon.stop(signal.SIGTERM, timeout=60)
        if self.record.read_text() != before:
            self.problems.append("the clean restart ran the record step again")

    def check_flat(self) -> None:
        """RSS and descriptors of the last supervisor, after its warm-up."""
        if not self.samples:
            self.problems.append("no resource samples")
            return
        last_pid = self.samples[-1].pid
        mine = [s for s in self.samples if s.pid == last_pid]
        mine = [s for s in mine if s.t - mine[0].t >= min(WARM_UP_S, (mine[-1].t - mine[0].t) / 4)]
        if len(mine) < 6:
            self.problems.append(f"too few samples of the last supervisor ({len(mine)}) to judge its resources")
            return
        third = len(mine) // 3
        first, last = mine[:third], mine[-third:]
        rss_first, rss_last = max(s.rss for s in first), max(s.rss for s in last)
        fds_first, fds_last = max(s.fds for s in first), max(s.fds for s in last)
        self.flat = {"samples": len(mine), "rss_first_mib": rss_first >> 20, "rss_last_mib": rss_last >> 20,
                     "fds_first": fds_first, "fds_last": fds_last,
                     "span_min": round((mine[-1].t - mine[0].t) / 60, 1)}
        if rss_last - rss_first > max(32 << 20, rss_first * 0.15):
            self.problems.append(f"supervisor RSS grew from {rss_first >> 20} to {rss_last >> 20} MiB")
        if fds_last - fds_first > 8:
            self.problems.append(f"supervisor descriptors grew from {fds_first} to {fds_last}")

    def summary(self, took: float) -> dict:
        return {"ok": not self.problems, "problems": self.problems, "minutes": round(took / 60, 1),
                "files": len(self.expected), "batches": self.batches, "worker_kills": self.worker_kills,
                "supervisor_kills": self.supervisor_kills, "graceful_stops": self.graceful_stops,
                "timed_out_stops": self.timed_out_stops, "repeated_records": getattr(self, "extra", None),
                "resources": getattr(self, "flat", None),
                "peak_workers_rss_mib": max((s.workers_rss for s in self.samples), default=0) >> 20,
                "peak_shm_segments": max((s.shm_segments for s in self.samples), default=0)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="length of the run (default 60)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--files-per-batch", type=int, default=6)
    parser.add_argument("--min-size", type=int, default=50_000)
    parser.add_argument("--max-size", type=int, default=2_000_000)
    parser.add_argument("--broker-mb", type=int, default=2000, help="data to put through the in-memory broker")
    parser.add_argument("--kill-every", type=float, default=8.0, help="mean seconds between kills")
    parser.add_argument("--slow", type=float, default=0.2, help="seconds of the analysis step per file")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--bootstrap", default=None, help="use this broker instead of an embedded one")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="omsd-soak-"))
    broker = None
    if args.bootstrap is None:
        broker = EmbeddedBroker(data_dir=root / "broker")
        broker.start()
    soak = Soak(args, root, args.bootstrap or broker.bootstrap)  # type: ignore[union-attr]
    try:
        result = soak.run()
    except BaseException as exc:  # noqa: BLE001 - reported in the summary, the daemon is cleaned up below
        result = soak.summary(0.0) | {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    finally:
        if soak.daemon.running:
            soak.daemon.kill()
        soak.daemon.reap_orphans(timeout=10)
        if broker is not None:
            broker.stop()
    result["workdir"] = str(root) if args.keep or not result["ok"] else None
    print(json.dumps(result, indent=2))
    if not args.keep and result["ok"]:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
