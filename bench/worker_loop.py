"""One spawned worker fed through its pipe as the pool feeds it: its CPU per file, without Kafka or a supervisor.

A profiling aid, not a comparison. It stages ``--files`` files of 1-64 KiB in ``/dev/shm`` (as the
supervisor would), starts a real worker (``workers.main.worker_main``, spawned, with a ``save``
pipeline into ``--out``), sends it the files 16 at a time in ``Tasks`` messages while it holds at
most 32 unfinished ones, and reads its reports until every file is done. It prints, per round, the
worker's user and system CPU per file, its files per second and its voluntary and involuntary context
switches per file (interpreter-lock handoffs between its threads show up there), then the median.
The figures move far less with the host than a whole `omsd download` does, so a change to the
worker's per-file path can be judged by them:

    .venv/bin/python bench/worker_loop.py --files 3000 --rounds 5
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_download import generate  # noqa: E402
from precompile import compile_sources  # noqa: E402
from workers.main import worker_main  # noqa: E402
from workers.messages import FileMeta, FileTask, MessageKind, Stop, Tasks  # noqa: E402

SEND_AT_ONCE = 16
HELD_AT_MOST = 32


def stage(directory: Path, n: int, seed: int) -> list[FileTask]:
    """``n`` staged files of 1-64 KiB (generated as the other benches generate theirs), and the tasks
    that name them."""
    rng = random.Random(seed)
    tasks = []
    for i, source in enumerate(generate(directory, n, [rng.randint(1024, 65536) for _ in range(n)])):
        subdir, _, filename = source.relative_path.rpartition("/")
        meta = FileMeta(relative_path=source.relative_path, subdir_str=subdir, filename=filename,
                        file_hash=source.sha512, file_mtime=1_700_000_000.0, topic="bench")
        tasks.append(FileTask(task_id=i, path=str(source.path), size=source.size, file=meta, pipelines=("save",),
                              done={}, chunks=((1, 0, source.size, source.sha512),), sync_whole_fs=True))
    return tasks


def one_round(tasks: list[FileTask], out: Path) -> dict[str, float]:
    """Feed one fresh worker every task; its CPU and context switches per file, and files per second."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=True)
    pipelines = [{"name": "save", "topic": "bench", "steps": [{"save": {"dir": str(out)}}]}]
    process = ctx.Process(target=worker_main, args=(0, child, pipelines, True), daemon=True)
    process.start()
    child.close()
    if parent.recv().kind is not MessageKind.READY:
        raise SystemExit("the worker did not boot")
    worker = psutil.Process(process.pid)
    cpu0, switches0, started = worker.cpu_times(), worker.num_ctx_switches(), time.monotonic()
    done = sent = held = 0
    while done < len(tasks):
        while sent < len(tasks) and held < HELD_AT_MOST:
            batch = tasks[sent:sent + SEND_AT_ONCE]
            parent.send(Tasks(tuple(batch)))
            sent += len(batch)
            held += len(batch)
        message = parent.recv()
        for report in message.reports if message.kind is MessageKind.REPORTS else (message,):
            if report.kind is MessageKind.RESULT:
                if report.status.value != "ok":
                    raise SystemExit(f"file {report.task_id} failed: {report.error}")
                done += 1
                held -= 1
    cpu1, switches1, wall = worker.cpu_times(), worker.num_ctx_switches(), time.monotonic() - started
    parent.send(Stop())
    process.join(10)
    n = len(tasks)
    return {"user": (cpu1.user - cpu0.user) / n * 1e6, "system": (cpu1.system - cpu0.system) / n * 1e6,
            "files_s": n / wall, "voluntary": (switches1.voluntary - switches0.voluntary) / n,
            "involuntary": (switches1.involuntary - switches0.involuntary) / n}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="where the worker saves (default: under /dev/shm)")
    args = parser.parse_args(argv)
    compile_sources()
    staging = Path(tempfile.mkdtemp(prefix="omsd-bench-loop-", dir="/dev/shm"))
    out = args.out or staging.with_name(staging.name + "-out")
    try:
        tasks = stage(staging, args.files, args.seed)
        totals = []
        for round_no in range(1, args.rounds + 1):
            r = one_round(tasks, out)
            totals.append(r["user"] + r["system"])
            print(f"round {round_no}: {r['user'] + r['system']:6.1f} µs CPU per file (user {r['user']:.1f}, "
                  f"system {r['system']:.1f}), {r['files_s']:.0f} files/s, context switches per file: "
                  f"{r['voluntary']:.2f} voluntary, {r['involuntary']:.2f} involuntary", flush=True)
        print(f"median of {args.rounds}: {statistics.median(totals):.1f} µs of worker CPU per file "
              f"(psutil's CPU times tick every 10 ms: use a few thousand files)")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
