"""CPU-bound processing: omsd `workers: 2` vs an OpenMSIStream DataFileStreamProcessor with `--n_threads 2`.

One run, one fresh embedded broker, one topic with a dozen small files. Both
readers run the same pure-Python function (`analyse`, about a second of CPU
per file, holding the GIL) on every file: omsd as a `call` step in its worker
processes, OpenMSIStream in its consumer threads. Each call records its pid,
thread, start, end and CPU time; a reader's time is the span from the first
call's start to the last call's end (start-up and group joins are left out
for both). The mean wall and CPU seconds per call are printed too: a wall
well above the CPU means the reader was waiting for a core (other load).

    .venv/bin/python bench/bench_cpu.py                  # 12 files, 2 workers / 2 threads
    .venv/bin/python bench/bench_cpu.py --names balanced     # names that split evenly over the workers
    .venv/bin/python bench/bench_cpu.py --names uneven       # 16 names whose home slots split 10/6
    .venv/bin/python bench/bench_cpu.py --files 24 --workers 4 --iterations 3000000

Each path hashes to a home slot; with ``dispatch: sharded`` a file runs only
there, so a dozen files rarely split evenly and the split bounds the speed-up
(printed). With the default ``dispatch: balanced`` an idle worker takes any
waiting file whose path has nothing in flight, so the split no longer matters:
``--names uneven`` checks that (10 of 16 files on one home slot), and
``--dispatch sharded`` shows the old bound. omsd's speed-up is also given
against one core (files x the time one burn takes alone / omsd's span), as a
share of the machine's ceiling.

This module is also the step function's home, so it imports nothing heavy at
module level (omsd's workers import it).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SESSION_TIMEOUT_MS = 2000
ITERATIONS = int(os.environ.get("BENCH_CPU_ITERATIONS", "7000000"))


# -- the work, identical for both readers ------------------------------------------------------------
def burn(iterations: int) -> int:
    """Pure-Python arithmetic: the kind of per-file analysis that holds the GIL."""
    acc = 0
    for i in range(iterations):
        acc = (acc + i * i) % 1_000_003
    return acc


def analyse(datafile) -> None:
    """The step function: burn CPU, then append a timing record to $BENCH_CPU_RECORD."""
    start, cpu0 = time.time(), time.process_time()
    burn(ITERATIONS + len(datafile.bytestring) % 7)
    end, cpu1 = time.time(), time.process_time()
    line = json.dumps({"path": str(datafile.relative_filepath), "pid": os.getpid(),
                       "thread": threading.get_ident(), "start": start, "end": end, "cpu_s": cpu1 - cpu0})
    with open(os.environ["BENCH_CPU_RECORD"], "a", encoding="utf-8") as out:
        out.write(line + "\n")


def records(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


# -- OpenMSIStream side (run in its own process) -------------------------------------------------------
def run_openmsistream(config: str, topic: str, output_dir: str, threads: int) -> None:
    """An OpenMSIStream DataFileStreamProcessor running `analyse`; stops on "q" on stdin."""
    from openmsistream import DataFileStreamProcessor

    class AnalysisProcessor(DataFileStreamProcessor):
        def _process_downloaded_data_file(self, datafile, lock):
            try:
                analyse(datafile)
            except Exception as exc:  # noqa: BLE001 - OpenMSIStream's contract: return it
                return exc
            return None

        @classmethod
        def run_from_command_line(cls, args=None):
            raise NotImplementedError

    processor = AnalysisProcessor(Path(config), topic, output_dir=Path(output_dir), n_threads=threads,
                                  consumer_group_id="create_new")
    processor.process_files_as_read()
    processor.close()


# -- the benchmark -------------------------------------------------------------------------------------
def file_names(n: int, workers: int, how: str) -> list[str]:
    """``natural``: run<i%4>/file_<i>.bin (as bench_download names them); ``balanced``: an even split over the
    home slots; ``uneven``: 10/16 of the files on slot 0, the rest spread over the others."""
    if how == "natural":
        return [f"run{i % 4}/file_{i:04d}.bin" for i in range(n)]
    from omsd.wire.sharding import worker_slot_for

    names: list[str] = []
    if how == "uneven" and workers > 1:
        first = round(n * 10 / 16)
        rest = n - first
        want = [first] + [rest // (workers - 1) + (1 if slot < rest % (workers - 1) else 0)
                          for slot in range(workers - 1)]
    else:
        want = [n // workers + (1 if slot < n % workers else 0) for slot in range(workers)]
    i = 0
    while len(names) < n:
        name = f"run{i % 4}/file_{i:04d}.bin"
        slot = worker_slot_for(name, workers)
        if want[slot]:
            want[slot] -= 1
            names.append(name)
        i += 1
    return names


def write_configs(work: Path, bootstrap: str, topic: str, workers: int, group: str,
                  dispatch: str = "balanced") -> tuple[Path, Path]:
    from tests.openmsistream_support import openmsistream_ini

    ini = openmsistream_ini(work / "openmsistream.config", bootstrap, session_timeout_ms=SESSION_TIMEOUT_MS)
    yaml = work / "omsd.yaml"
    yaml.write_text(f"""broker:
  bootstrap.servers: {bootstrap}
consumer:
  group.id: {group}
  session.timeout.ms: {SESSION_TIMEOUT_MS}
  heartbeat.interval.ms: 500
state_dir: {work / 'omsd-state'}
workers: {workers}
dispatch: {dispatch}
pipelines:
  - name: analyse
    topic: {topic}
    steps:
      - call: {{function: bench.bench_cpu:analyse}}
""")
    return ini, yaml


def time_reader(name: str, cmd: list[str], record: Path, n_files: int, log: Path, timeout: float,
                stop) -> dict:
    env = {**os.environ, "BENCH_CPU_RECORD": str(record), "BENCH_CPU_ITERATIONS": str(ITERATIONS)}
    launched = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            cwd=REPO, env=env)
    try:
        while len(records(record)) < n_files:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; log: {log}")
            if time.monotonic() - launched > timeout:
                raise RuntimeError(f"{name}: {len(records(record))}/{n_files} files after {timeout:.0f} s; log: {log}")
            time.sleep(0.05)
        total = time.monotonic() - launched
    finally:
        stop(proc)
    done = records(record)
    span = max(r["end"] for r in done) - min(r["start"] for r in done)
    per_worker: dict[str, int] = {}
    for r in done:
        key = f"pid {r['pid']}" if name == "omsd" else f"thread {r['thread'] % 100000}"
        per_worker[key] = per_worker.get(key, 0) + 1
    return {"reader": name, "span_s": span, "launch_to_done_s": total, "per_worker": per_worker,
            "call_wall_s": statistics.mean(r["end"] - r["start"] for r in done),
            "call_cpu_s": statistics.mean(r["cpu_s"] for r in done)}


def stop_omsd(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    proc.wait(60)


def _burn_wall(iterations: int) -> float:
    start = time.perf_counter()
    burn(iterations)
    return time.perf_counter() - start


def machine_ceiling(workers: int, iterations: int) -> tuple[float, float]:
    """How much more work ``workers`` processes burning at once do than one process alone, on this
    machine (``workers``× on free cores; less on shared or hyper-threaded ones), and the seconds one
    burn takes alone. omsd cannot beat the ceiling: the OpenMSIStream reader runs the step on one
    core at a time (the GIL)."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        alone = pool.apply(_burn_wall, (iterations,))
        together = max(pool.map(_burn_wall, [iterations] * workers, chunksize=1))
    return workers * alone / together, alone


def run(args: argparse.Namespace) -> float:
    sys.path.insert(0, str(REPO))
    from omsd.dev.broker import EmbeddedBroker
    from omsd.wire.sharding import worker_slot_for
    from tests.chunks import produce_files
    from tests.openmsistream_support import quit_openmsistream

    work = Path(tempfile.mkdtemp(prefix="omsd-bench-cpu-"))
    names = file_names(args.files, args.workers, args.names)
    files = {name: os.urandom(4096) for name in names}
    split = [sum(1 for n in names if worker_slot_for(n, args.workers) == slot) for slot in range(args.workers)]
    broker = EmbeddedBroker(data_dir=work / "broker")
    broker.start()
    try:
        topic = "bench_cpu"
        produce_files(broker.bootstrap, topic, files)
        bound = (f"speed-up bound {args.files / max(split):.2f}x" if args.dispatch == "sharded"
                 else "balanced dispatch: any idle worker takes a waiting file")
        print(f"CPUs: {os.cpu_count()}  files: {args.files} ({args.names} names, home slots get {split}; {bound})  "
              f"iterations per file: {ITERATIONS}  work: {work}")
        ceiling, alone = machine_ceiling(args.workers, ITERATIONS)
        print(f"machine ceiling: {args.workers} processes burning at once do {ceiling:.2f}x the work of one "
              f"(ideal {args.workers}x); one burn alone takes {alone:.2f} s")
        ratios = []
        for repeat in range(args.repeat):
            here = work / f"run{repeat}"
            here.mkdir()
            ini, yaml = write_configs(here, broker.bootstrap, topic, args.workers, f"bench-cpu-{repeat}",
                                      args.dispatch)
            results = [
                time_reader("omsd", [sys.executable, "-m", "omsd.cli", "run", "--config", str(yaml)],
                            here / "omsd.jsonl", args.files, here / "omsd.log", args.timeout, stop_omsd),
                time_reader("openmsistream", [sys.executable, str(Path(__file__).resolve()), "_oms", str(ini),
                                              topic, str(here / "oms-out"), str(args.workers)],
                            here / "oms.jsonl", args.files, here / "oms.log", args.timeout, quit_openmsistream),
            ]
            ratios.append(report(results, args.workers, ceiling, args.files * alone))
    finally:
        broker.stop()
    ratio = statistics.median(ratios)
    if len(ratios) > 1:
        print(f"\nmedian of {len(ratios)} runs: {ratio:.2f}x  (runs: {', '.join(f'{r:.2f}' for r in ratios)})")
    return ratio


def report(results: list[dict], workers: int, ceiling: float, serial_s: float) -> float:
    print(f"\n{'reader':54} {'span s':>7} {'launch→done s':>14} {'call wall/CPU s':>16}  files per worker")
    labels = {"omsd": f"omsd (workers: {workers})",
              "openmsistream": f"OpenMSIStream DataFileStreamProcessor (--n_threads {workers})"}
    for r in results:
        print(f"{labels[r['reader']]:54} {r['span_s']:7.2f} {r['launch_to_done_s']:14.2f} "
              f"{r['call_wall_s']:8.2f}/{r['call_cpu_s']:.2f}  {sorted(r['per_worker'].values(), reverse=True)}")
    ratio = results[1]["span_s"] / results[0]["span_s"]
    speedup = serial_s / results[0]["span_s"]
    print(f"omsd is {ratio:.2f}x faster than OpenMSIStream on this CPU-bound step (target >= 1.6x on 2 cores); "
          f"{ratio / ceiling:.0%} of this machine's ceiling ({ceiling:.2f}x)")
    print(f"omsd's speed-up over one core: {speedup:.2f}x (files x one burn alone / span) = {speedup / ceiling:.0%} "
          f"of the ceiling (target >= 90%: {'met' if speedup >= 0.9 * ceiling else 'MISSED'})", flush=True)
    return ratio


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_oms"]:
        config, topic, output_dir, threads = argv[1:5]
        run_openmsistream(config, topic, output_dir, int(threads))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=None, help="number of files (default 12; 16 for uneven)")
    parser.add_argument("--workers", type=int, default=2, help="omsd workers and OpenMSIStream threads (2)")
    parser.add_argument("--names", choices=("natural", "balanced", "uneven"), default="natural",
                        help="file names: natural (default), chosen to split evenly over omsd's home slots, or "
                             "uneven (10/16 on one slot; 16 files unless --files is given)")
    parser.add_argument("--dispatch", choices=("balanced", "sharded"), default="balanced",
                        help="omsd's dispatch policy (default balanced)")
    parser.add_argument("--iterations", type=int, default=None, help="loop iterations per file")
    parser.add_argument("--repeat", type=int, default=1, help="alternate the two readers N times; median ratio")
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args(argv)
    from precompile import compile_sources  # here: the daemon imports this module for its step, without bench/

    compile_sources()
    if args.files is None:
        args.files = 16 if args.names == "uneven" else 12
    if args.iterations:
        global ITERATIONS
        ITERATIONS = args.iterations
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
