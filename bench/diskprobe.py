"""What the benches' work directory's file system costs, printed beside the host-speed line.

On this project's benchmark machine the cost of creating a small file moved from about 60 to about
700 µs of CPU from one run to the next (bench/README.md, "The disk of this machine"): ext4 without a
journal steps over every recently deleted inode when it allocates one. That cost falls on every reader,
but weighs most on the fastest, so the ratios move with it. :func:`describe_disk` names the file
system (and, for ext4, whether it has a journal) and times the creation of a few small files there,
so that each printed figure says which kind of disk it was measured on.

The probe's files are kept (in the work directory, removed with it at the end of the run): deleting
them would make the next reader's file creations slower on exactly the disks the probe is meant to show.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

PROBE_FILES = 200
PROBE_BYTES = 32 << 10


def file_system(path: Path) -> str:
    """The file system holding ``path``: its type and device, and for ext4 whether it has a journal."""
    target = os.path.realpath(path)
    best = ("", "?", "?")
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            device, mount_point, fs_type, *_ = line.split()
            mount_point = mount_point.replace("\\040", " ")
            inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
            if inside and len(mount_point) >= len(best[0]):
                best = (mount_point, fs_type, device)
    _mount_point, fs_type, device = best
    if fs_type == "ext4":
        journal = Path("/sys/fs/ext4") / os.path.basename(device) / "journal_task"
        try:
            fs_type += " (no journal)" if journal.read_text().strip() == "<none>" else " (journaled)"
        except OSError:
            pass
    return f"{fs_type} on {device}"


def creation_cost_us(directory: Path, n: int = PROBE_FILES, size: int = PROBE_BYTES) -> float:
    """CPU µs this process spends creating one ``size``-byte file in ``directory`` (temporary name,
    write, rename: what every reader does per small file), over ``n`` new files in a new subdirectory."""
    directory.mkdir(parents=True, exist_ok=True)
    probe_dir = tempfile.mkdtemp(prefix="disk-probe-", dir=directory)
    data = os.urandom(size)
    started = time.process_time()
    for i in range(n):
        temp = os.path.join(probe_dir, f".f{i}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.rename(temp, os.path.join(probe_dir, f"f{i}"))
    return (time.process_time() - started) / n * 1e6


def describe_disk(directory: Path) -> str:
    """One line: the work directory's file system and what a small file's creation costs there now."""
    return (f"work dir disk: {file_system(directory)}; creating a {PROBE_BYTES >> 10} KiB file costs "
            f"{creation_cost_us(directory):.0f} µs of CPU now")
