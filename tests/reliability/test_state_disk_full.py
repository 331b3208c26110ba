"""A full state directory is a state, not a crash: intake pauses, the daemon reports it, writes wait.

The state directory (registry, lock, socket, spill) is a small tmpfs mounted
by the test (root only; skipped otherwise), filled to the last byte while the
daemon runs, then enlarged with ``mount -o remount,size=...``.
"""

from __future__ import annotations

import random
import sqlite3
import subprocess
import sys
import time

from omsd.control.client import ControlClient
from tests.chunks import produce_files, tree, wait_for
from tests.conftest import pipeline, write_config
from tests.reliability.faults_funcs import recorded
from tests.reliability.test_faults import RECORD_STEP, check, daemon, failed_paths, fill, remount, tmpfs


def test_full_state_directory_pauses_intake_and_loses_nothing(broker, topic, tmp_path) -> None:
    state, out, record = tmp_path / "state", tmp_path / "out", tmp_path / "record.tsv"
    with tmpfs(state, "4m"):
        cfg = write_config(tmp_path / "omsd.yaml", broker.bootstrap, pipeline(
            "mirror", topic, f"save: {{dir: {out}}}", f"call: {{function: {RECORD_STEP}}}"),
            workers=2, extra="state_reserve_bytes: 256KiB\n")
        rng = random.Random(21)
        first = {f"a/f{i}.bin": rng.randbytes(20_000) for i in range(5)}
        later = {f"b/g{i:02d}.bin": rng.randbytes(20_000) for i in range(30)}
        log = tmp_path / "daemon.log"
        with daemon(cfg, log, {"OMSD_FAULTS_RECORD": str(record)}) as proc:
            produce_files(broker.bootstrap, topic, first)
            wait_for(lambda: out.exists() and tree(out) == first, 60, "the first files", proc, log)
            fill(state)  # not a byte left for the registry
            produce_files(broker.bootstrap, topic, later)

            def degraded() -> bool:
                code, report = check(cfg)
                return code == 1 and any(f"no space left in {state}" in r and "free" in r
                                         for r in report.get("reasons", []))
            wait_for(degraded, 60, "check to report the full state directory", proc, log)
            status = ControlClient(state / "omsd.sock").request("status")
            assert status["disk_full"]["directory"] == str(state), status["disk_full"]
            assert status["disk_full"]["waiting_writes"] > 0
            reasons = {r for row in status["partitions"] for r in row["pause_reasons"]}
            assert "state_dir_full" in reasons, status["partitions"]
            assert proc.poll() is None  # still up, still polling

            remount(state, "size=64m")  # space returns
            everything = {**first, **later}
            wait_for(lambda: tree(out) == everything, 60, "every file once space returned", proc, log)
            wait_for(lambda: check(cfg)[0] == 0, 20, "healthy again", proc, log)
            assert not failed_paths(cfg)
            wait_for(lambda: len(recorded(record)) >= len(everything), 20, "every file's last step", proc, log)
        # Each file ran once, and each outcome is in the registry (none was dropped while the disk was full).
        assert sorted(path for path, _ in recorded(record)) == sorted(everything)
        db = sqlite3.connect(state / "registry.sqlite")
        rows = dict(db.execute("SELECT rel_path, status FROM files"))
        db.close()
        assert rows == {path: "done" for path in everything}


def test_spilled_bytes_leave_the_registry_its_reserve(broker, topic, tmp_path) -> None:
    """Every file spills to the state directory (1 KiB of memory staging); a file larger than the whole
    file system stops spilling at the reserve, so the outcomes of the files before it are still recorded."""
    state, out, record = tmp_path / "state", tmp_path / "out", tmp_path / "record.tsv"
    with tmpfs(state, "4m"):
        cfg = write_config(tmp_path / "omsd.yaml", broker.bootstrap, pipeline(
            "mirror", topic, f"save: {{dir: {out}}}", "call: {function: tests.integration.funcs:slow}",
            f"call: {{function: {RECORD_STEP}}}"),
            workers=2, extra="state_reserve_bytes: 1MiB\nstaging: {memory_bytes: 1KiB}\n")
        rng = random.Random(22)
        small = {f"small/s{i}.bin": rng.randbytes(100_000) for i in range(4)}
        big = {"zz/big.bin": rng.randbytes(6_000_000)}  # more than the whole file system
        log = tmp_path / "daemon.log"
        env = {"OMSD_FAULTS_RECORD": str(record), "OMSD_TEST_SLOW": "1.5"}
        with daemon(cfg, log, env) as proc:
            produce_files(broker.bootstrap, topic, {**small, **big}, partitions=1)  # the small ones first

            reasons: list[str] = []

            def spilling_stopped() -> bool:
                code, report = check(cfg)
                reasons[:] = report.get("reasons", [])
                return code == 1 and any("staging disk full" in r for r in reasons)
            wait_for(spilling_stopped, 60, "check to report spilling stopped", proc, log)
            # The small files finish while the big one waits: their outcomes find room in the registry.
            client = ControlClient(state / "omsd.sock")
            deadline = time.monotonic() + 60
            while len(recorded(record)) < len(small) or client.request("status")["totals"]["files_completed"] < 4:
                assert client.request("status")["disk_full"] is None, "registry writes waited for space"
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.2)
            assert tree(out) == small
            assert any("kept for the registry" in r for r in reasons), reasons
            remount(state, "size=64m")
            wait_for(lambda: tree(out) == {**small, **big}, 60, "the big file once space returned", proc, log)
            wait_for(lambda: check(cfg)[0] == 0, 20, "healthy again", proc, log)


def test_a_restart_on_a_full_state_directory_comes_up_and_waits(broker, topic, tmp_path) -> None:
    """The crash loop of the issue: stopped and started again while the disk is still full, the daemon
    comes up degraded instead of exiting, and saves everything once space returns."""
    state, out = tmp_path / "state", tmp_path / "out"
    with tmpfs(state, "4m"):
        cfg = write_config(tmp_path / "omsd.yaml", broker.bootstrap, pipeline("mirror", topic, f"save: {{dir: {out}}}"),
                           workers=1, extra="state_reserve_bytes: 256KiB\nshutdown_timeout_secs: 2\n")
        rng = random.Random(23)
        first = {f"a/f{i}.bin": rng.randbytes(20_000) for i in range(3)}
        later = {f"b/g{i:02d}.bin": rng.randbytes(20_000) for i in range(10)}

        def degraded() -> bool:
            code, report = check(cfg)
            return code == 1 and any(f"no space left in {state}" in r for r in report.get("reasons", []))

        with daemon(cfg, tmp_path / "daemon1.log") as proc:
            produce_files(broker.bootstrap, topic, first)
            wait_for(lambda: out.exists() and tree(out) == first, 60, "the first files", proc, tmp_path / "daemon1.log")
            fill(state)
            produce_files(broker.bootstrap, topic, later)
            wait_for(degraded, 60, "the full state directory", proc, tmp_path / "daemon1.log")
        # A graceful stop while writes wait (exit 0: the daemon() block checks it). Closing the registry
        # frees its WAL; take that space too, so the restart meets a disk as full as the one it left.
        fill(state)
        log = tmp_path / "daemon2.log"
        with daemon(cfg, log) as proc:
            wait_for(degraded, 60, "the restarted daemon to wait for space", proc, log)
            time.sleep(2)
            assert proc.poll() is None, log.read_text()[-3000:]
            socket_while_waiting = (state / "omsd.sock").stat().st_ino
            remount(state, "size=64m")
            wait_for(lambda: tree(out) == {**first, **later}, 60, "every file once space returned", proc, log)
            wait_for(lambda: check(cfg)[0] == 0, 20, "healthy again", proc, log)
            # The socket that answered during the wait is the one the supervisor answers on: never a gap.
            assert (state / "omsd.sock").stat().st_ino == socket_while_waiting
        db = sqlite3.connect(state / "registry.sqlite")
        rows = dict(db.execute("SELECT rel_path, status FROM files"))
        db.close()
        assert rows == {path: "done" for path in {**first, **later}}


def test_a_first_start_on_a_full_state_directory_waits_and_stops_on_request(broker, topic, tmp_path) -> None:
    """No registry yet and no room to create one: the daemon waits (degraded, answering the control
    socket) instead of exiting 1 in a restart loop, and `omsctl stop` ends the wait with exit 0."""
    state = tmp_path / "state"
    with tmpfs(state, "1m"):
        cfg = write_config(tmp_path / "omsd.yaml", broker.bootstrap,
                           pipeline("mirror", topic, f"save: {{dir: {tmp_path / 'out'}}}"), workers=1)
        fill(state)
        log = tmp_path / "daemon.log"
        with daemon(cfg, log) as proc:
            code, report = check(cfg)
            assert code == 1, report
            assert any(f"no space left in {state}" in r and "registry cannot open" in r
                       for r in report["reasons"]), report
            status = ControlClient(state / "omsd.sock").request("status")
            assert status["disk_full"]["directory"] == str(state) and status["state"] == "STARTING", status
            shown = subprocess.run([sys.executable, "-m", "omsd.ctl", "--config", str(cfg), "status"],
                                   capture_output=True, text=True, timeout=30)
            assert f"State directory full: {state} (0 B free)" in shown.stdout, shown.stdout + shown.stderr
            stopped = subprocess.run([sys.executable, "-m", "omsd.ctl", "--config", str(cfg), "stop"],
                                     capture_output=True, text=True, timeout=30)
            assert stopped.returncode == 0, stopped.stdout + stopped.stderr
            assert proc.wait(10) == 0, log.read_text()[-3000:]
        assert not (state / "registry.sqlite").exists()  # never half-made
