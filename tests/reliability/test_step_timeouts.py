"""A hung step is killed by the watchdog, counted as a failure of that step, and holds nothing else up.

One file's `call` step never returns; its limit is `timeout_secs: 2`. The
daemon runs for real with 2 workers and 30 other files.
"""

from __future__ import annotations

import json
import random
import time

from omsd.control.client import ControlClient
from tests.chunks import produce_files, tree, wait_for
from tests.conftest import pipeline, write_config
from tests.reliability.faults_funcs import calls
from tests.reliability.test_faults import check, daemon, failed_paths, log_events, omsctl

HANG_STEP = "tests.reliability.faults_funcs:hang_on_stuck"
STUCK = "runs/stuck.dat"


def test_a_hung_step_is_killed_failed_and_not_run_again_before_its_retry(broker, topic, tmp_path) -> None:
    out, record = tmp_path / "out", tmp_path / "calls.tsv"
    cfg = write_config(tmp_path / "omsd.yaml", broker.bootstrap, pipeline(
        "mirror", topic, f"call: {{function: {HANG_STEP}, timeout_secs: 2}}", f"save: {{dir: {out}}}", retries=1),
        workers=2)
    rng = random.Random(31)
    normal = {f"runs/f{i:02d}.dat": rng.randbytes(10_000) for i in range(30)}
    log = tmp_path / "daemon.log"
    env = {"OMSD_FAULTS_CALLS": str(record)}
    with daemon(cfg, log, env) as proc:
        produce_files(broker.bootstrap, topic, {STUCK: b"never finishes", **normal})
        client = ControlClient(tmp_path / "state" / "omsd.sock")
        seen_running, seen_degraded = None, None
        deadline = time.monotonic() + 60
        while STUCK not in failed_paths(cfg):  # meanwhile: status names the hung step, check is degraded
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()[-3000:]
            for worker in client.request("status")["workers"]:
                if worker.get("current_file") == STUCK and (worker.get("step_running_s") or 0) > 1:
                    seen_running = worker
            code, report = check(cfg)
            if code == 1 and any(STUCK in r and "limit" in r for r in report["reasons"]):
                seen_degraded = report
            time.sleep(0.2)
        assert seen_running is not None and seen_running["step"] == "mirror/call#0", seen_running
        assert seen_running["step_limit_s"] == 2
        assert seen_degraded is not None
        text = omsctl(cfg, "status").stdout
        assert "STEP" in text and "RUNNING" in text  # the table shows them too

        wait_for(lambda: out.exists() and tree(out) == normal, 60, "the 30 other files saved", proc, log)
        row = failed_paths(cfg)[STUCK]
        assert "timed out" in row["error"] and row["step"] == "call#0" and row["kept"], row
        assert set(failed_paths(cfg)) == {STUCK}
        assert calls(record).count(STUCK) == 2  # retries: 1, so two attempts, each killed after 2 s
        events = log_events(log)
        assert any(e.get("event") == "step has run past half its time limit" and e.get("file") == STUCK
                   for e in events)
        assert sum(e.get("event") == "step ran past its time limit; killing its worker" for e in events) == 2
        wait_for(lambda: check(cfg)[0] == 0, 30, "healthy again after the kills", proc, log)

    # A restart does not run the hung file again: it waits for retry_failed_after_secs (600 s).
    before = len(calls(record))
    with daemon(cfg, tmp_path / "daemon2.log", env) as proc:
        wait_for(lambda: check(cfg)[0] == 0, 60, "the restarted daemon healthy", proc, tmp_path / "daemon2.log")
        time.sleep(3)
        assert calls(record)[before:].count(STUCK) == 0
        assert STUCK in failed_paths(cfg)
        assert json.loads(omsctl(cfg, "check").stdout)["status"] == "healthy"
