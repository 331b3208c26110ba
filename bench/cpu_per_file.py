"""Where omsd's CPU goes for many small files: one `omsd download`, its processes' CPU time per file.

Not a comparison (bench_small.py is): a tool for profiling the per-file path. It produces ``--files``
files of 1-64 KiB (one chunk each) into a topic of the embedded broker, runs `omsd download` on it
until every file is saved and verified, and prints the time to the first file, the rate from then
on, and the user and system CPU seconds of the supervisor, of each worker and of the broker, per
file too. With ``--work-dir`` on tmpfs (``/dev/shm/...``) the output's file system costs little,
and what is left is omsd's own work. ``--py-spy FILE`` records the supervisor and its workers
(``py-spy record --subprocesses --format raw``) for the whole run.

    .venv/bin/python bench/cpu_per_file.py --files 12000 --work-dir /dev/shm/omsd-cpu
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_download import (  # noqa: E402
    REPO, Verifier, generate, produce_omsd_format, start_omsd_download, stop_omsd, write_omsd_config,
)
from precompile import compile_sources  # noqa: E402


def cpu(process: psutil.Process) -> tuple[float, float]:
    times = process.cpu_times()
    return times.user, times.system


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=12000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work-dir", type=Path, default=None, help="data, output, state (default: a temp dir)")
    parser.add_argument("--py-spy", type=Path, default=None, help="record the daemon with py-spy into this file")
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args(argv)
    compile_sources()
    from omsd.dev.broker import EmbeddedBroker

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="omsd-cpu-"))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rng = random.Random(args.seed)
    files = generate(work / "data", args.files, [rng.randint(1024, 65536) for _ in range(args.files)])
    broker = EmbeddedBroker(data_dir=work / "broker")
    broker.start()
    try:
        produce_omsd_format(broker.bootstrap, "cpu", files)
        config = write_omsd_config(work / "omsd.yaml", broker.bootstrap, work / "state", args.workers)
        out = work / "out"
        broker_process = psutil.Process(broker.process.pid)
        broker_before = sum(cpu(broker_process))
        started = time.monotonic()
        proc = start_omsd_download(out, config, "cpu", "cpu-per-file", work / "omsd.log", args.workers)
        spy = None
        if args.py_spy:
            spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "--subprocesses",
                                    "--format", "raw", "--nonblocking", "--rate", "500", "-o", str(args.py_spy),
                                    "--pid", str(proc.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        verifier = Verifier(out, files, recheck_every=25)  # files seen complete: looked at again every 0.5 s
        try:
            while not verifier.check():
                if proc.poll() is not None or time.monotonic() - started > args.timeout:
                    raise SystemExit(f"omsd download ended or timed out; see {work / 'omsd.log'}")
                time.sleep(0.02)
            total = verifier.finished_at() - started
            first = verifier.first_at() - started
            daemon = psutil.Process(proc.pid)
            rows = [("supervisor", cpu(daemon))]
            workers = [c for c in daemon.children(recursive=True) if "resource_tracker" not in " ".join(c.cmdline())]
            rows += [(f"worker {i}", cpu(child)) for i, child in enumerate(workers)]
            rows.append(("broker", (sum(cpu(broker_process)) - broker_before, 0.0)))
        finally:
            verifier.close()
            if spy is not None:
                spy.send_signal(2)
                spy.wait(60)
            stop_omsd(proc)
    finally:
        broker.stop()
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    n = args.files
    print(f"{n} files: first file after {first:.2f} s, all after {total:.2f} s, "
          f"{n / max(total - first, 1e-9):.0f} files/s from the first on")
    for name, (user, system) in rows:
        label = "user+system" if name == "broker" else f"user {user:.2f} s, system {system:.2f} s"
        print(f"  {name:10s} {user + system:5.2f} CPU s ({label}): {(user + system) / n * 1e6:4.0f} µs per file")
    if args.py_spy:
        print(f"  py-spy record of the daemon run from {REPO}: {args.py_spy}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
