"""Two daemons in one consumer group split the work file by file."""

from __future__ import annotations

import random

from omsd.control.client import ControlClient, DaemonNotRunning
from tests.chunks import produce_files, start_daemon, stop_daemon, tree, wait_for
from tests.conftest import pipeline, write_config


def _config(base, bootstrap, topic):
    out = base / "out"
    cfg = write_config(base / "omsd.yaml", bootstrap,
                       pipeline("mirror", topic, f"save: {{dir: {out}}}", **{"group.id": f"shared-{topic}"}),
                       state_dir=base / "state", workers=1)
    return cfg, out


def _assigned(sock) -> int:
    try:
        return sum(1 for p in ControlClient(sock).request("status")["partitions"] if p["assigned"])
    except DaemonNotRunning:
        return 0


def test_two_daemons_share_one_group(broker, topic, tmp_path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    cfg_a, out_a = _config(a, broker.bootstrap, topic)
    cfg_b, out_b = _config(b, broker.bootstrap, topic)
    # The topic exists with its 4 partitions before the daemons subscribe.
    produce_files(broker.bootstrap, topic, {"warmup/first.txt": b"first"})
    proc_a = start_daemon(["run", "--config", str(cfg_a)], a / "daemon.log")
    proc_b = start_daemon(["run", "--config", str(cfg_b)], b / "daemon.log")
    try:
        wait_for(lambda: _assigned(a / "state" / "omsd.sock") + _assigned(b / "state" / "omsd.sock") == 4
                 and _assigned(a / "state" / "omsd.sock") > 0 and _assigned(b / "state" / "omsd.sock") > 0,
                 60, "both daemons assigned partitions", proc_a, a / "daemon.log")
        rng = random.Random(3)
        files = {f"run{i}/data_{i}.bin": rng.randbytes(rng.randint(100, 100_000)) for i in range(16)}
        produce_files(broker.bootstrap, topic, files)
        expected = {**files, "warmup/first.txt": b"first"}

        def union() -> dict:
            return {**(tree(out_a) if out_a.exists() else {}), **(tree(out_b) if out_b.exists() else {})}

        wait_for(lambda: union() == expected, 60, "every file saved by one of the daemons", proc_a, a / "daemon.log")
        saved_a, saved_b = tree(out_a) if out_a.exists() else {}, tree(out_b) if out_b.exists() else {}
        assert saved_a and saved_b, "both daemons did work"
        assert not set(saved_a) & set(saved_b), "no file was saved twice"
    finally:
        assert stop_daemon(proc_a) == 0
        assert stop_daemon(proc_b) == 0
