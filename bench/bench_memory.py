"""Memory: peak RSS of `omsd download` (supervisor + workers) while it saves one large file.

One file (default 1.5 GiB of random bytes) is produced to a fresh embedded
broker, chunks spread over all partitions (no partition set). `omsd download`
then runs with ``staging.memory_bytes: 256MiB``; the RSS of the daemon and
all its child processes is sampled together every 50 ms (PSS and USS, which
count shared pages once, every 250 ms) until the output file exists and its
sha512 matches. Target: peak total RSS <= 800 MB.

    .venv/bin/python bench/bench_memory.py                 # 1.5 GiB file
    .venv/bin/python bench/bench_memory.py --size-mib 256  # smaller
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil  # noqa: E402

from precompile import compile_sources  # noqa: E402
from bench_download import (  # noqa: E402
    CHUNK_SIZE, Verifier, generate, produce_omsd_format, start_omsd_download, stop_omsd, tail,
    write_omsd_config,
)

RSS_EVERY_S = 0.05
PSS_EVERY_S = 0.25
TARGET_BYTES = 800 * 10**6


@dataclass
class Peaks:
    """The largest values seen, in bytes."""

    rss: int = 0
    pss: int = 0
    uss: int = 0
    rss_by_role: dict[str, int] = field(default_factory=dict)
    processes: int = 0
    staging_memory_used: int = 0
    staging_spill_used: int = 0
    shm_resident: int = 0  # /dev/shm pages of omsd's staging segments (mapped by nobody, so not in any RSS)
    rss_plus_shm: int = 0
    samples: int = 0


class Sampler:
    """Samples the memory of a process tree until stopped: RSS in one thread, PSS/USS and staging in another."""

    def __init__(self, pid: int, state_dir: Path) -> None:
        from omsd.intake.staging import Staging

        self.root = psutil.Process(pid)
        self.control_socket = state_dir / "omsd.sock"
        self.shm_prefix = Staging(state_dir, 0).prefix  # this daemon's segments only
        self.peaks = Peaks()
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=self._loop, args=(self.sample_rss, RSS_EVERY_S), daemon=True),
                        threading.Thread(target=self._loop, args=(self.sample_details, PSS_EVERY_S), daemon=True)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.stopped.set()
        for thread in self.threads:
            thread.join()

    def _loop(self, sample: object, every_s: float) -> None:
        while not self.stopped.is_set():
            started = time.monotonic()
            sample()  # type: ignore[operator]
            self.stopped.wait(max(0.0, every_s - (time.monotonic() - started)))

    def tree(self) -> list[tuple[str, psutil.Process]]:
        try:
            children = self.root.children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        return [("supervisor", self.root)] + [(f"child {c.pid}", c) for c in children]

    def sample_rss(self) -> None:
        total, by_role = 0, {}
        procs = self.tree()
        for role, proc in procs:
            try:
                rss = proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            total += rss
            by_role[role] = rss
        peaks = self.peaks
        peaks.samples += 1
        shm = shm_resident(self.shm_prefix)
        peaks.shm_resident = max(peaks.shm_resident, shm)
        peaks.rss_plus_shm = max(peaks.rss_plus_shm, total + shm)
        if total > peaks.rss:
            peaks.rss, peaks.rss_by_role, peaks.processes = total, by_role, len(procs)

    def sample_details(self) -> None:
        pss = uss = 0
        for _role, proc in self.tree():
            try:
                info = proc.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            pss += info.pss
            uss += info.uss
        self.peaks.pss, self.peaks.uss = max(self.peaks.pss, pss), max(self.peaks.uss, uss)
        self.read_staging()

    def read_staging(self) -> None:
        from omsd.control.client import ControlClient
        from omsd.control.protocol import ControlError

        try:
            staging = ControlClient(self.control_socket, timeout=1.0).request("status").get("staging", {})
        except (ControlError, OSError):
            return
        self.peaks.staging_memory_used = max(self.peaks.staging_memory_used, staging.get("memory_used", 0))
        self.peaks.staging_spill_used = max(self.peaks.staging_spill_used, staging.get("spill_used", 0))


def shm_resident(prefix: str, shm_dir: Path = Path("/dev/shm")) -> int:
    """Bytes held in tmpfs right now by the staging segments whose names start with ``prefix``."""
    total = 0
    for entry in os.scandir(shm_dir):
        if entry.name.startswith(prefix):
            try:
                total += entry.stat(follow_symlinks=False).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def mb(n: int) -> str:
    return f"{n / 1e6:.0f} MB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=float, default=1536, help="file size in MiB (default 1536 = 1.5 GiB)")
    parser.add_argument("--memory", default="256MiB", help="staging.memory_bytes (default 256MiB)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--chunk-size", type=int, default=CHUNK_SIZE)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--work-dir", type=Path, default=None, help="keep data, output and logs here")
    args = parser.parse_args(argv)
    compile_sources()

    from omsd.dev.broker import EmbeddedBroker

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="omsd-bench-mem-"))
    (work / "logs").mkdir(parents=True, exist_ok=True)
    size = int(args.size_mib * (1 << 20))
    files = generate(work / "data", 1, size)
    print(f"work dir: {work}\nfile: {files[0].relative_path}, {size / (1 << 30):.2f} GiB; staging.memory_bytes: "
          f"{args.memory}; workers: {args.workers}")
    broker = EmbeddedBroker(data_dir=work / "broker")
    broker.start()
    try:
        t = time.monotonic()
        n = produce_omsd_format(broker.bootstrap, "bench_memory", files, args.chunk_size)
        print(f"produced {n} chunks (no partition set: spread over all partitions) in {time.monotonic() - t:.1f} s")
        config = write_omsd_config(work / "omsd.yaml", broker.bootstrap, work / "state", args.workers, args.memory)
        log_path = work / "logs" / "omsd.log"
        started = time.monotonic()
        proc = start_omsd_download(work / "out", config, "bench_memory", "bench-memory", log_path, args.workers)
        sampler = Sampler(proc.pid, work / "state")
        sampler.start()
        verifier = Verifier(work / "out", files)
        try:
            while not verifier.check():
                if proc.poll() is not None:
                    raise RuntimeError(f"omsd exited with {proc.returncode}\n{tail(log_path)}")
                if time.monotonic() - started > args.timeout:
                    raise RuntimeError(f"file not saved after {args.timeout:.0f} s\n{tail(log_path)}")
                time.sleep(0.05)
            elapsed = verifier.finished_at() - started
        finally:
            verifier.close()
            sampler.stop()
            code = stop_omsd(proc)
    finally:
        broker.stop()
    peaks = sampler.peaks
    print(f"saved and verified in {elapsed:.1f} s ({size / 1e6 / elapsed:.0f} MB/s); omsd exit code {code}")
    print(f"peak total RSS : {mb(peaks.rss)} over {peaks.processes} processes "
          f"({', '.join(f'{k} {mb(v)}' for k, v in peaks.rss_by_role.items())})  "
          f"target <= {mb(TARGET_BYTES)}: {'met' if peaks.rss <= TARGET_BYTES else 'MISSED'}")
    print(f"peak total PSS : {mb(peaks.pss)}   peak total USS: {mb(peaks.uss)}   "
          f"({peaks.samples} RSS samples in {elapsed:.1f} s)")
    print(f"peak /dev/shm staging: {mb(peaks.shm_resident)}   peak RSS + /dev/shm staging: {mb(peaks.rss_plus_shm)} "
          "(shared-memory pages written with pwrite are mapped by no process, so RSS does not show them)")
    print(f"staging (omsctl status): peak memory_used {mb(peaks.staging_memory_used)}, "
          f"peak spill_used {mb(peaks.staging_spill_used)}")
    if args.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if code == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
