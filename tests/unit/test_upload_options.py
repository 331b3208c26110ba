"""`omsd upload`'s DataFileUploadDirectory options: defaults taken from OpenMSIStream, checks, names."""

from __future__ import annotations

import argparse
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from omsd.config import load_config
from omsd.upload.command import add_upload_arguments
from omsd.upload.files import OPENMSISTREAM_UPLOAD_REGEX, FileEntry, display_path
from omsd.telemetry.options import resolve
from omsd.upload.watcher import UploadState

ROOT = Path(__file__).resolve().parents[2]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_upload_arguments(parser)
    return parser.parse_args(["d", "--config", "c.yaml", "--topic", "t", *argv])


def test_default_upload_regex_is_openmsistreams_own() -> None:
    from openmsistream.utilities.config import RUN_CONST

    assert OPENMSISTREAM_UPLOAD_REGEX == RUN_CONST.DEFAULT_UPLOAD_REGEX.pattern
    ours = re.compile(OPENMSISTREAM_UPLOAD_REGEX)
    names = ["a.dat", ".hidden", "x.log", "sub/x.log", "catalog.csv", "logs/a.dat", "x.LOG", "a\nb.dat", "a\tb"]
    assert [bool(ours.match(n)) for n in names] == [bool(RUN_CONST.DEFAULT_UPLOAD_REGEX.match(n)) for n in names]
    assert [n for n in names if ours.match(n)] == ["a.dat", "logs/a.dat", "x.LOG", "a\tb"]


def test_openmsistream_spellings_are_aliases() -> None:
    args = parse("--watchdog_lag_time", "7", "--upload_existing", "--use_polling_observer", "--chunk_size", "1024",
                 "--upload_regex", r".*\.dat$", "--n_threads", "3", "--queue_max_size", "8",
                 "--heartbeat_topic_name", "hb", "--heartbeat_program_id", "up", "--heartbeat_interval_secs", "2",
                 "--log_topic_name", "lg", "--log_program_id", "uplog", "--log_interval_secs", "5")
    assert (args.stable_secs, args.upload_existing, args.use_polling_observer, args.chunk_size) == (7, True, True, 1024)
    assert args.upload_regex.pattern == r".*\.dat$" and (args.readers, args.queue_mb) == (3, 8)
    assert parse("--watchdog-lag-time", "1.5").stable_secs == 1.5
    assert parse().upload_existing is False  # OpenMSIStream's default
    assert parse("--skip-existing").upload_existing is False


@pytest.mark.parametrize("argv, message", [
    (["--chunk-size", "1000"], "1000 is not a power of two"),
    (["--chunk-size", "0"], "0 is not a power of two"),
    (["--upload-regex", "("], "not a regular expression"),
    (["--upload-existing", "--skip-existing"], "not allowed with argument"),
    (["--heartbeat_interval_secs", "0"], "must be a number of seconds > 0"),
])
def test_bad_options_are_usage_errors(tmp_path: Path, argv: list[str], message: str) -> None:
    (tmp_path / "f").write_bytes(b"x")
    proc = subprocess.run([sys.executable, "-m", "omsd.cli", "upload", str(tmp_path / "f"), "--config",
                           str(tmp_path / "none.yaml"), "--topic", "t", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert message in proc.stderr


def test_telemetry_settings_command_line_over_config(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("heartbeat: {topic: hb_cfg, interval_secs: 9, program_id: lab}\n"
                   "log: {topic: log_cfg, level: info}\n")
    config = load_config(cfg)
    heartbeat, log = resolve(config, parse())
    assert (heartbeat.topic, heartbeat.interval_secs, heartbeat.program_id) == ("hb_cfg", 9, "lab")
    assert (log.topic, log.program_id, log.level) == ("log_cfg", "lab", "info")
    heartbeat, log = resolve(config, parse("--heartbeat_program_id", "up1", "--log_topic_name", "lg",
                                           "--log_interval_secs", "2"))
    assert (heartbeat.topic, heartbeat.program_id) == ("hb_cfg", "up1")
    assert (log.topic, log.interval_secs, log.level) == ("lg", 2, "info")
    cfg.write_text("broker: {bootstrap.servers: x}\n")
    assert resolve(load_config(cfg), parse()) == (None, None)
    heartbeat, log = resolve(load_config(cfg), parse("--heartbeat_topic_name", "hb"))
    assert (heartbeat.topic, heartbeat.interval_secs, heartbeat.program_id, log) == ("hb", 30.0, "omsd", None)


def test_names_that_cannot_travel_say_why() -> None:
    assert FileEntry(Path("x"), "sub dir", 'tab\there "quoted"\n.dat').cannot_travel() is None
    assert "not valid UTF-8" in FileEntry(Path("x"), "", "caf\udce9.dat").cannot_travel()
    assert "not valid UTF-8" in FileEntry(Path("x"), "d\udcff", "a.dat").cannot_travel()
    assert "backslash" in FileEntry(Path("x"), "", "back\\slash").cannot_travel()
    assert display_path("caf\udce9.dat") == "'caf\\xe9.dat'"
    assert display_path("new\nline") == "'new\\nline'" and display_path("plain ü.txt") == "plain ü.txt"


def test_state_file_knows_its_first_start_even_when_nothing_was_recorded(tmp_path: Path) -> None:
    state = UploadState(tmp_path / "s.sqlite")
    assert not state.started_before
    state.mark_started()
    state.close()
    assert UploadState(tmp_path / "s.sqlite").started_before
    # A state file written before the first-start marker existed counts as started once it holds a file.
    legacy = tmp_path / "legacy.sqlite"
    db = sqlite3.connect(legacy)
    db.execute("CREATE TABLE uploaded (relative_path TEXT PRIMARY KEY, size INTEGER NOT NULL, "
               "mtime_ns INTEGER NOT NULL, sha512 BLOB NOT NULL, uploaded_at REAL NOT NULL)")
    db.execute("INSERT INTO uploaded VALUES ('a', 1, 1, x'00', 0)")
    db.commit()
    db.close()
    assert UploadState(legacy).started_before


def test_one_shot_upload_regex_filters_directories_not_named_files(tmp_path: Path) -> None:
    from omsd.upload.files import collect_files

    for rel in ("keep.dat", "sub/keep.dat", "sub/drop.txt", "run.log"):
        (tmp_path / "d" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "d" / rel).write_bytes(b"x")
    (tmp_path / "named.txt").write_bytes(b"x")
    every = collect_files([tmp_path / "d"])
    assert sorted(e.relative_path for e in every) == ["keep.dat", "run.log", "sub/drop.txt", "sub/keep.dat"]
    kept = collect_files([tmp_path / "d", tmp_path / "named.txt"], re.compile(r".*\.dat$"))
    assert [e.relative_path for e in kept] == ["keep.dat", "sub/keep.dat", "named.txt"]
