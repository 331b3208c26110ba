"""`omsd registry check|recover`: inspect a registry, or save what can be saved from a damaged one.

``recover`` runs with the state directory locked (no daemon may be running).
It copies every row SQLite can still read into a new registry — with the
``sqlite3`` program's ``.recover`` when it is installed (it reads past damaged
pages), else row by row from Python — checks the copy, then moves the damaged
file (and its ``-wal``/``-shm``) aside as ``registry.sqlite.damaged-<time>``
and puts the copy in its place. Files whose rows were lost are processed again
when they are read again (above the committed offsets).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from omsd import exitcodes
from omsd.registry_file import (
    SCHEMA, SQLITE_HEADER, RegistryDamaged, RegistryFull, create_registry, inspect_registry, registry_path,
)

if TYPE_CHECKING:
    from omsd.config import Config

TABLES = ("files", "pipeline_outcomes", "steps")
CLI_TIMEOUT_S = 600
MAX_SKIPS = 64  # damaged stretches jumped over per table by the row-by-row copy


def count_rows(path: Path) -> dict[str, int | None]:
    """Rows per table (None where the table cannot be counted)."""
    out: dict[str, int | None] = {}
    db = sqlite3.connect(str(path))
    try:
        for table in TABLES:
            try:
                out[table] = db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            except sqlite3.Error:
                out[table] = None
    finally:
        db.close()
    return out


def _recover_with_cli(damaged: Path, target: Path, sqlite_cli: str) -> None:
    """SQLite's own recovery: ``sqlite3 damaged .recover | sqlite3 target``."""
    dump = subprocess.run([sqlite_cli, str(damaged), ".recover"], capture_output=True, timeout=CLI_TIMEOUT_S)
    if dump.returncode != 0 or b"COMMIT;" not in dump.stdout[-200:]:
        # e.g. a build without the sqlite_dbpage table that .recover reads (Debian 12's 3.40)
        raise RuntimeError(f"sqlite3 .recover failed: {dump.stderr.decode(errors='replace').strip()}")
    load = subprocess.run([sqlite_cli, str(target)], input=dump.stdout, capture_output=True, timeout=CLI_TIMEOUT_S)
    if load.returncode != 0:
        raise RuntimeError(f"loading the recovered rows failed: {load.stderr.decode(errors='replace').strip()}")


def _copy_rows(damaged: Path, target: Path) -> None:
    """Without the sqlite3 program: copy each table's readable rows, jumping over damaged stretches."""
    src = sqlite3.connect(f"file:{damaged}?mode=ro", uri=True)
    dst = sqlite3.connect(str(target), isolation_level=None)
    try:
        dst.executescript(SCHEMA)
        for table in TABLES:
            columns = ", ".join(row[1] for row in dst.execute(f"PRAGMA table_info({table})"))
            insert = f"INSERT OR IGNORE INTO {table} ({columns}) VALUES ({','.join('?' * (columns.count(',') + 1))})"
            last, skips, jump = 0, 0, 1
            while skips <= MAX_SKIPS:
                try:
                    rows = src.execute(f"SELECT rowid, {columns} FROM {table} WHERE rowid > ? ORDER BY rowid",
                                       (last,))
                    dst.execute("BEGIN")
                    for row in rows:
                        dst.execute(insert, row[1:])
                        last, jump = row[0], 1
                    dst.execute("COMMIT")
                    break
                except sqlite3.DatabaseError:
                    if dst.in_transaction:
                        dst.execute("COMMIT")  # keep what was read before the damaged page
                    last += jump
                    jump *= 2
                    skips += 1
    finally:
        src.close()
        dst.close()


def recover(path: Path, sqlite_cli: str | None = None) -> tuple[Path, dict[str, int | None], str]:
    """Replace the damaged registry at ``path`` by a copy of its readable rows.

    Returns where the damaged file was moved, the rows per table of the new registry, and how they were saved.
    """
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.name}.recovered-{stamp}")
    target.unlink(missing_ok=True)
    with open(path, "rb") as handle:
        readable = handle.read(len(SQLITE_HEADER)) == SQLITE_HEADER
    how = "nothing readable (no SQLite header): empty registry"
    if readable and sqlite_cli:
        try:
            _recover_with_cli(path, target, sqlite_cli)
            how = "sqlite3 .recover"
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            print(f"omsd: {exc}; copying row by row instead", file=sys.stderr)
            target.unlink(missing_ok=True)
    if readable and how != "sqlite3 .recover":
        _copy_rows(path, target)
        how = "row-by-row copy"
    db = sqlite3.connect(str(target), isolation_level=None)
    try:
        db.executescript(SCHEMA)
        db.execute("PRAGMA journal_mode=WAL")
    finally:
        db.close()
    problem = inspect_registry(target)
    if problem is not None:
        target.unlink(missing_ok=True)
        create_registry(target)  # nothing usable could be copied: start empty rather than damaged
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        old = Path(f"{path}{suffix}")
        if old.exists():
            os.replace(old, Path(f"{aside}{suffix}"))
    os.replace(target, path)
    return aside, count_rows(path), how


def registry_command(args: argparse.Namespace) -> int:
    """`omsd registry check|recover --config FILE`."""
    from omsd.config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"omsd: configuration error: {exc}", file=sys.stderr)
        return exitcodes.RET_CONFIG
    path = registry_path(config.state_dir)
    try:
        return _registry_action(args, config, path)
    except RegistryFull as exc:
        print(f"omsd: {exc}; free space in {config.state_dir} first", file=sys.stderr)
        return exitcodes.RET_ERROR


def _registry_action(args: argparse.Namespace, config: Config, path: Path) -> int:
    from omsd.daemon import StateDirLocked, lock_state_dir

    if args.action == "check":
        if not path.exists():
            print(f"{path}: no registry yet (the daemon creates an empty one)")
            return exitcodes.RET_OK
        problem = inspect_registry(path)
        if problem is not None:
            advice = RegistryDamaged(path, problem).advice.replace("--config FILE", f"--config {args.config}")
            print(f"{path}: damaged: {problem}\n{advice} (recover with the daemon stopped)", file=sys.stderr)
            return exitcodes.RET_REGISTRY_DAMAGED
        rows = count_rows(path)
        print(f"{path}: ok ({rows['files']} files, {rows['pipeline_outcomes']} pipeline outcomes)")
        return exitcodes.RET_OK
    try:
        lock_fd = lock_state_dir(config.state_dir)
    except StateDirLocked as exc:
        print(f"omsd: {exc}; stop it before recovering its registry", file=sys.stderr)
        return exitcodes.RET_LOCKED
    try:
        if not path.exists():
            print(f"{path}: no registry; nothing to recover")
            return exitcodes.RET_OK
        problem = inspect_registry(path)
        if problem is None and not args.force:
            print(f"{path}: ok; nothing to recover (--force copies it anyway)")
            return exitcodes.RET_OK
        before = count_rows(path) if problem is None else None
        cli = None if args.no_sqlite3 else shutil.which("sqlite3")
        aside, rows, how = recover(path, cli)
        print(f"{path}: recovered with {how}: {rows['files']} files, {rows['pipeline_outcomes']} pipeline "
              f"outcomes, {rows['steps']} step records"
              + (f" (was {before['files']} files)" if before else "")
              + f"; the damaged file is kept as {aside}")
        return exitcodes.RET_OK
    finally:
        os.close(lock_fd)


def add_registry_parser(sub: argparse._SubParsersAction) -> None:
    """The `omsd registry` subcommand."""
    reg = sub.add_parser("registry", help="check a registry, or recover a damaged one (daemon stopped)",
                         description="check: is the registry sound (exit 0) or damaged (exit 65)? "
                                     "recover: copy what SQLite can still read into a new registry and "
                                     "keep the damaged file aside (needs the daemon stopped).")
    reg.add_argument("action", choices=("check", "recover"))
    reg.add_argument("--config", required=True, type=Path, help="the daemon's config file (its state_dir)")
    reg.add_argument("--force", action="store_true", help="recover: copy a registry even when it checks sound")
    reg.add_argument("--no-sqlite3", action="store_true",
                     help="recover: do not use the sqlite3 program's .recover (copy row by row)")
    reg.set_defaults(func=registry_command)
