"""Many small files: in-process raw writer vs OpenMSIStream's DataFileDownloadDirectory vs `omsd download`.

One run, one fresh embedded broker, one data set (default 3000 files of 1–64 KiB,
one chunk each) produced once into one topic per reader (identical content and
order; no partition set, so librdkafka's key hash spreads the files over the 4
partitions as OpenMSIStream's stock uploader does). Each reader is timed from
its launch until every file is on disk with the right bytes (the download
bench's :class:`Verifier`). Then, with that reader caught up and idle, single
files are produced one at a time and the latency from the broker's
acknowledgement of the chunk to the file being complete on disk is measured
(p50 / p95). Before each reader the previous one's dirty pages are written
back (``sync``), so that their writeback does not fall in its time. Besides
the target figure (launch to the last file), each reader's time to its first
file (start-up and group join) and its rate from then on are printed.

    .venv/bin/python bench/bench_small.py                 # 3000 files, 30 latency files
    .venv/bin/python bench/bench_small.py --files 300 --latency 10
    .venv/bin/python bench/bench_small.py --only raw --only omsd --profile
    .venv/bin/python bench/bench_small.py --repeat 3        # three rounds and the medians of the targets

The raw writer runs inside this process (a consumer thread: decode, sha512,
write a temporary file, rename; no fsync), timed from the creation of its
consumer: no interpreter start-up, so that the ratio shows omsd's own cost.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from diskprobe import describe_disk  # noqa: E402
from precompile import compile_sources  # noqa: E402
from bench_download import (  # noqa: E402
    HEARTBEAT_INTERVAL_MS, POLL_S, READERS, REPO, SESSION_TIMEOUT_MS, Profiler, SourceFile, Timing, Verifier,
    add_reader_options, chunk_stream, generate, host_speed, process_cpu, produce_omsd_format, time_omsd,
    time_openmsistream, work_dir,
)

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MIN_SIZE, MAX_SIZE = 1 << 10, 64 << 10
RECHECK_EVERY = 25  # rounds of POLL_S between looks at files already seen complete (see Verifier)
LATENCY_POLL_S = 0.001
IDLE_BEFORE_S = (0.15, 0.3)  # the reader is left idle this long (random) before each latency file
SETTLE_S = 1.0  # pause after the sync that precedes each reader


@dataclass
class Result:
    timing: Timing
    n_files: int
    latencies: list[float] = field(default_factory=list)

    @property
    def files_per_s(self) -> float:
        return self.n_files / self.timing.seconds


# -- the raw writer (in this process) -------------------------------------------------------------------
class RawWriter:
    """A bare consumer thread that saves single-chunk files: decode, check the sha512, write, rename."""

    def __init__(self, bootstrap: str, topic: str, group_id: str, out: Path) -> None:
        from confluent_kafka import Consumer

        self.out = out
        self.started = time.monotonic()
        self.consumer = Consumer({
            "bootstrap.servers": bootstrap, "group.id": group_id, "auto.offset.reset": "earliest",
            "enable.auto.commit": False, "session.timeout.ms": SESSION_TIMEOUT_MS,
            "heartbeat.interval.ms": HEARTBEAT_INTERVAL_MS, "fetch.queue.backoff.ms": 1, "fetch.wait.max.ms": 10,
        })
        self.consumer.subscribe([topic])
        self.written = 0
        self.first_written: float | None = None
        self.errors: list[str] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        import msgpack

        made: set[Path] = set()
        while not self.stopped.is_set():
            first = self.consumer.poll(0.05)  # returns at the first message (consume() waits out its timeout)
            batch = [first, *self.consumer.consume(num_messages=499, timeout=0)] if first is not None else []
            for msg in batch:
                if msg.error() is not None:
                    continue
                fields = msgpack.unpackb(msg.value(), raw=False)
                filename, file_hash, _chunk_hash, offset, _i, n_total, subdir, _append, data = fields[:9]
                if n_total != 1 or offset != 0 or hashlib.sha512(data).digest() != file_hash:
                    self.errors.append(f"{subdir}/{filename}: not a whole, matching single chunk")
                    continue
                directory = self.out / subdir if subdir else self.out
                if directory not in made:
                    directory.mkdir(parents=True, exist_ok=True)
                    made.add(directory)
                temp = directory / f".tmp-{filename}"
                with open(temp, "wb") as handle:
                    handle.write(data)
                os.replace(temp, directory / filename)
                self.written += 1
                if self.first_written is None:
                    self.first_written = time.monotonic()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.consumer.close()


def time_raw_writer(bootstrap: str, topic: str, group_id: str, files: list[SourceFile], work: Path,
                    timeout: float, then) -> Timing:
    out = work / "out-raw"
    verifier = Verifier(out, files, RECHECK_EVERY)
    writer = RawWriter(bootstrap, topic, group_id, out)
    cpu0 = time.process_time()
    try:
        while writer.written < len(files):
            if time.monotonic() - writer.started > timeout:
                raise RuntimeError(f"raw writer: {writer.written}/{len(files)} files after {timeout:.0f} s")
            time.sleep(POLL_S / 4)
        elapsed = time.monotonic() - writer.started
        cpu = time.process_time() - cpu0
        if not verifier.check():
            raise RuntimeError(f"raw writer: {len(files) - len(verifier.complete_at)} files wrong on disk; "
                               f"{writer.errors[:3]}")
        then(out)
    finally:
        verifier.close()
        writer.stop()
    return Timing("raw writer (in-process: decode, sha512, write, rename)", elapsed, sum(f.size for f in files),
                  f"CPU s: {cpu:.1f} (this whole process)",
                  first_s=None if writer.first_written is None else writer.first_written - writer.started)


# -- latency --------------------------------------------------------------------------------------------
class LatencyProbe:
    """Produces single files one at a time and times each from its acknowledgement to complete on disk."""

    def __init__(self, bootstrap: str, files: list[SourceFile], timeout: float = 30.0) -> None:
        from confluent_kafka import Producer

        self.files = files
        self.timeout = timeout
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "acks": "all"})

    def run(self, topic: str, out: Path) -> list[float]:
        latencies = []
        rng = random.Random(7)
        for source in self.files:
            time.sleep(rng.uniform(*IDLE_BEFORE_S))
            ((key, value),) = list(chunk_stream(source))
            acked: list[float] = []
            self.producer.produce(topic, key=key, value=value,
                                  on_delivery=lambda err, _m: acked.append(time.monotonic()) if err is None else None)
            self.producer.flush(10)
            if not acked:
                raise RuntimeError(f"latency file {source.relative_path} not acknowledged")
            latencies.append(self._wait_on_disk(out / source.relative_path, source) - acked[0])
        return latencies

    def _wait_on_disk(self, path: Path, source: SourceFile) -> float:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            now = time.monotonic()
            try:
                if path.stat().st_size == source.size and hashlib.sha512(path.read_bytes()).digest() == source.sha512:
                    return now
            except FileNotFoundError:
                pass
            time.sleep(LATENCY_POLL_S)
        raise RuntimeError(f"latency file {source.relative_path} not on disk after {self.timeout:.0f} s")

    def close(self) -> None:
        """Flush and destroy the producer before the broker stops (else it logs refused connections)."""
        if self.producer is not None:
            self.producer.flush(10)
            self.producer = None


def settle(pause_s: float = SETTLE_S) -> None:
    """Write back what the previous reader left dirty, then pause: its writeback must not fall in the next
    reader's time (the kernel writes dirty pages back about 30 s later, in the middle of a later run)."""
    os.sync()
    time.sleep(pause_s)


def steady_rate(result: "Result") -> float | None:
    """Files per second from the first file complete to the last: the rate once joined and reading."""
    first = result.timing.first_s
    if first is None or result.timing.seconds <= first or result.n_files < 2:
        return None
    return (result.n_files - 1) / (result.timing.seconds - first)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


# -- main -----------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=3000, help="number of small files (default 3000)")
    parser.add_argument("--latency", type=int, default=30, help="single files timed for latency (default 30)")
    parser.add_argument("--quick", action="store_true", help="300 files, 10 latency files")
    parser.add_argument("--seed", type=int, default=1, help="seed for the file sizes")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds of every reader, each on fresh topics (default 1); prints each round "
                             "and the medians")
    add_reader_options(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.files, args.latency = 300, 10
    return args


def run(args: argparse.Namespace) -> list[Result]:
    from omsd.dev.broker import EmbeddedBroker

    work = work_dir(args, "omsd-bench-small-")
    rng = random.Random(args.seed)
    print(f"work dir: {work}")
    print(f"CPUs: {os.cpu_count()}   python: {sys.version.split()[0]}   load average {os.getloadavg()[0]:.1f}")
    print(host_speed())
    print(describe_disk(work))
    files = generate(work / "data", args.files, [rng.randint(MIN_SIZE, MAX_SIZE) for _ in range(args.files)])
    probes = generate(work / "latency", args.latency, [rng.randint(MIN_SIZE, MAX_SIZE) for _ in range(args.latency)],
                      stem="latency")
    total = sum(f.size for f in files)
    print(f"data set: {len(files)} files of {MIN_SIZE >> 10}-{MAX_SIZE >> 10} KiB = {total / 1e6:.0f} MB, one chunk "
          f"each; {len(probes)} latency files")
    readers = [r for r in READERS if r in (args.only or READERS)]
    broker = EmbeddedBroker(data_dir=work / "broker")
    broker.start()
    rounds: list[list[Result]] = []
    try:
        probe = LatencyProbe(broker.bootstrap, probes)
        for round_no in range(1, args.repeat + 1):
            # Rounds take the readers in turn first: on this host a reader's time depends on what ran just
            # before it (bench/README.md, session 9), so a fixed order would weigh on the same one every round.
            shift = (round_no - 1) % len(readers)
            order = readers[shift:] + readers[:shift]
            # A round of its own: fresh topics (the latency files of a round before would otherwise be on
            # disk already), groups, output directories and omsd state (its registry knows earlier files).
            here = work if args.repeat == 1 else work / f"round{round_no}"
            if args.repeat > 1:  # the host's and the disk's speed move within minutes: said again every round
                print(f"\nround {round_no} of {args.repeat} ({', '.join(order)}); {host_speed()}\n"
                      f"{describe_disk(here)}", flush=True)
            (here / "logs").mkdir(parents=True, exist_ok=True)
            topics = {reader: f"bench_small_{reader}" + (f"_r{round_no}" if args.repeat > 1 else "")
                      for reader in order}
            for topic in topics.values():
                t = time.monotonic()
                produce_omsd_format(broker.bootstrap, topic, files)
                print(f"produced into {topic} (no partition set) in {time.monotonic() - t:.1f} s")
            rounds.append(time_readers(args, broker, topics, files, probe, here))
            report(rounds[-1])
        probe.close()
    finally:
        broker.stop()
    if args.repeat > 1:
        summarise(rounds)
    if args.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    return [result for results in rounds for result in results]


def time_readers(args: argparse.Namespace, broker, topics: dict[str, str], files: list[SourceFile],
                 probe: "LatencyProbe", work: Path) -> list[Result]:
    """One round: each reader in turn on its topic (a fresh group, outputs under ``work``), then its
    latency files."""
    results: list[Result] = []
    run_id = os.urandom(3).hex()
    for reader, topic in topics.items():
        group = f"bench-small-{reader}-{run_id}"
        latencies: list[float] = []

        def then(out: Path, topic: str = topic, latencies: list[float] = latencies) -> None:
            latencies.extend(probe.run(topic, out))

        settle()
        print(f"timing {reader} (load average {os.getloadavg()[0]:.1f}) ...", flush=True)
        broker_cpu = process_cpu(broker.process.pid)
        if reader == "raw":
            timing = time_raw_writer(broker.bootstrap, topic, group, files, work, args.timeout, then)
        elif reader == "openmsistream":
            timing = time_openmsistream(broker.bootstrap, topic, group, files, work, args.oms_threads,
                                        args.timeout, then=then, recheck_every=RECHECK_EVERY)
        else:
            profiler = Profiler(work / "profile-omsd.txt") if args.profile else None
            timing = time_omsd(broker.bootstrap, topic, group, files, work, args.workers, args.timeout,
                               on_start=profiler.attach if profiler else None, then=then,
                               recheck_every=RECHECK_EVERY)
            if profiler:
                print(f"  profile: {profiler.finish()}")
        timing.note += f"; broker {process_cpu(broker.process.pid) - broker_cpu:.1f} (with the latency files)"
        result = Result(timing, len(files), latencies)
        print(f"  {timing.seconds:.2f} s  {result.files_per_s:.0f} files/s  {timing.note}", flush=True)
        if latencies:
            print(f"  latency ms: p50 {percentile(latencies, 0.5) * 1e3:.0f}  "
                  f"p95 {percentile(latencies, 0.95) * 1e3:.0f}  max {max(latencies) * 1e3:.0f}", flush=True)
        results.append(result)
    return results


# The targets: (direction, bound) of omsd/OpenMSIStream and omsd/raw files/s, latency p50 and p95 (s).
TARGETS = {"oms": (">=", 2.0), "raw": (">=", 0.75), "p50": ("<=", 0.05), "p95": ("<=", 0.1)}


def _by_reader(results: list[Result]) -> dict[str, Result]:
    return {r.timing.reader.split()[0]: r for r in results}


def target_figures(results: list[Result]) -> dict[str, float]:
    """The figures the targets judge, for the readers that ran: keys of :data:`TARGETS`."""
    by = _by_reader(results)
    omsd = by.get("omsd")
    figures: dict[str, float] = {}
    if omsd is None:
        return figures
    for key, other in (("oms", by.get("OpenMSIStream")), ("raw", by.get("raw"))):
        if other is not None:
            figures[key] = omsd.files_per_s / other.files_per_s
    if omsd.latencies:
        figures["p50"], figures["p95"] = percentile(omsd.latencies, 0.5), percentile(omsd.latencies, 0.95)
    return figures


def _verdict(figures: dict[str, float], key: str) -> str:
    direction, bound = TARGETS[key]
    value = figures[key]
    return "met" if (value >= bound if direction == ">=" else value <= bound) else "MISSED"


def report(results: list[Result]) -> None:
    print()
    print(f"{'reader':56} {'seconds':>8} {'files/s':>8} {'p50 ms':>7} {'p95 ms':>7} {'1st file s':>10} "
          f"{'then files/s':>12}")
    for r in results:
        p50 = f"{percentile(r.latencies, 0.5) * 1e3:7.0f}" if r.latencies else f"{'-':>7}"
        p95 = f"{percentile(r.latencies, 0.95) * 1e3:7.0f}" if r.latencies else f"{'-':>7}"
        first = f"{r.timing.first_s:10.2f}" if r.timing.first_s is not None else f"{'-':>10}"
        steady = steady_rate(r)
        then = f"{steady:12.0f}" if steady is not None else f"{'-':>12}"
        print(f"{r.timing.reader:56} {r.timing.seconds:8.2f} {r.files_per_s:8.0f} {p50} {p95} {first} {then}")
    by = _by_reader(results)
    omsd, oms, raw = by.get("omsd"), by.get("OpenMSIStream"), by.get("raw")
    figures = target_figures(results)
    if "oms" in figures:
        print(f"omsd / OpenMSIStream = {figures['oms']:.2f}x files/s  (target >= 2x: {_verdict(figures, 'oms')})")
    if "raw" in figures:
        print(f"omsd / raw writer    = {figures['raw']:.2f}x files/s  (target >= 0.75x: {_verdict(figures, 'raw')})")
    for other, name in ((oms, "OpenMSIStream"), (raw, "raw writer")):
        if omsd and other and steady_rate(omsd) and steady_rate(other):
            print(f"  (from the first file on: omsd / {name} = {steady_rate(omsd) / steady_rate(other):.2f}x; "
                  "not the target, which counts start-up and the group join)")
    if "p50" in figures:
        print(f"omsd latency p50 {figures['p50'] * 1e3:.0f} ms (target <= 50: {_verdict(figures, 'p50')}), "
              f"p95 {figures['p95'] * 1e3:.0f} ms (target <= 100: {_verdict(figures, 'p95')})")
    if oms and oms.latencies:
        print(f"OpenMSIStream latency p50 {percentile(oms.latencies, 0.5) * 1e3:.0f} ms, "
              f"p95 {percentile(oms.latencies, 0.95) * 1e3:.0f} ms")


def summarise(rounds: list[list[Result]]) -> None:
    """The medians over the rounds of the target figures (each round's own table was printed already)."""
    per_round = [target_figures(results) for results in rounds]
    medians = {key: statistics.median(f[key] for f in per_round if key in f)
               for key in TARGETS if any(key in f for f in per_round)}
    print(f"\nmedians of {len(rounds)} rounds:")
    for key, label in (("oms", "omsd / OpenMSIStream"), ("raw", "omsd / raw writer")):
        if key in medians:
            runs = ", ".join(f"{f[key]:.2f}" for f in per_round if key in f)
            print(f"  {label:22} = {medians[key]:.2f}x files/s  (rounds: {runs}; target >= {TARGETS[key][1]}x: "
                  f"{_verdict(medians, key)})")
    if "p50" in medians:
        met = _verdict(medians, "p50") == _verdict(medians, "p95") == "met"
        print(f"  omsd latency p50 {medians['p50'] * 1e3:.0f} ms, p95 {medians['p95'] * 1e3:.0f} ms "
              f"(targets <= 50 / <= 100 ms: {'met' if met else 'MISSED'})")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    compile_sources()
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
